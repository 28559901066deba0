"""Machines: add, edit, remove, list, CSV import (all or nothing)."""

from __future__ import annotations

import csv
import functools
import io
import secrets
import string
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator
from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..context import Core
from ..errors import Conflict, Fix, Invalid, NotFound
from ..models import (
    CURRENT_BOOT_STATES,
    Boot,
    BootMode,
    BootState,
    Image,
    ImageKind,
    ImageVersion,
    Machine,
    MachineObservation,
    MachineStatus,
    WritebackPolicy,
    utcnow,
)
from ..validation import (
    ImageName,
    IPv4Host,
    Iqn,
    MacAddress,
    MachineName,
    Notes,
    StrictInput,
    lookup_key,
    parse,
    shown,
)
from .base import Operation, check_version, may, operation, reading, snapshot
from .views import MachineView, View

CSV_MAX_ROWS = 10_000
CSV_MAX_BYTES = 4 << 20  # 10,000 rows of name,mac,ip,boot_mode,game_image take about 1 MiB
CSV_COLUMNS = ("name", "mac", "ip", "boot_mode", "game_image")
_SECRET_ALPHABET = string.ascii_letters + string.digits


def _boot_mode(value: Any) -> Any:
    """Boot modes are case-insensitive everywhere (forms, the CLI, CSV files)."""
    return value.strip().lower() if isinstance(value, str) else value


BootModeInput = Annotated[BootMode, BeforeValidator(_boot_mode)]


class MachineInput(StrictInput):
    name: MachineName
    mac: MacAddress
    ip: IPv4Host | None = None
    boot_mode: BootModeInput = BootMode.BIOS
    initiator_iqn: Iqn | None = None
    boot_enabled: bool = True
    writeback_policy: WritebackPolicy = WritebackPolicy.FRESH
    notes: Notes = ""


class CsvMachine(MachineInput):
    """One row of a CSV import: a machine, and optionally the game image it gets as its second disk."""

    game_image: ImageName | None = None


class MachineChanges(StrictInput):
    name: MachineName | None = None
    mac: MacAddress | None = None
    ip: IPv4Host | None = None
    boot_mode: BootModeInput | None = None
    initiator_iqn: Iqn | None = None
    boot_enabled: bool | None = None
    # fresh: a new disk at every boot; keep: the same one (--keep-writeback); maintenance: see services/boots
    writeback_policy: WritebackPolicy | None = None
    keep_writeback: bool | None = None  # the older spelling of writeback_policy keep / fresh
    notes: Notes | None = None


def new_chap_secret() -> str:
    # 16 characters: the most Windows' initiator accepts, and nothing iPXE needs to escape
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(16))


def default_initiator_iqn(iqn_base: str, name: str) -> str:
    return f"{iqn_base}:client.{name}"


_VIEW_COLUMNS = (
    Machine.id,
    Machine.name,
    Machine.mac,
    Machine.ip,
    Machine.boot_mode,
    Machine.initiator_iqn,
    Machine.chap_username,
    Machine.image_id,
    Machine.game_image_id,
    Machine.boot_enabled,
    Machine.writeback_policy,
    Machine.notes,
    Machine.updated_at,
    Machine.updated_by,
    Machine.row_version,
)


@functools.cache
def _machine_query() -> Select[*tuple[Any, ...]]:
    # plain columns rather than ORM objects: listing 10,000 machines is about twice as fast;
    # built once (a Select is immutable: .where() and .order_by() make new ones), which saves
    # a few milliseconds per call
    pinned = ImageVersion.__table__.alias("pinned")
    game = Image.__table__.alias("game")
    game_pinned = ImageVersion.__table__.alias("game_pinned")
    current = Boot.__table__.alias("current")
    return (
        select(
            *_VIEW_COLUMNS,
            Image.name.label("image"),
            pinned.c.number.label("pinned_version"),
            game.c.name.label("game_image"),
            game_pinned.c.number.label("game_pinned_version"),
            MachineObservation.status,
            MachineObservation.detail.label("status_detail"),
            MachineObservation.logged_in,
            MachineObservation.client_address,
            MachineObservation.last_seen_at,
            MachineObservation.writeback_bytes,
            MachineObservation.read_bytes,
            MachineObservation.written_bytes,
            MachineObservation.observed_at,
            current.c.chap_secret,
        )
        .outerjoin(Image, Image.id == Machine.image_id)
        .outerjoin(pinned, pinned.c.id == Machine.pinned_version_id)
        .outerjoin(game, game.c.id == Machine.game_image_id)
        .outerjoin(game_pinned, game_pinned.c.id == Machine.game_pinned_version_id)
        .outerjoin(MachineObservation, MachineObservation.machine_id == Machine.id)
        .outerjoin(
            current,
            (current.c.machine_id == Machine.id) & current.c.state.in_([s.value for s in CURRENT_BOOT_STATES]),
        )
    )


