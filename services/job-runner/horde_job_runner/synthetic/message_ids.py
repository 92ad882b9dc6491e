"""Message ids of a shard's `batch.shard.ready` / `batch.shard.completed`, derived from its request
(docs/synthetic-batch.md §1).

Derived rather than random so that a re-sent ready/completed message is deduplicated by its
consumer instead of being counted twice.
"""

from __future__ import annotations

import uuid

__all__ = ["completed_message_id", "ready_message_id"]

_IDS = uuid.UUID("8d5b7c1e-3f0a-4c8e-9a51-6f2f3c4b1d20")


def ready_message_id(shard_message_id: uuid.UUID | None, batch_id: int, shard_index: int) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"{shard_message_id or batch_id}/{shard_index}/ready")


def completed_message_id(shard_message_id: uuid.UUID | None, batch_id: int, shard_index: int) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"{shard_message_id or batch_id}/{shard_index}/completed")
