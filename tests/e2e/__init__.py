"""End-to-end helpers and tests: real tgtd, real diskless QEMU/iPXE clients."""