@functools.cache
def _machine_fields() -> tuple[str, ...]:
    return tuple(_machine_query().selected_columns.keys())


def _view(row: Any, secrets_ok: bool) -> MachineView:
    """From a result row of _machine_query, whose columns are named as the view's fields.

    By position, not ``row.name``: a row's attribute costs ~0.4 us, and a page of 100 machines has
    2,800 of them (the API's machines page spent a fifth of its time there)."""
    values = dict(zip(_machine_fields(), row, strict=True))
    values["status"] = values["status"] or MachineStatus.OFF.value
    values["logged_in"] = bool(values["logged_in"])
    if not secrets_ok:
        values["chap_secret"] = None
    return MachineView.model_validate(values)


async def get_row(session: AsyncSession, name: str) -> Machine:
    key = lookup_key(name)
    machine = None
    if key is not None:
        machine = (await session.execute(select(Machine).where(Machine.name == key))).scalar_one_or_none()
    if machine is None:
        raise NotFound(f"no machine named '{shown(key if key is not None else name)}'")
    return machine


async def _clashes(session: AsyncSession, *, exclude_id: int | None = None, **values: str | None) -> dict[str, str]:
    """Unique fields already taken by another machine, as field -> rule."""
    errors: dict[str, str] = {}
    conditions = [getattr(Machine, k) == v for k, v in values.items() if v is not None]
    if not conditions:
        return errors
    query = select(Machine.name, Machine.mac, Machine.ip, Machine.initiator_iqn).where(or_(*conditions))
    if exclude_id is not None:
        query = query.where(Machine.id != exclude_id)
    for row in (await session.execute(query)).all():
        for key, value in values.items():
            if value is not None and getattr(row, key) == value:
                errors.setdefault(key, f"{value} is already used by machine '{row.name}'")
    return errors


def _new_values(op: Operation, data: MachineInput, iqn_base: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "name": data.name,
        "mac": data.mac,
        "ip": data.ip,
        "boot_mode": data.boot_mode.value,
        "initiator_iqn": data.initiator_iqn or default_initiator_iqn(iqn_base, data.name),
        "chap_username": data.name,
        "boot_enabled": data.boot_enabled,
        "writeback_policy": data.writeback_policy.value,
        "notes": data.notes,
        "created_at": now,
        "updated_at": now,
        "updated_by": op.actor.username,
        "row_version": 1,
    }


def _new_machine(op: Operation, data: MachineInput, iqn_base: str) -> Machine:
    return Machine(**_new_values(op, data, iqn_base))


async def add_machine(
    core: Core, actor: Actor, *, image: str | None = None, game_image: str | None = None, **fields: Any
) -> MachineView:
    """Register a machine, with its images if given: one change, all or nothing."""
    from .images import UNCHANGED, assign

    data = parse(MachineInput, fields)
    if data.writeback_policy == WritebackPolicy.MAINTENANCE:
        raise Invalid("writeback_policy", "maintenance is started with maintenance start, one machine per image")
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.create") as op:
        machine = _new_machine(op, data, core.settings.iqn_base)
        clashes = await _clashes(
            op.session, name=machine.name, mac=machine.mac, ip=machine.ip, initiator_iqn=machine.initiator_iqn
        )
        if clashes:
            raise Conflict("; ".join(f"{k}: {v}" for k, v in clashes.items()))
        op.session.add(machine)
        await op.flush(conflict=f"machine '{data.name}' or its MAC, IP or IQN was just added by another console")
        if image or game_image:
            await assign(
                op, machine, image=image if image else UNCHANGED, game_image=game_image if game_image else UNCHANGED
            )
        op.audit("machine", machine.id, machine.name, None, snapshot(machine))
        op.intent_changed()
        await _forget_discovered(op, [machine.mac])
    return await get_machine(core, actor, machine.name)


