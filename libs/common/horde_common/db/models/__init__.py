"""All ORM models; importing this package registers every table on `Base.metadata` (for Alembic)."""

from horde_common.db.models.bus import OutboxMessage, ProcessedMessage

__all__ = ["OutboxMessage", "ProcessedMessage"]
