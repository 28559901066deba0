"""Settings: GGNET_* environment variables, then an optional TOML file.

Precedence (highest first): explicit arguments, environment, the TOML file named by
``--config``/``GGNET_CONFIG``, defaults.
"""

from __future__ import annotations

import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

CONFIG_MAX_BYTES = 1 << 20


def _control_port(value: Any) -> int:
    """tgtd's control port: a TOML integer or (from the environment) decimal digits, 0-65535;
    never ``true`` (which pydantic would take as 1) and never a fraction."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be a whole number between 0 and 65535")
    text = value.strip() if isinstance(value, str) else ""
    if isinstance(value, str) and not (text.isascii() and text.isdigit() and len(text) <= 5):
        raise ValueError("must be a whole number between 0 and 65535")
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"must be a whole number between 0 and 65535, got {number}")
    return number


ControlPort = Annotated[int, BeforeValidator(_control_port)]


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/ggnet")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "ggnet"


def default_server_name() -> str:
    """This boot server's name in the database (rows of targets, writebacks and boots carry it)."""
    return (socket.gethostname() or "localhost").strip().lower()[:64]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from 1073741824, "10G", "512 MiB", "1.5TB" (binary units: k = 1024)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 10G or 512M")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(f"must be a size such as 10G or 512M, got {value!r}")
        number, unit = match.groups()
        size = int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))
    if size < 0:
        raise ValueError("must not be negative")
    return size


def default_config_file() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/ggnet/ggnet.toml")
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "ggnet" / "ggnet.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GGNET_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    log_file: Path | None = None
    user: str | None = None
    password: str | None = Field(default=None, repr=False)

    # provisioning
    tftp_root: Path | None = None
    target_backend: Literal["auto", "lio", "tgt"] = "auto"
    tgt_control_port: ControlPort = 0  # tgtd's -C: 0 is tgtd's default control port
    portal: str = "0.0.0.0:3260"
    boot_address: str | None = None
    iqn_base: str = "iqn.2024-01.lan.ggnet"
    writeback_driver: Literal["auto", "reflink", "copy"] = "auto"
    wol_address: str = "255.255.255.255:9"

    # the boot engine (ggnet serve)
    server_name: str = Field(default_factory=default_server_name)
    http_address: str = "0.0.0.0:8067"  # where ggnet serve listens (boot requests, health, API)
    converge_seconds: float = Field(default=30.0, gt=0)  # a pass at least this often
    observe_seconds: float = Field(default=2.0, gt=0)  # how often logins and logouts are looked for
    reserved_space: int | str = "10G"  # below this much free space, new boots are refused
    writeback_idle_hours: float = Field(default=12.0, ge=0)  # fresh writebacks unused this long are discarded
    db_busy_seconds: float = Field(default=10.0, gt=0, le=600)  # a change waits this long for SQLite's write lock
    console_engine: bool = True  # the console runs the engine while no ggnet serve does (as root)

    # the HTTP API (on ggnet serve's listener, under /api/v1)
    api_token_minutes: float = Field(default=15.0, gt=0)  # lifetime of an access token (JWT)
    api_refresh_days: float = Field(default=7.0, gt=0)  # lifetime of a refresh token (rotated on use)
    api_rate_per_minute: int = Field(default=600, ge=1)  # requests per access token
    api_login_rate_per_minute: int = Field(default=10, ge=1)  # login attempts per client address, and per account
    # API requests worked on at once (boot requests never wait; one process, one event loop: with 2 the
    # API answered no faster and boot requests under API load took 1.3x their time alone, with 1 1.1x)
    api_concurrency: int = Field(default=1, ge=1)
    api_max_body: int | str = "2M"  # largest request body (image uploads stream and are exempt)
    api_upload_max: int | str = "2T"  # largest image upload
    api_import_dirs: str = ""  # server directories images may be imported from by path (comma-separated)
    api_trusted_hosts: str = ""  # Host headers accepted (comma-separated; empty: any)
    api_cors_origins: str = ""  # origins allowed cross-origin (comma-separated; empty: none)
    api_trusted_proxies: str = ""  # reverse proxies whose X-Forwarded-For/-Proto are believed
    metrics_networks: str = ""  # networks allowed to read /metrics (comma-separated CIDRs; empty: any)
    tls_cert: Path | None = None  # with tls_key: ggnet serve also listens with TLS on https_address
    tls_key: Path | None = None
    https_address: str = "0.0.0.0:8443"

    # console
    idle_lock_minutes: float = 15
    refresh_seconds: float = 2.0
    keys: dict[str, str] = Field(default_factory=dict)
    import_dir: Path | None = None  # where the console's file picker starts before it has been used

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser()
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'ggnet.db'}"
        if self.log_file is None:
            self.log_file = self.data_dir / "ggnet.log"
        if self.tftp_root is None:
            self.tftp_root = self.data_dir / "tftp"
        _ = self.portal_address  # refuse a malformed GGNET_PORTAL when settings are read
        _ = self.http_listen  # likewise GGNET_HTTP_ADDRESS
        for key in ("reserved_space", "api_max_body", "api_upload_max"):
            try:
                setattr(self, key, parse_size(getattr(self, key)))
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        if not self.api_import_dirs:
            self.api_import_dirs = str(self.data_dir / "incoming")
        for key in ("api_trusted_proxies", "metrics_networks"):
            _ = _networks(key, getattr(self, key))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: give both tls_cert and tls_key, or neither")
        if self.tls_cert is not None:
            _ = self.https_listen
        name = str(self.server_name).strip().lower()
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,62})", name):
            raise ValueError("server_name: must be 1-64 letters, digits, dots and hyphens")
        self.server_name = name
        from .validation import normalize_iqn

        try:
            self.iqn_base = normalize_iqn(self.iqn_base)
        except ValueError as exc:
            raise ValueError(f"iqn_base: {exc}") from None
        return self

    @property
    def portal_address(self) -> tuple[str, int]:
        """GGNET_PORTAL as (host, port); the port defaults to 3260."""
        from .validation import parse_host_port

        try:
            return parse_host_port(self.portal, 3260, "0.0.0.0:3260")
        except ValueError as exc:
            raise ValueError(f"portal: {exc}") from None

    @property
    def http_listen(self) -> tuple[str, int]:
        """GGNET_HTTP_ADDRESS as (host, port); the port defaults to 8067."""
        from .validation import parse_host_port

        try:
            return parse_host_port(self.http_address, 8067, "0.0.0.0:8067")
        except ValueError as exc:
            raise ValueError(f"http_address: {exc}") from None

    @property
    def https_listen(self) -> tuple[str, int]:
        from .validation import parse_host_port

        try:
            return parse_host_port(self.https_address, 8443, "0.0.0.0:8443")
        except ValueError as exc:
            raise ValueError(f"https_address: {exc}") from None

    @property
    def api_import_roots(self) -> list[Path]:
        return [Path(p).expanduser() for p in split_list(self.api_import_dirs)]

    @property
    def metrics_allowed(self) -> list[Any]:
        return _networks("metrics_networks", self.metrics_networks)

    @property
    def reserved_bytes(self) -> int:
        return int(self.reserved_space)

    @property
    def boot_host(self) -> str | None:
        """The server address written into boot scripts: GGNET_BOOT_ADDRESS, else the portal host
        (None when the portal listens on every address and no boot address is set)."""
        if self.boot_address:
            return self.boot_address
        host = self.portal_address[0]
        return None if host == "0.0.0.0" else host

    @property
    def database_kind(self) -> str:
        return "PostgreSQL" if self.database_url.startswith("postgresql") else "SQLite"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if _use_environment.get():
            sources.append(env_settings)
        file_values = _file_values.get()
        if file_values:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=file_values))
        return tuple(sources)


