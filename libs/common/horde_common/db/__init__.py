"""Database access: one Postgres, one schema, one Alembic history (see `migrations/`).

`Base`, `create_engine` and `session_factory` are re-exported lazily (PEP 562 `__getattr__`), so
that importing a module of this package (e.g. to find the migration scripts) does not import
SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from horde_common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from horde_common.db.base import Base, create_engine, session_factory

_EXPORTS = dict.fromkeys(("Base", "create_engine", "session_factory"), "base")


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["Base", "create_engine", "session_factory"]
