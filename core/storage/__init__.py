"""Disk files: untrusted inputs pinned (untrusted), qemu-img (import and inspection), the disk
digest (digest), partial files that outlive no creator (temps) and the writeback drivers."""

# the data directory's layout: where image versions and writebacks live (kept here, importing nothing)
IMAGES_DIR = "images"
WRITEBACK_DIR = "writebacks"
