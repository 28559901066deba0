"""Input rules (no database): every refusal names its rule; accepted values come back normalised."""

from __future__ import annotations

import re

import pytest

from core import auth
from core.errors import Invalid
from core.services.machines import MachineInput
from core.services.users import NewUser, PasswordInput
from core.validation import (
    normalize_ipv4,
    normalize_iqn,
    normalize_mac,
    normalize_machine_name,
    normalize_username,
    parse,
)

# rtslib-fb's own pattern, copied here on purpose: the test must fail if core's copy drifts
RTSLIB_IQN = re.compile(r"iqn\.[0-9]{4}-[0-1][0-9]\..*\..*")


@pytest.mark.parametrize(
    "given",
    ["52:54:00:AB:cd:0F", "52-54-00-ab-cd-0f", "5254.00ab.cd0f", "525400abcd0f", "525400ABCD0F", " 52:54:00:ab:cd:0f "],
)
def test_mac_any_notation_is_stored_lower_case_with_colons(given: str) -> None:
    assert normalize_mac(given) == "52:54:00:ab:cd:0f"


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("33:33:00:00:00:01", "multicast"),  # IPv6 multicast, odd first octet
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("ff-ff-ff-ff-ff-ff", "broadcast"),
        ("00:00:00:00:00:00", "all-zero"),
        ("000000000000", "all-zero"),
        ("52:54:00-12:34:56", "MAC address such as"),  # mixed separators
        ("52:54:00:12:34", "MAC address such as"),
        ("52:54:00:12:34:56:78", "MAC address such as"),
        ("52:54:00:12:34:5g", "MAC address such as"),
        ("52:54:00:12:34:56\nx", "MAC address such as"),
        ("", "MAC address such as"),
    ],
)
def test_mac_refusals(given: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        normalize_mac(given)


@pytest.mark.parametrize("given", ["192.168.1.20", "10.0.0.1", "172.16.5.9", " 192.168.0.7 "])
def test_ipv4_unicast_hosts(given: str) -> None:
    assert normalize_ipv4(given) == given.strip()


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "0.0.0.0"),
        ("127.0.0.1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("240.0.0.1", "reserved"),
        ("192.168.1.0", "network or broadcast"),
        ("192.168.1.255", "network or broadcast"),
        ("192.168.1", "IPv4 address such as"),
        ("192.168.1.300", "IPv4 address such as"),
        ("fe80::1", "IPv4 address such as"),
        ("192.168.001.020", "IPv4 address such as"),  # leading zeros are ambiguous (octal)
    ],
)
def test_ipv4_refusals(given: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        normalize_ipv4(given)


@pytest.mark.parametrize(
    ("given", "stored"),
    [("PC01", "pc01"), ("a", "a"), ("lab-2-pc15", "lab-2-pc15"), ("x" * 15, "x" * 15), ("7up", "7up")],
)
def test_machine_names_netbios_safe(given: str, stored: str) -> None:
    assert normalize_machine_name(given) == stored


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("", "must not be empty"),
        ("x" * 16, "at most 15 characters"),
        ("12345", "must not be all digits"),
        ("pc_01", "only letters, digits and hyphens"),
        ("pc.01", "only letters, digits and hyphens"),
        ("pc 01", "only letters, digits and hyphens"),
        ("-pc01", "start or end with a hyphen"),
        ("pc01-", "start or end with a hyphen"),
        ("pс01", "ASCII"),  # Cyrillic 'с'
        ("\u212apc", "ASCII"),  # Kelvin sign: lower() would turn it into an ASCII 'k'
        ("pc\x0001", "only letters, digits and hyphens"),
    ],
)
def test_machine_name_refusals(given: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        normalize_machine_name(given)


@pytest.mark.parametrize(
    "given",
    [
        "iqn.2024-01.lan.ggnet",
        "iqn.2024-01.lan.ggnet:pc01",
        "IQN.2024-01.Lan.GGnet:Client.PC01",
        "iqn.1991-05.com.microsoft:desktop-abc123",
        "iqn.2005-03.org.open-iscsi:a1b2c3d4e5f6",
    ],
)
def test_iqn_rfc3720_and_rtslib(given: str) -> None:
    stored = normalize_iqn(given)
    assert stored == given.lower()
    assert RTSLIB_IQN.match(stored)


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("iqn.2024-13.lan.ggnet:pc01", "month between 01 and 12"),
        ("iqn.2024-00.lan.ggnet", "month between 01 and 12"),
        ("iqn.2024-01.ggnet:pc01", "iqn.YYYY-MM.reversed.domain"),  # one dot after the date: rtslib refuses
        ("iqn.24-01.lan.ggnet", "iqn.YYYY-MM.reversed.domain"),
        ("eui.02004567a425678d", "iqn.YYYY-MM.reversed.domain"),
        ("iqn.2024-01.lan.ggnet:pc 01", "iqn.YYYY-MM.reversed.domain"),
        ("iqn.2024-01.lan.gg_net", "iqn.YYYY-MM.reversed.domain"),
        ("iqn.2024-01.lan.ggnet:pc_01", "iqn.YYYY-MM.reversed.domain"),  # rtslib refuses '_' (WWN not valid)
        ("iqn.2024-01.lan.ggnet:" + "a" * 210, "at most 223 bytes"),
        ("iqn.٢٠٢٤-01.lan.ggnet", "iqn.YYYY-MM.reversed.domain"),  # Arabic-Indic digits
    ],
)
def test_iqn_refusals(given: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        normalize_iqn(given)


@pytest.mark.parametrize(("given", "stored"), [("Admin", "admin"), ("_svc", "_svc"), ("j.doe-2", "j.doe-2")])
def test_usernames(given: str, stored: str) -> None:
    assert normalize_username(given) == stored


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("", "must not be empty"),
        ("u" * 33, "at most 32 characters"),
        ("1admin", "must start with a letter or underscore"),
        ("ad min", "must start with a letter or underscore"),
        ("admin;--", "must start with a letter or underscore"),
        ("аdmin", "ASCII"),  # Cyrillic 'а'
    ],
)
def test_username_refusals(given: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)):
        normalize_username(given)