async def _forget_discovered(op: Operation, macs: list[str]) -> None:
    """A registered MAC is no longer a discovered PC."""
    from sqlalchemy import delete

    from ..models import DiscoveredMac

    for start in range(0, len(macs), 500):
        await op.session.execute(delete(DiscoveredMac).where(DiscoveredMac.mac.in_(macs[start : start + 500])))


_ASSIGNMENT = ("image", "pin_version", "game_image", "game_pin_version")


async def update_machine(
    core: Core, actor: Actor, name: str, /, expected_version: int | None = None, **fields: Any
) -> MachineView:
    """Change only the fields given, all or nothing; ``ip=None`` clears the IP; ``name=`` renames
    (hence ``/``); ``image``, ``pin_version``, ``game_image``, ``game_pin_version`` as in
    ``images.assign``. ``boot_enabled=False`` also ends the machine's current boot: its client loses
    its disk (its next login is refused)."""
    from .images import assign

    assignment = {k: fields.pop(k) for k in _ASSIGNMENT if k in fields}
    changes = parse(MachineChanges, fields)
    given = changes.model_dump(exclude_unset=True)
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.update") as op:
        machine = await get_row(op.session, name)
        check_version(machine, expected_version, f"machine '{machine.name}'")
        before = snapshot(machine)
        unique = {k: given[k] for k in ("name", "mac", "ip", "initiator_iqn") if given.get(k) is not None}
        clashes = await _clashes(op.session, exclude_id=machine.id, **unique)
        if clashes:
            raise Conflict("; ".join(f"{k}: {v}" for k, v in clashes.items()))
        if given.get("keep_writeback") is not None:
            if given.get("writeback_policy") is not None:
                raise Invalid("keep_writeback", "give writeback_policy or keep_writeback, not both")
            given["writeback_policy"] = WritebackPolicy.KEEP if given["keep_writeback"] else WritebackPolicy.FRESH
        given.pop("keep_writeback", None)
        if given.get("writeback_policy") == WritebackPolicy.MAINTENANCE:
            raise Invalid("writeback_policy", "maintenance is started with maintenance start, one machine per image")
        if machine.writeback_policy == WritebackPolicy.MAINTENANCE.value and given.get("writeback_policy") is not None:
            raise Conflict(
                f"machine '{machine.name}' is in maintenance: apply or discard its writeback first",
                Fix("maintenance.finish", machine.name),
            )
        if "name" in given and given["name"] != machine.name:
            if await _has_live_session(op.session, machine.id):
                raise Conflict(
                    f"machine '{machine.name}' is booted or being prepared; take it offline before renaming",
                    Fix("session.stop", machine.name),
                )
            if machine.initiator_iqn == default_initiator_iqn(core.settings.iqn_base, machine.name):
                given.setdefault("initiator_iqn", default_initiator_iqn(core.settings.iqn_base, given["name"]))
            machine.chap_username = given["name"]
        if given.get("writeback_policy") == WritebackPolicy.FRESH and machine.writeback_policy != "fresh":
            await _release_kept_writebacks(op, machine.id)
        disabling = given.get("boot_enabled") is False and machine.boot_enabled
        for key, value in given.items():
            if key in ("boot_mode", "writeback_policy") and value is not None:
                value = value.value
            if value is None and key not in ("ip",):
                continue
            setattr(machine, key, value)
        op.stamp(machine)
        await op.flush(
            conflict=f"machine '{machine.name}': that MAC, IP, IQN or name was just taken by another console"
        )
        if disabling:  # after the flush, which holds the machine's row: a boot recorded meanwhile is seen
            await _end_current_boot(op, machine.id, "disabled")
        if assignment:
            await assign(op, machine, **assignment)
        op.audit("machine", machine.id, machine.name, before, snapshot(machine))
        op.intent_changed()
    return await get_machine(core, actor, machine.name)


async def _release_kept_writebacks(op: Operation, machine_id: int) -> None:
    """Back to fresh: a kept writeback is given up (the engine removes it once no boot uses it)."""
    from ..models import Writeback, WritebackState

    in_use = select(Boot.system_writeback_id).where(
        Boot.machine_id == machine_id, Boot.state.in_([s.value for s in CURRENT_BOOT_STATES])
    )
    rows = await op.session.execute(
        select(Writeback).where(
            Writeback.machine_id == machine_id,
            Writeback.retained.is_(True),
            Writeback.id.not_in(in_use.where(Boot.system_writeback_id.is_not(None))),
        )
    )
    for row in rows.scalars():
        row.state = WritebackState.DISCARD.value


