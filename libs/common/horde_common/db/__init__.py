"""Database access: one Postgres, one schema, one Alembic history (see `migrations/`)."""

from horde_common.db.base import Base, create_engine, session_factory

__all__ = ["Base", "create_engine", "session_factory"]
