"""Disk files: untrusted inputs pinned (untrusted), qemu-img (import and inspection), the disk
digest (digest), partial files that outlive no creator (temps) and the writeback drivers."""
