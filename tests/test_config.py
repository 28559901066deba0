"""Settings: GGNET_* variables, a TOML file (--config or GGNET_CONFIG), precedence and defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import load_settings
from core.errors import Invalid


def test_defaults_live_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGNET_DATA_DIR", str(tmp_path / "d"))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "d"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'ggnet.db'}"
    assert settings.log_file == tmp_path / "d" / "ggnet.log"
    assert settings.database_kind == "SQLite"


def test_default_data_dir(tmp_path: Path) -> None:
    # root gets the system directory; anyone else the XDG data directory (conftest points XDG into tmp)
    expected = Path("/var/lib/ggnet") if os.geteuid() == 0 else Path(os.environ["XDG_DATA_HOME"]) / "ggnet"
    assert load_settings().data_dir == expected


def test_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGNET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GGNET_DATABASE_URL", "postgresql+asyncpg://u:p@db.example/ggnet")
    monkeypatch.setenv("GGNET_LOG_FILE", str(tmp_path / "elsewhere.log"))
    monkeypatch.setenv("GGNET_USER", "oscar")
    monkeypatch.setenv("GGNET_PASSWORD", "s3cret-pass")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://u:p@db.example/ggnet"
    assert settings.database_kind == "PostgreSQL"
    assert settings.log_file == tmp_path / "elsewhere.log"
    assert (settings.user, settings.password) == ("oscar", "s3cret-pass")
    assert "s3cret-pass" not in repr(settings)


def _toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_file_by_option_and_by_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_option = _toml(tmp_path / "a.toml", f'data_dir = "{tmp_path / "a"}"\nrefresh_seconds = 5\n')
    by_env = _toml(tmp_path / "b.toml", f'data_dir = "{tmp_path / "b"}"\n')
    monkeypatch.setenv("GGNET_CONFIG", str(by_env))
    assert load_settings().data_dir == tmp_path / "b"
    settings = load_settings(by_option)  # --config wins over GGNET_CONFIG
    assert settings.data_dir == tmp_path / "a"
    assert settings.refresh_seconds == 5
    assert settings.database_url.endswith(f"{tmp_path / 'a' / 'ggnet.db'}")


def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _toml(tmp_path / "g.toml", 'user = "from-file"\nportal = "10.0.0.1:3260"\n')
    monkeypatch.setenv("GGNET_USER", "from-env")
    settings = load_settings(path)
    assert settings.user == "from-env"
    assert settings.portal == "10.0.0.1:3260"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("data_dir = \n", "is not valid TOML"),
        ('refresh_seconds = "often"\n', "refresh_seconds"),
        ('target_backend = "iet"\n', "target_backend"),
        ('databse_url = "sqlite+aiosqlite:///x.db"\n', "unknown setting(s) databse_url"),
    ],
)
def test_bad_file_is_a_clear_error(tmp_path: Path, text: str, phrase: str) -> None:
    path = _toml(tmp_path / "bad.toml", text)
    with pytest.raises(Invalid) as caught:
        load_settings(path)
    assert list(caught.value.errors) == ["config"]
    assert phrase in caught.value.message
    assert "\n" not in caught.value.message


def test_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Invalid, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    monkeypatch.setenv("GGNET_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(Invalid, match="gone.toml does not exist"):
        load_settings()


def test_bad_environment_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGNET_TARGET_BACKEND", "iet")
    with pytest.raises(Invalid, match="target_backend"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("mysql://root@db/ggnet", "must use SQLite (sqlite+aiosqlite://) or PostgreSQL"),
        ("postgresql+psycopg2://u@db/ggnet", "not postgresql+psycopg2"),
        ("not a url", "must be a URL such as"),
    ],
)
def test_unsupported_database_url_is_a_clear_error(url: str, phrase: str) -> None:
    from core.db import Database

    with pytest.raises(Invalid) as caught:
        Database(url)
    assert list(caught.value.errors) == ["database_url"] and phrase in caught.value.message


async def test_plain_urls_get_the_async_drivers(tmp_path: Path) -> None:
    from core.db import Database

    db = Database(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        assert db.engine.url.drivername == "sqlite+aiosqlite"
        await db.upgrade()  # and it works
    finally:
        await db.dispose()
    pg = Database("postgresql://u:p@db.example/ggnet")
    assert pg.engine.url.drivername == "postgresql+asyncpg"
    await pg.dispose()


def test_unwritable_places_are_clear_errors(tmp_path: Path) -> None:
    from core.db import Database
    from core.errors import BackendUnavailable
    from core.log import configure_logging

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(Invalid, match="log_file: cannot write"):
        configure_logging(blocker / "ggnet.log")
    with pytest.raises(BackendUnavailable, match="cannot open the database file .*: not a directory"):
        Database(f"sqlite+aiosqlite:///{blocker / 'sub' / 'ggnet.db'}")
