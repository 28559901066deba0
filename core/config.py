"""Settings: GGNET_* environment variables, then an optional TOML file.

Precedence (highest first): explicit arguments, environment, the TOML file named by
``--config``/``GGNET_CONFIG``, defaults.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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
    tgt_control_port: int = 0
    portal: str = "0.0.0.0:3260"
    boot_address: str | None = None
    iqn_base: str = "iqn.2024-01.lan.ggnet"
    writeback_driver: Literal["auto", "reflink", "copy"] = "auto"
    wol_address: str = "255.255.255.255:9"

    # the boot engine (ggnet serve)
    server_name: str = Field(default_factory=default_server_name)
    http_address: str = "0.0.0.0:8067"  # where ggnet serve listens (boot requests, health, API)
    converge_seconds: float = Field(default=30.0, gt=0)  # a pass at least this often
    reserved_space: int | str = "10G"  # below this much free space, new boots are refused
    writeback_idle_hours: float = Field(default=12.0, ge=0)  # fresh writebacks unused this long are discarded
    console_engine: bool = True  # the console runs the engine while no ggnet serve does (as root)

    # the HTTP API (on ggnet serve's listener, under /api/v1)
    api_token_minutes: float = Field(default=15.0, gt=0)  # lifetime of an access token (JWT)
    api_refresh_days: float = Field(default=7.0, gt=0)  # lifetime of a refresh token (rotated on use)
    api_rate_per_minute: int = Field(default=600, ge=1)  # requests per access token
    api_login_rate_per_minute: int = Field(default=10, ge=1)  # login attempts per client address, and per account
    api_concurrency: int = Field(default=2, ge=1)  # API requests worked on at once (boot requests never wait)
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_in_use()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


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


_explicit_config_file: Path | None = None


def _config_file_in_use() -> Path | None:
    if _explicit_config_file is not None:
        return _explicit_config_file
    env = os.environ.get("GGNET_CONFIG")
    if env:
        return Path(env)
    candidate = default_config_file()
    return candidate if candidate.is_file() else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings; ``config_file`` (from ``--config``) wins over ``GGNET_CONFIG``."""
    from .errors import Invalid

    global _explicit_config_file
    _explicit_config_file = Path(config_file) if config_file else None
    path: Path | None = None
    try:
        path = _config_file_in_use()
        if path is not None:
            if not path.is_file():
                raise Invalid("config", f"file {path} does not exist")
            _refuse_unknown_keys(path)
        return Settings(**overrides)
    except ValidationError as exc:
        from .validation import errors_by_field

        where = f"in {path} or the environment" if path else "in the environment"
        problems = "; ".join(v if k == "input" else f"{k}: {v}" for k, v in errors_by_field(exc).items())
        raise Invalid("config", f"bad setting {where}: {problems}") from None
    except OSError as exc:
        raise Invalid("config", f"cannot read {path}: {exc.strerror}") from None
    finally:
        _explicit_config_file = None


def _refuse_unknown_keys(path: Path) -> None:
    """A misspelt setting in the file is an error, not silently ignored (unlike stray GGNET_* variables)."""
    import tomllib

    from .errors import Invalid

    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise Invalid("config", f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise Invalid("config", f"{path}: unknown setting(s) {', '.join(unknown)}")
