"""Input rules shared by every service. Each refusal names the field and the rule."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationError

from .errors import Invalid

# --- MAC -------------------------------------------------------------------

_MAC_PATTERNS = (
    re.compile(r"^([0-9a-f]{2})([:-])([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\2([0-9a-f]{2})\Z"),
    re.compile(r"^([0-9a-f]{4})\.([0-9a-f]{4})\.([0-9a-f]{4})\Z"),  # Cisco dotted
    re.compile(r"^([0-9a-f]{12})\Z"),  # bare
)


def normalize_mac(value: str) -> str:
    """Accept aa:bb:.., aa-bb-.., aabb.ccdd.eeff or aabbccddeeff; return aa:bb:cc:dd:ee:ff."""
    text = str(value).strip().lower()
    hexdigits = None
    for pattern in _MAC_PATTERNS:
        match = pattern.match(text)
        if match:
            hexdigits = "".join(g for g in match.groups() if g not in (":", "-"))
            break
    if hexdigits is None:
        raise ValueError("must be a MAC address such as 52:54:00:12:34:56 (colons, hyphens, dots or bare hex)")
    octets = [hexdigits[i : i + 2] for i in range(0, 12, 2)]
    if hexdigits == "0" * 12:
        raise ValueError("must not be the all-zero address")
    if hexdigits == "f" * 12:
        raise ValueError("must not be the broadcast address")
    if int(octets[0], 16) & 1:
        raise ValueError("must be a unicast address (first octet is multicast)")
    return ":".join(octets)


def mac_hyphens(mac: str) -> str:
    """The form iPXE's ${mac:hexhyp} produces: 52-54-00-12-34-56."""
    return mac.replace(":", "-")


# --- IPv4 ------------------------------------------------------------------


def normalize_ipv4(value: str) -> str:
    text = str(value).strip()
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError("must be an IPv4 address such as 192.168.1.20") from None
    if address.is_multicast:
        raise ValueError("must be a unicast host address, not multicast")
    if address.is_unspecified or address == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError("must be a host address, not 0.0.0.0 or the broadcast address")
    if address.is_loopback:
        raise ValueError("must be a host on the LAN, not loopback")
    if address.is_reserved or address.is_link_local:
        raise ValueError("must be a usable host address (reserved and link-local ranges are refused)")
    last = int(address) & 0xFF
    if last in (0, 255):
        raise ValueError("must be a host address (ending in .0 or .255 is a network or broadcast address)")
    return str(address)


def parse_host_port(text: str, default_port: int, example: str) -> tuple[str, int]:
    """``IPv4[:port]`` as (address, port) for settings such as GGNET_PORTAL and GGNET_WOL_ADDRESS."""
    host, sep, port_text = str(text).strip().rpartition(":")
    if not sep:
        host, port_text = str(text).strip(), str(default_port)
    try:
        ipaddress.IPv4Address(host)
        port = int(port_text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"must be IPv4-address:port such as {example}, got {text!r}")
    return host, port


# --- names -----------------------------------------------------------------

_MACHINE_NAME = re.compile(r"^[a-z0-9-]{1,15}\Z")


def normalize_machine_name(value: str) -> str:
    """NetBIOS-safe: 1-15 letters, digits, hyphens; not all digits. Stored lower case."""
    text = str(value).strip()
    if not text.isascii():  # checked before lower(): the Kelvin sign lower-cases to an ASCII "k"
        raise ValueError("may contain only letters, digits and hyphens (ASCII)")
    text = text.lower()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > 15:
        raise ValueError(f"must be at most 15 characters (NetBIOS limit), got {len(text)}")
    if not _MACHINE_NAME.match(text):
        raise ValueError("may contain only letters, digits and hyphens")
    if text.isdigit():
        raise ValueError("must not be all digits")
    if text.startswith("-") or text.endswith("-"):
        raise ValueError("must not start or end with a hyphen")
    return text


_USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")


def normalize_username(value: str) -> str:
    text = str(value).strip()
    if not text.isascii():
        raise ValueError("must contain only ASCII letters, digits, '.', '_' and '-'")
    text = text.lower()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > 32:
        raise ValueError(f"must be at most 32 characters, got {len(text)}")
    if not _USERNAME.match(text):
        raise ValueError("must start with a letter or underscore and contain only letters, digits, '.', '_' and '-'")
    return text


