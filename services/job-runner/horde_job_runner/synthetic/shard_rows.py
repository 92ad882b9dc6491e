"""`ShardRows`: everything one shard writes, as plain rows (docs/synthetic-batch.md §7).

A value of its own, below both the phase that builds it (`records`) and the store that writes it
(`persistence`), so that `model.ShardStore` can name it without importing the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from horde_common.telemetry import SystemEventRecord

__all__ = ["ShardRows"]


@dataclass
class ShardRows:
    """Everything a shard writes, ready for bulk inserts."""

    batch_id: int
    jobs: list[dict[str, Any]] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)
    started_receipts: list[dict[str, Any]] = field(default_factory=list)
    accepted_receipts: list[dict[str, Any]] = field(default_factory=list)
    finished_receipts: list[dict[str, Any]] = field(default_factory=list)
    events: list[SystemEventRecord] = field(default_factory=list)
    accepting_results_until: datetime | None = None
    complete_batch: bool = False  # debug batches: mark the batch completed too

    @property
    def row_count(self) -> int:
        return (
            len(self.jobs)
            + len(self.manifests)
            + len(self.started_receipts)
            + len(self.accepted_receipts)
            + len(self.finished_receipts)
            + len(self.events)
        )
