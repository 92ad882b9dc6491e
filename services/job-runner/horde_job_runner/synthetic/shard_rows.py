"""`ShardRows`: everything one shard writes, as plain rows (docs/synthetic-batch.md §7).

A value of its own, below both the phase that builds it (`records`) and the store that writes it
(`persistence`), so that `model.ShardStore` can name it without importing the store. Beside it
`consume_sql`, the statement that links the LLM jobs' samples to their rows (`persistence` runs it
in the shard's transaction, `llm_sample_store.mark_used` on its own).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from horde_common.telemetry import SystemEventRecord

__all__ = ["ShardRows", "consume_sql"]


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
    # LLM jobs' prompt samples -> their jobs' uuids: linked in the same transaction as the job rows
    # (docs/synthetic-batch.md, "LLM jobs": a sample is consumed exactly when its job is stored).
    consumed_samples: dict[int, uuid.UUID] = field(default_factory=dict)

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


def consume_sql(jobs: str, sample_ids: str, job_uuids: str) -> str:
    """The `UPDATE` that links each sample to its stored job: `jobs` is the table (or a CTE with
    `id, job_uuid`) the job rows are in, `sample_ids`/`job_uuids` the placeholders of two parallel
    arrays. A sample already used keeps its job: it is never given to a second one, and under
    concurrent writers the row lock and the re-checked `IS NULL` let exactly one of them link it.
    A linked sample is always taken too (`taken_at` kept if `take` set it), so "not taken" alone
    means unused.
    """
    return (
        "UPDATE prompt_samples AS s SET synthetic_job_id = j.id, taken_at = coalesce(s.taken_at, now()) "
        f"FROM unnest(CAST({sample_ids} AS bigint[]), CAST({job_uuids} AS uuid[])) AS m(sample_id, job_uuid) "
        f"JOIN {jobs} AS j ON j.job_uuid = m.job_uuid "
        "WHERE s.id = m.sample_id AND s.synthetic_job_id IS NULL"
    )