async def _end_current_boot(op: Operation, machine_id: int, reason: str) -> None:
    """A machine that may no longer boot loses its current boot too: the engine removes its target
    (a running client's next login is refused) and, for a fresh machine, its writeback."""
    await op.session.execute(
        update(Boot)
        .where(Boot.machine_id == machine_id, Boot.state.in_([s.value for s in CURRENT_BOOT_STATES]))
        .values(state=BootState.ENDING.value, end_reason=reason, ended_by=op.actor.username)
    )


async def _has_live_session(session: AsyncSession, machine_id: int) -> bool:
    """Booted or being prepared: its target exists (or is about to)."""
    query = select(Boot.id).where(Boot.machine_id == machine_id, Boot.state.in_([s.value for s in CURRENT_BOOT_STATES]))
    return (await session.execute(query)).first() is not None


async def remove_machine(core: Core, actor: Actor, name: str) -> None:
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.delete") as op:
        machine = await get_row(op.session, name)
        if await _has_live_session(op.session, machine.id):
            raise Conflict(
                f"machine '{machine.name}' is booted or being prepared; take it offline first",
                Fix("session.stop", machine.name),
            )
        before = snapshot(machine)
        await op.session.delete(machine)
        op.audit("machine", machine.id, machine.name, before, None)
        op.intent_changed()  # its ended boots' writebacks are the engine's to remove


async def remove_machines(core: Core, actor: Actor, names: list[str]) -> list[str]:
    """Remove several machines, all or none (one audit event each, one transaction)."""
    if not names:
        raise Invalid("machines", "name at least one machine")
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.delete") as op:
        rows = [await get_row(op.session, name) for name in dict.fromkeys(names)]
        busy = [m.name for m in rows if await _has_live_session(op.session, m.id)]
        if busy:
            raise Conflict(
                f"{', '.join(busy)} {'is' if len(busy) == 1 else 'are'} booted or being prepared; take "
                "them offline first; nothing was deleted"
            )
        for machine in rows:
            op.audit("machine", machine.id, machine.name, snapshot(machine), None)
            await op.session.delete(machine)
        op.intent_changed()
        return [m.name for m in rows]


async def get_machine(core: Core, actor: Actor, name: str) -> MachineView:
    async with reading(core, actor) as session:
        return await machine_view(session, actor, name)


async def machine_view(session: AsyncSession, actor: Actor, name: str) -> MachineView:
    """A machine's view inside the caller's reading session."""
    key = lookup_key(name)
    row = None if key is None else (await session.execute(_machine_query().where(Machine.name == key))).first()
    if row is None:
        raise NotFound(f"no machine named '{shown(key if key is not None else name)}'")
    return _view(row, await may(session, actor, Permission.READ_SECRETS))


class LivenessRow(View):
    """What the liveness monitor needs of a machine: where to probe it, and what the engine saw."""

    name: str
    ip: str | None
    mac: str
    boot_state: str | None  # its current boot's state, None when it has none
    logged_in: bool | None  # None when the engine has not observed it yet
    client_address: str | None


async def liveness(core: Core, actor: Actor) -> list[LivenessRow]:
    current = [s.value for s in CURRENT_BOOT_STATES]
    async with reading(core, actor) as session:
        query = (
            select(
                Machine.name,
                Machine.ip,
                Machine.mac,
                Boot.state,
                MachineObservation.logged_in,
                MachineObservation.client_address,
            )
            .outerjoin(Boot, (Boot.machine_id == Machine.id) & Boot.state.in_(current))
            .outerjoin(MachineObservation, MachineObservation.machine_id == Machine.id)
        )
        return [
            LivenessRow(name=n, ip=ip, mac=mac, boot_state=state, logged_in=logged_in, client_address=address)
            for n, ip, mac, state, logged_in, address in (await session.execute(query)).all()
        ]


async def list_machines(core: Core, actor: Actor) -> list[MachineView]:
    async with reading(core, actor) as session:
        secrets_ok = await may(session, actor, Permission.READ_SECRETS)
        rows = (await session.execute(_machine_query().order_by(Machine.name))).all()
        return [_view(r, secrets_ok) for r in rows]


MAX_PAGE = 1000


