"""A tiny bootable raw disk that proves block reads and writes over iSCSI.

Sector 0 is a 16-bit boot sector (the machine code of ``/work/shared/lab/boot/bootsect.asm``,
assembled with nasm and embedded here as hex so neither CI nor the tests need an assembler —
credit: the lab's ``make_disk.py``). When a client boots it, it:

1. prints ``GGNET-BOOT-OK`` on COM1 (and the screen);
2. reads LBA 1 through int 13h (which iPXE hooks for a SAN boot) and prints the NUL-terminated
   text stored there: ``GGNET-SECTOR2-<token>``;
3. writes that sector to LBA 2 and prints ``GGNET-WRITE-OK``, so the host can check the write
   landed in the backing file (``written_token``);
4. on an int 13h error prints ``GGNET-INT13-ERR`` instead, then halts.
"""

from __future__ import annotations

import os
from pathlib import Path

SECTOR = 512
BOOT_OK = "GGNET-BOOT-OK"
WRITE_OK = "GGNET-WRITE-OK"
INT13_ERR = "GGNET-INT13-ERR"

_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cfb88169e7cbaf90330c0eebafb03b080eebaf803"
    "b001eebaf90330c0eebafb03b003eebafa03b0c7eebafc03b00beebe807de83e"
    "00b80102b9020030f68a169e7cbb007ecd137221be007ee82500b80103b90300"
    "30f68a169e7cbb007ecd137208beb17ce80c00eb06be9f7ce80400faf4ebfdac"
    "84c0741988c3bafd03eca82074fbbaf80388d8eeb40ebb0700cd10ebe2c30047"
    "474e45542d494e5431332d4552520d0a0047474e45542d57524954452d4f4b0d"
    "0a"
)
_BANNER_OFFSET = 0x180  # the code prints the string at 0x7c00 + 0x180


def sector_marker(token: str) -> str:
    """What the client prints after reading LBA 1 (and what LBA 2 holds after the write)."""
    return f"GGNET-SECTOR2-{token}"


def boot_image(token: str) -> bytes:
    """The first two sectors: the boot sector and the LBA 1 payload naming ``token``."""
    if not token or not token.isascii() or any(c in token for c in "\0\r\n") or len(token) > 400:
        raise ValueError("token must be short printable ASCII without NUL or line breaks")
    mbr = bytearray(SECTOR)
    mbr[: len(_CODE)] = _CODE
    banner = f"{BOOT_OK}\r\n".encode() + b"\0"
    mbr[_BANNER_OFFSET : _BANNER_OFFSET + len(banner)] = banner
    mbr[510:512] = b"\x55\xaa"
    payload = bytearray(SECTOR)
    text = f"{sector_marker(token)}\r\n".encode() + b"\0"
    payload[: len(text)] = text
    return bytes(mbr) + bytes(payload)


def make_boot_disk(path: str | os.PathLike[str], size_mib: int = 8, token: str = "none") -> Path:
    """Write a sparse raw disk of ``size_mib`` MiB at ``path`` and return its path."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(boot_image(token))
        f.truncate(size_mib << 20)
    return path


def written_token(path: str | os.PathLike[str]) -> str | None:
    """The text the client wrote into LBA 2 (``GGNET-SECTOR2-<token>``), or None if nothing was written."""
    with open(path, "rb") as f:
        f.seek(2 * SECTOR)
        data = f.read(SECTOR)
    text = data.split(b"\0", 1)[0].decode("latin1").strip()
    return text or None


# --- a disk that tells whether it was fresh -----------------------------------------------------
# The machine code of /work/shared/lab/boot/prevboot.asm (credit: the lab's make_prevdisk.py). It
# prints GGNET-BOOT-OK, then what an earlier boot left in LBA 2 (GGNET-PREV-EMPTY, or
# GGNET-PREV:<text>), then LBA 1's text, copies LBA 1 to LBA 2 and prints GGNET-WRITE-OK.
_PREV_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cfb8816c67cbaf90330c0eebafb03b080eebaf803b001eebaf90330c0eebafb03b003eebafa03b0c7"
    "eebafc03b00beebe097de86500b90300e850007244803e007e007508beea7ce85000eb0cbefd7ce84800be007ee84200b90200"
    "e82d007221be007ee83400b80103b9030030f68a16c67cbb007ecd137208bed97ce81b00eb06bec77ce81300faf4ebfdb801"
    "0230f68a16c67cbb007ecd13c3ac84c0741a88c3bafd03eca82074fbbaf80388d8eeb40eb70056cd105eebe1c30047474e45"
    "542d494e5431332d4552520d0a0047474e45542d57524954452d4f4b0d0a0047474e45542d505245562d454d5054590d0a00"
    "47474e45542d505245563a0047474e45542d424f4f542d4f4b0d0a00"
)
PREV_EMPTY = "GGNET-PREV-EMPTY"  # this boot found the disk as the image left it
PREV_KEPT = "GGNET-PREV:"  # this boot found what an earlier boot wrote


def make_prev_disk(path: str | os.PathLike[str], size_mib: int = 8, token: str = "none") -> Path:
    """A sparse raw disk whose boot sector says whether an earlier boot wrote to it."""
    if not token or not token.isascii() or any(c in token for c in "\0\r\n") or len(token) > 400:
        raise ValueError("token must be short printable ASCII without NUL or line breaks")
    mbr = bytearray(SECTOR)
    mbr[: len(_PREV_CODE)] = _PREV_CODE
    mbr[510:512] = b"\x55\xaa"
    payload = bytearray(SECTOR)
    text = f"{sector_marker(token)}\r\n".encode() + b"\0"
    payload[: len(text)] = text
    path = Path(path)
    with open(path, "wb") as f:
        f.write(bytes(mbr) + bytes(payload))
        f.truncate(size_mib << 20)
    return path
