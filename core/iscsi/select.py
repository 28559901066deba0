"""Choose the target backend from GGNET_TARGET_BACKEND: lio, tgt, or auto.

auto = kernel LIO when configfs shows ``/sys/kernel/config/target``, else tgtd when it answers on
GGNET_TGT_CONTROL_PORT, else no backend and a health sentence saying how to get one. Selection never
raises: a missing stack is a status the console shows, not a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import GgnetError
from ..log import get_logger
from .base import BackendHealth, TargetBackend
from .tgt import TgtBackend

log = get_logger("ggnet.iscsi.select")

LIO_CONFIGFS = Path("/sys/kernel/config/target")

NO_STACK = (
    "no iSCSI target stack: kernel LIO is not available ({lio}) and tgtd does not answer on control "
    "port {port}; load LIO with `modprobe target_core_mod iscsi_target_mod` (configfs mounted on "
    "/sys/kernel/config), or install and start tgtd (`apt install tgt`, `systemctl start tgt`) and set "
    "GGNET_TGT_CONTROL_PORT to its control port"
)


def _lio_backend() -> TargetBackend:
    """The LIO backend, imported only when wanted (it pulls in rtslib-fb)."""
    from .lio import LioBackend

    return LioBackend()


async def _health(backend: Any) -> BackendHealth:
    try:
        return await backend.health()  # type: ignore[no-any-return]
    except GgnetError as exc:
        return BackendHealth(False, exc.message)
    except Exception as exc:
        log.error("backend_health_failed", backend=getattr(backend, "name", "?"), error=repr(exc))
        return BackendHealth(False, f"the {getattr(backend, 'name', '?')} backend failed its health check: {exc}")


async def _try_lio() -> tuple[TargetBackend | None, BackendHealth]:
    if not LIO_CONFIGFS.is_dir():
        return None, BackendHealth(False, f"kernel LIO is not available: {LIO_CONFIGFS} does not exist")
    try:
        backend = _lio_backend()
    except GgnetError as exc:
        return None, BackendHealth(False, exc.message)
    return backend, await _health(backend)


async def select_backend(settings: Settings) -> tuple[TargetBackend | None, BackendHealth]:
    """The backend to use and its health; (None, why) when there is none."""
    choice = settings.target_backend
    port = settings.tgt_control_port
    if choice == "lio":
        result = await _try_lio()
    elif choice == "tgt":
        tgt = TgtBackend(port)
        result = tgt, await _health(tgt)
    else:
        lio, lio_health = await _try_lio()
        if lio is not None and lio_health.ok:
            result = lio, lio_health
        else:
            tgt = TgtBackend(port)
            tgt_health = await _health(tgt)
            if tgt_health.ok:
                result = tgt, tgt_health
            else:
                lio_why = lio_health.detail.removeprefix("kernel LIO is not available: ")
                result = None, BackendHealth(False, NO_STACK.format(lio=lio_why, port=port))
    log.info("target_backend_selected", choice=choice, backend=getattr(result[0], "name", None),
             ok=result[1].ok, detail=result[1].detail)  # fmt: skip
    return result
