"""target_diff: the one comparison both backends, the engine and reconcile share (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.iscsi.base import LunSpec, ObservedTarget, TargetSpec
from core.iscsi.diff import FIELDS, find_drift, portal_covered, target_diff

SECRET = "pc01-chap-secret"
SPEC = TargetSpec(
    iqn="iqn.2024-01.lan.ggnet:pc01",
    luns=(LunSpec(1, Path("/srv/ggnet/writebacks/pc01.raw")), LunSpec(2, Path("/srv/ggnet/games/g1.raw"))),
    initiator_iqn="iqn.2024-01.lan.ggnet.client:pc01",
    chap_username="pc01",
    chap_secret=SECRET,
    portal_host="127.0.0.1",
    portal_port=3260,
)


def observed(**changes: object) -> ObservedTarget:
    base = ObservedTarget(
        iqn=SPEC.iqn,
        luns={1: "/srv/ggnet/writebacks/pc01.raw", 2: "/srv/ggnet/games/g1.raw"},
        acls=[SPEC.initiator_iqn],
        chap_users=["pc01"],
        chap_secret=SECRET,
        portals=["127.0.0.1:3260"],
        enabled=True,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_an_identical_target_has_no_differences() -> None:
    assert target_diff(observed(), SPEC) == []
    # IQNs compare case-insensitively, paths by their normal form; a secret the stack cannot show is
    # not a difference (verify_chap decides)
    assert target_diff(observed(acls=[SPEC.initiator_iqn.upper()], chap_secret=None), SPEC) == []
    assert (
        target_diff(observed(luns={1: "/srv/ggnet//writebacks/./pc01.raw", 2: "/srv/ggnet/games/g1.raw"}), SPEC) == []
    )


def test_a_missing_target_is_only_missing() -> None:
    assert target_diff(None, SPEC) == ["missing"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"portals": []}, "portal"),
        ({"portals": ["127.0.0.1:3299"]}, "portal"),  # moved to another port
        ({"portals": ["10.0.0.1:3260"]}, "portal"),  # another address
        ({"luns": {1: "/srv/ggnet/writebacks/pc01.raw"}}, "lun"),  # the game disk removed
        ({"luns": {1: "/srv/ggnet/writebacks/pc01.raw", 2: "/srv/ggnet/games/g1.raw", 3: "/x"}}, "lun"),
        ({"luns": {1: "/srv/ggnet/writebacks/pc02.raw", 2: "/srv/ggnet/games/g1.raw"}}, "backing_file"),
        ({"luns": {1: None, 2: "/srv/ggnet/games/g1.raw"}}, "backing_file"),  # not a file (block, ramdisk)
        ({"acls": []}, "acl"),
        ({"acls": ["iqn.2024-01.lan.ggnet.client:pc02"]}, "acl"),
        ({"acls": [SPEC.initiator_iqn, "ALL"]}, "acl"),  # tgtd's "every initiator" rule besides
        ({"chap_users": []}, "chap_user"),  # account unbound
        ({"chap_users": ["pc01-renamed"]}, "chap_user"),
        ({"chap_users": ["pc01", "other"]}, "chap_user"),
        ({"chap_secret": "an-old-secret-1"}, "chap_secret"),
        ({"chap_secret": ""}, "chap_secret"),
        ({"enabled": False}, "enabled"),
    ],
)
def test_each_difference_is_named(changes: dict[str, object], named: str) -> None:
    assert target_diff(observed(**changes), SPEC) == [named]


def test_several_differences_in_vocabulary_order_and_never_a_value() -> None:
    drifted = observed(portals=[], luns={1: "/elsewhere.raw"}, acls=[], chap_users=[], chap_secret="old-secret-123",
                       enabled=False)  # fmt: skip
    found = target_diff(drifted, SPEC)
    assert found == ["portal", "lun", "backing_file", "acl", "chap_user", "chap_secret", "enabled"]
    assert list(FIELDS) == ["missing", *found]
    text = repr(found)
    assert SECRET not in text and "old-secret-123" not in text and "/elsewhere.raw" not in text


def test_a_wildcard_portal_covers_every_address_on_its_port() -> None:
    assert portal_covered(["0.0.0.0:3260"], "192.168.1.5", 3260)
    assert portal_covered(["[::]:3260"], "192.168.1.5", 3260)  # tgtd's default pair of listeners
    assert portal_covered(["[::]:3260"], "fe80::1", 3260) and portal_covered(["[fe80::1]:3260"], "[fe80::1]", 3260)
    assert not portal_covered(["0.0.0.0:3260"], "192.168.1.5", 3261)
    assert not portal_covered(["127.0.0.1:3260"], "0.0.0.0", 3260)  # a wildcard spec needs the wildcard
    # another portal besides the spec's is not drift: tgtd's portals are shared by every target
    assert target_diff(observed(portals=["127.0.0.1:3260", "10.9.9.9:3260"]), SPEC) == []


def test_secrets_stay_out_of_reprs() -> None:
    assert SECRET not in repr(SPEC) and SECRET not in repr(observed())


class Prober:
    def __init__(self, answer: bool | None) -> None:
        self.answer, self.asked = answer, 0

    async def verify_chap(self, spec: TargetSpec) -> bool | None:
        self.asked += 1
        return self.answer


async def test_find_drift_asks_for_a_login_only_when_it_can_tell() -> None:
    unknown = observed(chap_secret=None)
    refused, accepted = Prober(False), Prober(True)
    assert await find_drift(refused, SPEC, unknown) == ["chap_secret"]  # type: ignore[arg-type]
    assert await find_drift(accepted, SPEC, unknown) == []  # type: ignore[arg-type]
    assert await find_drift(refused, SPEC, unknown, probe_chap=False) == []  # type: ignore[arg-type]
    # the stack shows the secret (LIO), the target is missing, or the login would fail for another reason
    assert await find_drift(refused, SPEC, observed()) == []  # type: ignore[arg-type]
    assert await find_drift(refused, SPEC, None) == ["missing"]  # type: ignore[arg-type]
    assert await find_drift(refused, SPEC, observed(chap_secret=None, enabled=False)) == ["enabled"]  # type: ignore[arg-type]
    assert await find_drift(refused, SPEC, observed(chap_secret=None, luns={1: "/x"})) == [  # type: ignore[arg-type]
        "lun", "backing_file", "chap_secret"
    ]  # fmt: skip
    assert (refused.asked, accepted.asked) == (2, 1)
