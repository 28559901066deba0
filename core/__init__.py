"""ggnet core: the only package that knows the domain. It never imports the UI."""
