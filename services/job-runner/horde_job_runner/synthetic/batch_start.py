"""`read_batch_start`: what a shard reads before it talks to any miner (docs/synthetic-batch.md §1,
stage `_db_get_previous_online_executor_count`).

The batch's uuid (every event carries it), the previous batch's online counts (the manifest
multiplier, docs/miner-protocol.md §3.3 and §3.15), the dynamic values when none were injected, and
whether INSUFFICIENT_PROMPTS was already recorded within the last day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from horde_common.telemetry import SystemEventSubtype, SystemEventType

if TYPE_CHECKING:
    from horde_job_runner.synthetic.model import DynamicValues, ShardRequest, ShardStore
    from horde_job_runner.synthetic.shard_services import EventLog

__all__ = ["INSUFFICIENT_PROMPTS_EVERY_S", "BatchStart", "ValidatorStageError", "read_batch_start"]

# INSUFFICIENT_PROMPTS is recorded at most once a day (docs/miner-protocol.md §3.6): it says the same
# thing every batch until prompt samples exist.
INSUFFICIENT_PROMPTS_EVERY_S = 24 * 3600.0


class ValidatorStageError(RuntimeError):
    """Raised by a stage that cannot go on for a reason of ours."""


@dataclass(frozen=True)
class BatchStart:
    """What the shard knows before its first connection.

    `previous_online[miner][class]`: the latest earlier batch's online count; a missing entry means
    "absent", which is not 0.
    """

    dynamic: DynamicValues
    previous_online: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    insufficient_prompts_recently: bool = False


async def read_batch_start(
    store: ShardStore,
    request: ShardRequest,
    *,
    dynamic: DynamicValues | None,
    db_timeout: float,
    events: EventLog,
) -> BatchStart:
    """Read the start of the batch within `db_timeout`; the batch's uuid goes into `events` at once.

    `dynamic`: the injected values (None: read them from the store). Raises `ValidatorStageError`
    if the batch does not exist.
    """
    hotkeys = [m.hotkey for m in request.miners]
    async with asyncio.timeout(db_timeout):
        batch_uuid = await store.batch_uuid(request.batch_id)
        if batch_uuid is None:
            raise ValidatorStageError(f"batch {request.batch_id} does not exist")
        events.set_batch_uuid(str(batch_uuid))
        previous_online = await store.previous_online_counts(request.batch_id, hotkeys)
        values = dynamic if dynamic is not None else await store.dynamic_values()
        recently = await store.recent_event_exists(
            str(SystemEventType.VALIDATOR_TELEMETRY),
            str(SystemEventSubtype.INSUFFICIENT_PROMPTS),
            timedelta(seconds=INSUFFICIENT_PROMPTS_EVERY_S),
        )
    return BatchStart(values, previous_online, recently)
