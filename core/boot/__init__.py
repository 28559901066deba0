"""Boot files: iPXE scripts and dnsmasq configuration."""
