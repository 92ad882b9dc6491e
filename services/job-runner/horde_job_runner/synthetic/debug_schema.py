"""Is the database already at the packaged migration head? Answered without importing Alembic.

The debug command is usually run again and again on a database already migrated: Alembic costs
~0.6 s to import and ~0.2 s to find that there is nothing to do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["head_revisions", "schema_at_head"]


def head_revisions() -> set[str]:
    """The head revisions of the packaged migrations, read from the scripts without Alembic.

    Alembic costs ~0.6 s to import and ~0.2 s to find that there is nothing to do; the command is
    usually run again and again on a database already migrated. Only the module-level
    `revision = ...` / `down_revision = ...` lines are read (parsing the whole scripts took ~0.1 s);
    any value this cannot read makes the set empty, and Alembic then runs as usual.
    """
    import ast
    import re
    from pathlib import Path

    import horde_common.db

    assignment = re.compile(r"^(revision|down_revision)\b[^=\n]*=(.*)$", re.MULTILINE)
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (Path(horde_common.db.__file__).parent / "migrations" / "versions").glob("*.py"):
        values: dict[str, object] = {}
        for name, rhs in assignment.findall(script.read_text()):
            try:
                values[name] = ast.literal_eval(rhs.split("#", 1)[0].strip())
            except (ValueError, SyntaxError):
                return set()
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str) or "down_revision" not in values:
            return set()
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
        elif down is not None:
            return set()
    return revisions - parents


async def schema_at_head(engine: Any) -> bool:
    """True when the database's Alembic version is the packaged head (no migration to run)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    heads = head_revisions()
    if not heads:
        return False
    try:
        async with engine.connect() as conn:
            stored = set((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
    except DBAPIError:  # no alembic_version table yet: a new database
        return False
    return stored == heads