def test_password_of_8_to_72_utf8_bytes() -> None:
    assert parse(PasswordInput, {"password": "12345678"}).password == "12345678"
    assert parse(PasswordInput, {"password": "x" * 72}).password == "x" * 72
    assert parse(PasswordInput, {"password": "é" * 36}).password == "é" * 36  # 72 bytes
    # spaces are part of the password: login compares what was typed, unstripped
    assert parse(PasswordInput, {"password": "  spaced out  "}).password == "  spaced out  "


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("1234567", "at least 8 bytes"),
        ("x" * 73, "at most 72 bytes in UTF-8 (bcrypt's limit), got 73"),
        ("é" * 36 + "x", "at most 72 bytes in UTF-8 (bcrypt's limit), got 73"),  # 37 characters, 73 bytes
        ("€" * 25, "got 75"),  # 25 characters, 75 bytes
        ("abc\x00defgh", "NUL"),
    ],
)
def test_password_refusals_are_clear_never_truncated(given: str, rule: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse(PasswordInput, {"password": given})
    assert list(caught.value.errors) == ["password"]
    assert rule in caught.value.errors["password"]


def test_a_password_bcrypt_cannot_take_never_matches_and_never_crashes() -> None:
    stored = auth.hash_password("x" * 72)
    # bcrypt would compare only the first 72 bytes; ggnet must not accept a longer variant
    assert auth.verify_password("x" * 72, stored)
    assert not auth.verify_password("x" * 73, stored)
    assert not auth.verify_password("x" * 73, None)  # unknown user: no ValueError from bcrypt
    assert not auth.verify_password("abc\x00defgh", None)
    assert not auth.verify_password("abc\x00defgh", stored)


def test_parse_names_every_bad_field() -> None:
    with pytest.raises(Invalid) as caught:
        parse(MachineInput, {"name": "12", "mac": "ff:ff:ff:ff:ff:ff", "ip": "1.2.3", "boot_mode": "efi", "x": 1})
    errors = caught.value.errors
    assert set(errors) == {"name", "mac", "ip", "boot_mode", "x"}
    assert "all digits" in errors["name"]
    assert "broadcast" in errors["mac"]
    assert errors["boot_mode"] == "must be one of bios, uefi or uefi-secure"
    assert errors["x"] == "is not a known field"
    assert "name: must not be all digits" in caught.value.message


def test_new_user_role_must_be_known() -> None:
    with pytest.raises(Invalid) as caught:
        parse(NewUser, {"username": "bob", "role": "root", "password": "12345678"})
    assert "admin, operator or viewer" in caught.value.errors["role"]


def test_non_text_is_refused() -> None:
    with pytest.raises(Invalid) as caught:
        parse(MachineInput, {"name": 12345, "mac": 0x525400123456})
    assert caught.value.errors == {"name": "must be text", "mac": "must be text"}
