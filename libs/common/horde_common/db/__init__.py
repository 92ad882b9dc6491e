"""Database access: one Postgres, one schema, one Alembic history (see `migrations/`).

`Base`, `create_engine` and `session_factory` are re-exported lazily (PEP 562 `__getattr__`), so
that importing a module of this package (e.g. to find the migration scripts) does not import
SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from horde_common.db.base import Base, create_engine, session_factory

_EXPORTS = frozenset({"Base", "create_engine", "session_factory"})


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from horde_common.db import base

    value = getattr(base, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = ["Base", "create_engine", "session_factory"]