_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def normalize_image_name(value: str) -> str:
    text = str(value).strip()
    if not _IMAGE_NAME.match(text):
        raise ValueError("must be 1-64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit")
    return text


# --- passwords -------------------------------------------------------------

PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 72  # bcrypt ignores (or refuses) anything past 72 bytes


def check_password(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    size = len(value.encode("utf-8"))
    if size < PASSWORD_MIN_BYTES:
        raise ValueError(f"must be at least {PASSWORD_MIN_BYTES} bytes")
    if size > PASSWORD_MAX_BYTES:
        raise ValueError(f"must be at most {PASSWORD_MAX_BYTES} bytes in UTF-8 (bcrypt's limit), got {size}")
    return value


# --- free text --------------------------------------------------------------

NOTES_MAX = 2000


def check_notes(value: str) -> str:
    # PostgreSQL refuses NUL in text; refusing it everywhere keeps both databases alike
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    if len(value) > NOTES_MAX:
        raise ValueError(f"must be at most {NOTES_MAX} characters, got {len(value)}")
    return value


def lookup_key(value: object) -> str | None:
    """A name typed to find a row, stripped and lower-cased; None when no row could have it
    (NUL, or not text), so callers answer "not found" instead of sending it to the database."""
    if not isinstance(value, str) or "\x00" in value:
        return None
    return value.strip().lower()


def shown(value: object, limit: int = 64) -> str:
    """A user-supplied string made safe to quote in a message or an audit event."""
    text = str(value)[:limit]
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")[:limit]
    return text


# --- IQN (RFC 3720 section 3.2.6) ------------------------------------------

# rtslib-fb's own check: anything it refuses we refuse first
_RTSLIB_IQN = re.compile(r"iqn\.[0-9]{4}-[0-1][0-9]\..*\..*")
_RFC3720_IQN = re.compile(
    r"^iqn\.([0-9]{4})-([0-9]{2})\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+(:[a-z0-9.:-]+)?\Z"
)


def normalize_iqn(value: str) -> str:
    text = str(value).strip().lower()
    if len(text.encode()) > 223:
        raise ValueError("must be at most 223 bytes (RFC 3720)")
    match = _RFC3720_IQN.match(text)
    if not match or not _RTSLIB_IQN.match(text):
        raise ValueError(
            "must look like iqn.YYYY-MM.reversed.domain[:suffix], e.g. iqn.2024-01.lan.ggnet:pc01 "
            "(lower-case letters, digits, '.', '-' and ':'; LIO refuses '_')"
        )
    month = int(match.group(2))
    if not 1 <= month <= 12:
        raise ValueError("must have a month between 01 and 12 in its date")
    return text


# --- pydantic glue ---------------------------------------------------------


def _str_only(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be text")
    return value


MacAddress = Annotated[str, BeforeValidator(_str_only), AfterValidator(normalize_mac)]
IPv4Host = Annotated[str, BeforeValidator(_str_only), AfterValidator(normalize_ipv4)]
MachineName = Annotated[str, BeforeValidator(_str_only), AfterValidator(normalize_machine_name)]
Username = Annotated[str, BeforeValidator(_str_only), AfterValidator(normalize_username)]
ImageName = Annotated[str, BeforeValidator(_str_only), AfterValidator(normalize_image_name)]
# never stripped: spaces are part of a password, and login compares it unstripped
Password = Annotated[
    str, StringConstraints(strip_whitespace=False), BeforeValidator(_str_only), AfterValidator(check_password)
]
Iqn = Annotated[str, BeforeValidator(_str_only), AfterValidator(normalize_iqn)]
Notes = Annotated[str, BeforeValidator(_str_only), AfterValidator(check_notes)]


class StrictInput(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data`` into ``model``; raise Invalid naming every bad field and its rule."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(errors_by_field(exc)) from None


def errors_by_field(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "input"
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        elif err["type"] in ("literal_error", "enum"):
            message = "must be one of " + message.split("Input should be ", 1)[-1].replace("'", "")
        elif err["type"] == "extra_forbidden":
            message = "is not a known field"
        errors.setdefault(field, message)
    return errors
