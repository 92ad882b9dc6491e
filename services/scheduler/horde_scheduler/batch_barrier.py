"""The batch's release barrier and its completion: the bodies of the scheduler's two bus handlers
(`app.py`, docs/scheduling.md §8.3).

Each takes the handler's session and returns the messages to publish; the bus writes them to the
outbox in the same transaction, so a release or a completion commits with the shard state that
caused it. The batch row's lock (`coordinator_rows.lock_batch`) serialises every report of a batch
across scheduler replicas: the last shard to arrive is seen by exactly one of them.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.bus.messages import BatchCompleted, BatchReleased, BatchShardCompleted, BatchShardReady
from horde_scheduler import coordinator_rows as rows
from horde_scheduler.coordination import ShardState, after_completed, after_ready, all_over, should_release

log = structlog.get_logger(__name__)


async def shard_ready(session: AsyncSession, msg: BatchShardReady, *, now: datetime) -> list[BatchReleased]:
    """`batch.shard.ready`: mark the shard ready; release the batch when it was the last one
    (docs/scheduling.md §8.3). Idempotent: a repeated report changes nothing, the release is
    published once (its outbox row is the marker, checked under the batch's row lock)."""
    batch = await rows.lock_batch(session, msg.batch_id)
    shards = await rows.shards_of(session, msg.batch_id) if batch is not None else []
    shard = next((s for s in shards if s.shard_index == msg.shard_index), None)
    if batch is None or shard is None:
        log.warning(
            "batch.shard.ready for an unknown shard: ignored", batch_id=msg.batch_id, shard=msg.shard_index
        )
        return []
    state = ShardState(shard.state)
    if after_ready(state) is not state:
        shard.state = ShardState.READY.value
        shard.ready_at = now
        shard.ready_executor_count = msg.ready_executor_count
    states = [ShardState(s.state) for s in shards]
    if batch.completed_at is None and should_release(
        states, released=await rows.release_published(session, batch.id), release_deadline=None, now=now
    ):
        log.info("synthetic batch released: every shard is ready", batch_id=batch.id, shards=len(shards))
        return [BatchReleased(batch_id=batch.id, released_at=now)]
    return []


async def shard_completed(
    session: AsyncSession, msg: BatchShardCompleted, *, now: datetime
) -> list[BatchReleased | BatchCompleted]:
    """`batch.shard.completed`: mark the shard completed (failed when `ok` is false); complete the
    batch when it was the last one (docs/scheduling.md §8.3). A report for a shard already over —
    a repeat, or one the loop failed at its deadline — is ignored."""
    batch = await rows.lock_batch(session, msg.batch_id)
    shards = await rows.shards_of(session, msg.batch_id) if batch is not None else []
    shard = next((s for s in shards if s.shard_index == msg.shard_index), None)
    if batch is None or shard is None:
        log.warning(
            "batch.shard.completed for an unknown shard: ignored",
            batch_id=msg.batch_id,
            shard=msg.shard_index,
        )
        return []
    new = after_completed(ShardState(shard.state), msg.ok)
    if new is None:
        log.warning(
            "batch.shard.completed for a shard already over: ignored",
            batch_id=msg.batch_id,
            shard=msg.shard_index,
            state=shard.state,
            ok=msg.ok,
        )
        return []
    shard.state = new.value
    shard.completed_at = now
    shard.error = "" if msg.ok else (msg.error or "failed")
    out: list[BatchReleased | BatchCompleted] = []
    if batch.completed_at is not None:
        return out
    states = [ShardState(s.state) for s in shards]
    # A shard that failed before reporting ready passes the barrier by completing.
    if should_release(
        states, released=await rows.release_published(session, batch.id), release_deadline=None, now=now
    ):
        out.append(BatchReleased(batch_id=batch.id, released_at=now))
    if all_over(states):
        out.append(await rows.mark_completed(session, batch, now))
        log.info("synthetic batch completed", batch_id=batch.id, shards=len(shards))
    return out
