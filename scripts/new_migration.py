#!/usr/bin/env python3
"""Create the next schema migration from the models, and point SCHEMA_HEAD at it.

    .venv/bin/python scripts/new_migration.py "add auth tokens"

Brings a scratch SQLite database to the current head, lets alembic autogenerate
migrations/versions/NNNN_<message>.py from the difference with core/models.py, and sets
SCHEMA_HEAD in core/db.py (the head every command checks without loading alembic) to the new
revision. Read the generated file before committing: autogenerate misses renames, server
defaults and data changes, and the tests (tests/test_migrations.py) run it on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        sys.exit(__doc__)
    message = sys.argv[1].strip()
    from alembic import command

    from core.db import Database, _alembic_config, _script

    numbers = [int(r.revision) for r in _script().walk_revisions() if r.revision.isdigit()]
    revision = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory(prefix="ggnet-migration-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'scratch.db'}"

        async def to_head() -> None:
            db = Database(url)
            try:
                await db.upgrade()
            finally:
                await db.dispose()

        asyncio.run(to_head())
        os.environ["GGNET_DATABASE_URL"] = url  # migrations/env.py connects through the settings
        script = command.revision(_alembic_config(), message=message, autogenerate=True, rev_id=revision)
    created = [s.path for s in (script if isinstance(script, list) else [script]) if s is not None]
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():  # the template's output, in the project's style (scripts/test.sh checks it)
        subprocess.run([str(ruff), "check", "--fix", "-q", *created], check=False)
        subprocess.run([str(ruff), "format", "-q", *created], check=False)
    db_py = ROOT / "core" / "db.py"
    text, count = re.subn(r'^SCHEMA_HEAD = "[^"]*"$', f'SCHEMA_HEAD = "{revision}"', db_py.read_text(), flags=re.M)
    if count != 1:
        sys.exit(f"could not find the SCHEMA_HEAD line in {db_py}; set it to {revision!r} by hand")
    db_py.write_text(text)
    print(f"SCHEMA_HEAD = {revision!r} in core/db.py")


if __name__ == "__main__":
    main()