async def page_machines(
    core: Core,
    actor: Actor,
    *,
    status: str | None = None,
    image: str | None = None,
    search: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[MachineView], int]:
    """One page of machines by name, and how many match: ``status`` (off, booting, booted, failed),
    ``image`` (its system image's name), ``search`` (part of the name, MAC or IP)."""
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise Invalid("limit", f"must be between 1 and {MAX_PAGE}")
    if offset < 0:
        raise Invalid("offset", "must not be negative")
    conditions: list[Any] = []
    if status is not None:
        try:
            wanted = MachineStatus(status.strip().lower())
        except ValueError:
            raise Invalid("status", "must be one of off, booting, booted, failed") from None
        if wanted == MachineStatus.OFF:
            conditions.append(or_(MachineObservation.status.is_(None), MachineObservation.status == wanted.value))
        else:
            conditions.append(MachineObservation.status == wanted.value)
    for field, value in (("image", image), ("search", search)):
        if value is not None and "\x00" in value:
            raise Invalid(field, "must not contain a NUL character")
    if image is not None:
        conditions.append(Image.name == image.strip())
    if search:
        text = search.strip().lower()
        conditions.append(
            or_(
                Machine.name.contains(text, autoescape=True),
                Machine.mac.contains(text, autoescape=True),
                Machine.ip.contains(text, autoescape=True),
            )
        )
    async with reading(core, actor) as session:
        secrets_ok = await may(session, actor, Permission.READ_SECRETS)
        counted = (
            select(func.count())
            .select_from(Machine)
            .outerjoin(Image, Image.id == Machine.image_id)
            .outerjoin(MachineObservation, MachineObservation.machine_id == Machine.id)
            .where(*conditions)
        )
        total = int((await session.execute(counted)).scalar_one())
        query = _machine_query().where(*conditions).order_by(Machine.name).limit(limit).offset(offset)
        rows = (await session.execute(query)).all()
        return [_view(r, secrets_ok) for r in rows], total


async def boot_modes_in_use(core: Core, actor: Actor) -> set[str]:
    """The boot modes of the registered machines (which iPXE binaries the site needs)."""
    async with reading(core, actor) as session:
        return set((await session.scalars(select(Machine.boot_mode).distinct())).all())


async def count_machines(core: Core, actor: Actor) -> int:
    async with reading(core, actor) as session:
        return int((await session.execute(select(func.count()).select_from(Machine))).scalar_one())


# --- CSV import ------------------------------------------------------------


class CsvRowError(Invalid):
    """Bad rows of a CSV import; ``rows`` is a list of (line number, reason)."""

    def __init__(self, source: str, rows: list[tuple[int, str]]) -> None:
        self.rows = rows
        self.source = source
        super().__init__({f"{source} line {line}": reason for line, reason in rows})


CsvRows = list[tuple[int, CsvMachine]]


def parse_csv(text: str) -> tuple[CsvRows, list[tuple[int, str]]]:
    """Good rows and bad rows, each with its line number. A header line naming the columns is required."""
    reader = csv.reader(io.StringIO(text))
    rows: CsvRows = []
    errors: list[tuple[int, str]] = []
    header: list[str] | None = None
    header_line = 1
    seen: dict[str, dict[str, int]] = {"name": {}, "mac": {}, "ip": {}}
    try:
        for record in reader:
            line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header_line = line
                header = [cell.strip().lower().replace("-", "_") for cell in record]
                unknown = [h for h in header if h not in CSV_COLUMNS]
                missing = [h for h in ("name", "mac") if h not in header]
                if unknown or missing or len(set(header)) != len(header):
                    # the cells are not quoted back: the "CSV" may be any file (even /proc/self/environ)
                    where = [str(i + 1) for i, h in enumerate(header) if h not in CSV_COLUMNS]
                    found = f"; column {', '.join(where)} is not one of them" if where else ""
                    errors.append(
                        (
                            line,
                            f"header must name the columns {', '.join(CSV_COLUMNS)} "
                            f"(name and mac required, each once){found}",
                        )
                    )
                    return rows, errors
                continue
            if len(rows) + len(errors) >= CSV_MAX_ROWS:
                errors.append((line, f"too many rows: at most {CSV_MAX_ROWS} per import"))
                break
            if len(record) != len(header):
                errors.append((line, f"has {len(record)} fields, the header has {len(header)}"))
                continue
            values = {k: v.strip() for k, v in zip(header, record, strict=False)}
            values = {k: v for k, v in values.items() if v != "" or k in ("name", "mac")}
            try:
                item = parse(CsvMachine, values)
            except Invalid as exc:
                errors.append((line, exc.message))
                continue
            duplicate = False
            for key in ("name", "mac", "ip"):
                value = getattr(item, key)
                if value is None:
                    continue
                if value in seen[key]:
                    errors.append((line, f"{key}: {value} repeats line {seen[key][value]}"))
                    duplicate = True
                    break
                seen[key][value] = line
            if not duplicate:
                rows.append((line, item))
    except csv.Error as exc:
        errors.append((reader.line_num, f"is not valid CSV: {exc}"))
    if header is None:
        errors.append((1, "the file is empty; it needs a header line such as name,mac,ip,boot_mode"))
    elif not rows and not errors:
        errors.append((header_line, "the file has a header but no machines"))
    return rows, errors


