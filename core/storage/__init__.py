"""Disk files: qemu-img (import and inspection) and writeback drivers."""
