"""The one comparison of what a target stack holds against what a machine's target must be.

Pure and shared: the engine, reconcile and both backends' ``apply`` call ``target_diff``; tgtd and LIO
differ only in how they fill an ``ObservedTarget``. It names fields, never values: its output is
logged, and a CHAP secret must never reach a log.
"""

from __future__ import annotations

import os

from .base import ObservedTarget, TargetBackend, TargetSpec, portal_text

# the whole vocabulary, in the order the names are reported
FIELDS = ("missing", "portal", "lun", "backing_file", "acl", "chap_user", "chap_secret", "enabled")

_WILDCARDS = ("0.0.0.0", "::")


def portal_covered(portals: list[str], host: str, port: int) -> bool:
    """Does one of ``portals`` accept connections for ``host:port``: the same address, or a wildcard
    address (0.0.0.0 or [::]) on the same port?"""
    wanted = portal_text(host, port)
    wildcards = {portal_text(w, port) for w in _WILDCARDS}
    return wanted in portals or bool(wildcards & set(portals))


def _same_file(observed: str | None, wanted: os.PathLike[str] | str) -> bool:
    return observed is not None and os.path.normpath(observed) == os.path.normpath(os.fspath(wanted))


def target_diff(observed: ObservedTarget | None, spec: TargetSpec) -> list[str]:
    """The fields in which ``observed`` differs from ``spec``, from ``FIELDS``; [] when identical.

    - missing: the target does not exist (then nothing else is named).
    - portal: the spec's portal does not reach it (another portal besides is not drift: tgtd's are
      shared by every target).
    - lun: the set of LUNs differs (missing or extra).
    - backing_file: a LUN in both serves another file (or no file).
    - acl: the ACL is not exactly the spec's initiator (IQNs compare case-insensitively).
    - chap_user: the CHAP users are not exactly the spec's user.
    - chap_secret: the stack shows a secret and it is not the spec's. When the stack cannot show it
      (``observed.chap_secret is None``, tgtd) the backend's ``verify_chap`` decides.
    - enabled: the target does not accept logins (or accepts them without authentication / in demo mode).
    """
    if observed is None:
        return ["missing"]
    diffs: list[str] = []
    if not portal_covered(observed.portals, spec.portal_host, spec.portal_port):
        diffs.append("portal")
    wanted = {lun.lun: lun.backing_file for lun in spec.luns}
    if set(observed.luns) != set(wanted):
        diffs.append("lun")
    if any(not _same_file(observed.luns[n], path) for n, path in wanted.items() if n in observed.luns):
        diffs.append("backing_file")
    if [a.lower() for a in observed.acls] != [spec.initiator_iqn.lower()]:
        diffs.append("acl")
    if observed.chap_users != [spec.chap_username]:
        diffs.append("chap_user")
    if observed.chap_secret is not None and observed.chap_secret != spec.chap_secret:
        diffs.append("chap_secret")
    if not observed.enabled:
        diffs.append("enabled")
    return diffs


async def find_drift(
    backend: TargetBackend, spec: TargetSpec, observed: ObservedTarget | None, probe_chap: bool = True
) -> list[str]:
    """``target_diff``, plus ``chap_secret`` when the stack cannot show its secret (tgtd) and a login
    with the spec's refused. The login is tried only when the portal, ACL, CHAP user and enabled
    state are right: otherwise it would fail for their sake, and ``apply`` rewrites CHAP anyway.
    A login costs about 1 ms; ``probe_chap=False`` skips it (e.g. for a target this process set)."""
    diffs = target_diff(observed, spec)
    unknown = observed is not None and observed.chap_secret is None
    if not probe_chap or not unknown or {"portal", "acl", "chap_user", "enabled"} & set(diffs):
        return diffs
    if await backend.verify_chap(spec) is False:
        diffs.append("chap_secret")
    return [f for f in FIELDS if f in diffs]