def read_csv_file(path: Path) -> str:
    """A CSV file a user named, read with the untrusted-input opener (a regular file, capped).
    Blocking: call it from a thread in an event loop."""
    from ..files import read_input_text

    return read_input_text(path, field="file", limit=CSV_MAX_BYTES)


async def _db_clashes(session: AsyncSession, rows: CsvRows) -> list[tuple[int, str]]:
    errors: list[tuple[int, str]] = []
    for key in ("name", "mac", "ip"):
        lines = {getattr(r, key): line for line, r in rows if getattr(r, key) is not None}
        values = list(lines)
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            column = getattr(Machine, key)
            found = await session.execute(select(column, Machine.name).where(column.in_(chunk)))
            for value, owner in found.all():
                errors.append((lines[value], f"{key}: {value} is already used by machine '{owner}'"))
    return sorted(errors)


async def _game_images(session: AsyncSession, rows: CsvRows) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """The game images the rows name (name: id); a line naming an unknown image, or an image that
    is not a game image, is an error of that line."""
    lines: dict[str, list[int]] = {}
    for line, item in rows:
        if item.game_image is not None:
            lines.setdefault(item.game_image, []).append(line)
    kinds: dict[str, tuple[int, str]] = {}
    names = list(lines)
    for start in range(0, len(names), 500):
        query = select(Image.name, Image.id, Image.kind).where(Image.name.in_(names[start : start + 500]))
        kinds.update({name: (image_id, kind) for name, image_id, kind in (await session.execute(query)).all()})
    found: dict[str, int] = {}
    errors: list[tuple[int, str]] = []
    for name, where in lines.items():
        image_id, kind = kinds.get(name, (None, None))
        if image_id is None:
            errors += [(line, f"game_image: no image named '{name}'") for line in where]
        elif kind != ImageKind.GAME.value:
            errors += [(line, f"game_image: '{name}' is a {kind} image; it must be a game image") for line in where]
        else:
            found[name] = image_id
    return found, errors


async def check_csv(core: Core, actor: Actor, text: str, source: str = "CSV") -> list[MachineInput]:
    """Validate a CSV import without writing: the rows, or CsvRowError listing every bad row."""
    rows, errors = parse_csv(text)
    async with reading(core, actor) as session:
        errors += await _db_clashes(session, rows)
        errors += (await _game_images(session, rows))[1]
    if errors:
        raise CsvRowError(source, sorted(errors))
    return [item for _line, item in rows]


async def import_csv(core: Core, actor: Actor, text: str, source: str = "CSV") -> list[str]:
    """Add every row or none. Returns the names added. Every bad row is reported, by line."""
    rows, errors = parse_csv(text)
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.import") as op:
        errors += await _db_clashes(op.session, rows)
        game_images, game_errors = await _game_images(op.session, rows)
        errors += game_errors
        if errors:
            raise CsvRowError(source, sorted(errors))
        # one bulk INSERT (executemany) instead of a round trip per row through the unit of work
        values = [
            {**_new_values(op, item, core.settings.iqn_base), "game_image_id": game_images.get(item.game_image or "")}
            for _line, item in rows
        ]
        try:
            if values:
                await op.session.execute(insert(Machine), values)
        except IntegrityError:
            raise Conflict(
                "another console added a machine with the same name, MAC, IP or IQN (or removed a game image) "
                "meanwhile; nothing imported"
            ) from None
        names = [item.name for _line, item in rows]
        op.audit("machine", None, f"{len(names)} machines from {shown(source, 200)}", None, {"names": names})
        op.intent_changed()
        await _forget_discovered(op, [item.mac for _line, item in rows])
        return names