# what load_settings hands the sources above (the file is read once, by load_settings)
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("ggnet_config_file_values", default=None)
_use_environment: ContextVar[bool] = ContextVar("ggnet_config_use_environment", default=True)


def split_list(value: str) -> list[str]:
    """A comma-separated setting as its items."""
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def _networks(key: str, value: str) -> list[Any]:
    import ipaddress

    try:
        return [ipaddress.ip_network(item, strict=False) for item in split_list(value)]
    except ValueError as exc:
        raise ValueError(
            f"{key}: must be addresses or networks such as 10.0.0.0/8, separated by commas ({exc})"
        ) from None


def _config_file_in_use(config_file: str | Path | None) -> Path | None:
    if config_file:
        return Path(config_file)
    env = os.environ.get("GGNET_CONFIG")
    if env:
        return Path(env)
    candidate = default_config_file()
    return candidate if candidate.is_file() else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings; ``config_file`` (from ``--config``) wins over ``GGNET_CONFIG``.

    The file is checked on its own first, so a bad value in it is reported even when the
    environment overrides the same setting.
    """
    from .errors import Invalid
    from .validation import shown

    path = _config_file_in_use(config_file)
    values = _read_config_file(path) if path is not None else {}
    file_token = _file_values.set(values)
    try:
        if values:
            env_token = _use_environment.set(False)
            try:
                Settings()
            except ValidationError as exc:
                raise Invalid("config", f"bad setting in {shown(str(path), 300)}: {_problems(exc)}") from None
            finally:
                _use_environment.reset(env_token)
        try:
            return Settings(**overrides)
        except ValidationError as exc:
            raise Invalid("config", f"bad setting in the environment: {_problems(exc)}") from None
        except SettingsError as exc:  # e.g. GGNET_KEYS that is not JSON
            raise Invalid("config", f"bad setting in the environment: {_settings_error(exc)}") from None
    finally:
        _file_values.reset(file_token)


def _problems(exc: ValidationError) -> str:
    from .validation import errors_by_field

    return "; ".join(v if k == "input" else f"{k}: {v}" for k, v in errors_by_field(exc).items())


def _settings_error(exc: SettingsError) -> str:
    import re

    match = re.search(r'field "([a-z_]+)"', str(exc))
    if match and match.group(1) in Settings.model_fields:
        return f"GGNET_{match.group(1).upper()} must be JSON, such as {_JSON_EXAMPLES.get(match.group(1), '{}')}"
    return "a GGNET_* variable could not be read; check those that hold JSON"


_JSON_EXAMPLES = {"keys": '{"machines.add": "n"}'}


def _read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file's settings. A misspelt setting is an error, not silently ignored (unlike
    stray GGNET_* variables). Read with the untrusted-input opener: a regular file, capped."""
    import tomllib

    from .errors import Invalid
    from .files import read_input_text
    from .validation import shown

    where = shown(str(path), 300)
    text = read_input_text(path, field="config", limit=CONFIG_MAX_BYTES)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Invalid("config", f"{where} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        names = ", ".join(shown(name, 40) for name in unknown[:10])
        raise Invalid("config", f"{where}: unknown setting(s) {names}")
    return data
