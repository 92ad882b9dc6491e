"""A job's status updates reach the facilitator in the order the job-runner made them, by their
per-job `seq` (docs/organic.md, "Facilitator gateway"), whatever order the bus delivers them in.

The queue tests drive `StatusQueue` as the link does (one drainer calling `next` then `written`),
with deliveries submitted in the order the test chooses; the ledger test uses the real Postgres.
Waits are bounded (`asyncio.wait_for`); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from horde_common.bus.messages import OrganicJobStatus
from horde_facilitator_gateway.ledger import StatusLedger
from horde_facilitator_gateway.outbound import ORDER_HOLD_S, PendingUpdate, StatusQueue

pytestmark = pytest.mark.timeout(60)

WAIT_S = 15.0
"""Every wait here ends in well under a second when the code works; this only bounds a failure."""
LONG_HOLD_S = 60.0
"""A hold the test never waits out: an update it lets through went because of its order alone."""


def status(job: uuid.UUID, name: str, seq: int, **extra: Any) -> OrganicJobStatus:
    return OrganicJobStatus(job_uuid=job, status=name, comment=f"{name} {seq}", seq=seq, **extra)  # type: ignore[arg-type]


async def settle() -> None:
    """Two turns of the loop (no timed wait): submitted tasks and a waiting drainer reach their awaits."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def write_next(queue: StatusQueue) -> PendingUpdate:
    """What the link's drainer does with one update: take it, write it, mark it written."""
    update = await asyncio.wait_for(queue.next(), WAIT_S)
    queue.written(update)
    return update


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_completed_delivered_before_its_accepted_goes_after_it() -> None:
    queue = StatusQueue(hold_s=LONG_HOLD_S)
    job = uuid.uuid4()
    accepted, completed = status(job, "accepted", 1), status(job, "completed", 2)
    final = asyncio.create_task(queue.submit(completed, WAIT_S, WAIT_S))
    drainer = asyncio.create_task(queue.next())
    await settle()
    assert len(queue) == 1 and not drainer.done()  # seq 2 waits for seq 1
    first_task = asyncio.create_task(queue.submit(accepted, WAIT_S, WAIT_S))
    first = await asyncio.wait_for(drainer, WAIT_S)
    queue.written(first)
    second = await write_next(queue)  # at once, far less than the hold
    assert [first.seq, second.seq] == [1, 2]
    assert [first.status.value, second.status.value] == ["accepted", "completed"]
    assert await first_task is True and await final is True


async def test_v2_retry_accepted_delivered_before_the_previous_failed_goes_after_it() -> None:
    """The observed ['accepted', 'accepted', 'failed'] of a retried job: the next attempt's
    `accepted` (3) reached the gateway before the first attempt's `failed` (2)."""
    queue = StatusQueue(hold_s=LONG_HOLD_S)
    job = uuid.uuid4()
    first = asyncio.create_task(queue.submit(status(job, "accepted", 1), WAIT_S, WAIT_S))
    assert (await write_next(queue)).seq == 1
    assert await first is True
    retry = asyncio.create_task(queue.submit(status(job, "accepted", 3), WAIT_S, WAIT_S))
    drainer = asyncio.create_task(queue.next())
    await settle()
    assert not drainer.done()  # 3 does not follow 1: held
    failed = asyncio.create_task(queue.submit(status(job, "failed", 2), WAIT_S, WAIT_S))
    got = await asyncio.wait_for(drainer, WAIT_S)
    queue.written(got)
    then = await write_next(queue)
    assert [(got.status.value, got.seq), (then.status.value, then.seq)] == [("failed", 2), ("accepted", 3)]
    assert await failed is True and await retry is True


async def test_the_lower_seq_goes_first_even_when_its_clock_says_otherwise() -> None:
    """Both pending (a link outage): the job's order is its `seq`, not the `sent_at` clocks (a
    resumed attempt's `accepted` may come from another process with a clock ahead)."""
    queue = StatusQueue(hold_s=LONG_HOLD_S)
    job = uuid.uuid4()
    now = datetime.now(UTC)
    accepted = status(job, "accepted", 1, sent_at=now + timedelta(seconds=5))
    completed = status(job, "completed", 2, sent_at=now)
    tasks = [asyncio.create_task(queue.submit(m, WAIT_S, WAIT_S)) for m in (completed, accepted)]
    await settle()
    assert [(await write_next(queue)).seq for _ in range(2)] == [1, 2]
    assert [await t for t in tasks] == [True, True]


async def test_a_failed_without_accepted_goes_after_the_hold() -> None:
    hold = 0.2
    queue = StatusQueue(hold_s=hold)
    job = uuid.uuid4()
    started = time.monotonic()
    task = asyncio.create_task(queue.submit(status(job, "failed", 2), WAIT_S, WAIT_S))
    update = await write_next(queue)
    assert update.seq == 2 and await task is True
    assert time.monotonic() - started >= hold * 0.9  # held for an `accepted` that never came
    assert queue.highest_written(job) == 2


async def test_the_default_hold_is_a_quarter_second() -> None:
    assert ORDER_HOLD_S == 0.25


async def test_a_lower_seq_after_a_higher_one_was_written_is_stale() -> None:
    queue = StatusQueue(hold_s=0.05)
    job = uuid.uuid4()
    task = asyncio.create_task(queue.submit(status(job, "failed", 2), WAIT_S, WAIT_S))
    assert (await write_next(queue)).seq == 2 and await task is True
    assert await queue.submit(status(job, "accepted", 1), WAIT_S, WAIT_S) is False  # too late: dropped
    assert await queue.submit(status(job, "failed", 2), WAIT_S, WAIT_S) is False  # a copy of a sent seq
    retry = asyncio.create_task(queue.submit(status(job, "accepted", 3), WAIT_S, WAIT_S))
    assert (await write_next(queue)).seq == 3 and await retry is True


async def test_a_stale_update_already_in_the_queue_is_dropped_there() -> None:
    """Both copies of a resumed `accepted` (same seq) in the queue: the second is not written."""
    queue = StatusQueue(hold_s=LONG_HOLD_S)
    job = uuid.uuid4()
    first, copy = status(job, "accepted", 1), status(job, "accepted", 1)
    tasks = [asyncio.create_task(queue.submit(m, WAIT_S, WAIT_S)) for m in (first, copy)]
    await settle()
    assert (await write_next(queue)).message_id == first.message_id
    drainer = asyncio.create_task(queue.next())  # the drainer's next turn finds the copy stale
    assert [await asyncio.wait_for(t, WAIT_S) for t in tasks] == [True, False]
    assert len(queue) == 0 and not drainer.done()
    await cancel(drainer)


async def test_a_held_update_holds_back_only_its_own_job() -> None:
    queue = StatusQueue(hold_s=LONG_HOLD_S)
    held_job, other_job = uuid.uuid4(), uuid.uuid4()
    held = status(held_job, "failed", 2)  # the oldest in the queue, waiting for an `accepted`
    held_task = asyncio.create_task(queue.submit(held, 120.0, WAIT_S))
    later = asyncio.create_task(queue.submit(status(held_job, "accepted", 3), 120.0, WAIT_S))
    others = [status(other_job, "accepted", 1), status(other_job, "completed", 2)]
    tasks = [asyncio.create_task(queue.submit(m, WAIT_S, WAIT_S)) for m in others]
    await settle()
    written = [await write_next(queue) for _ in range(2)]
    assert [(u.job_uuid, u.seq) for u in written] == [(other_job, 1), (other_job, 2)]
    assert [await t for t in tasks] == [True, True]
    assert len(queue) == 2 and not held_task.done() and not later.done()
    await cancel(held_task)
    await cancel(later)


async def test_the_highest_written_seq_survives_a_gateway_restart(sessions: Any) -> None:
    """The ledger keeps each update's `seq`: a new gateway (new ledger reader, empty queue) knows a
    job's order from it: a copy or an older update is stale, the next one goes without a hold."""
    job = uuid.uuid4()
    before = StatusLedger(sessions)
    sent = [status(job, "accepted", 1), status(job, "failed", 2), status(job, "accepted", 3)]
    for msg in sent:
        await before.record(msg.message_id, job, msg.status, msg.sent_at, msg.seq)

    after = StatusLedger(sessions)  # the restarted gateway
    assert await after.check(sent[2]) == ("duplicate", 3)
    assert await after.check(status(job, "failed", 2)) == ("stale", 3)  # a new message, old place
    assert await after.check(status(uuid.uuid4(), "accepted", 1)) == ("new", 0)
    nxt = status(job, "completed", 4)
    outcome, highest = await after.check(nxt)
    assert (outcome, highest) == ("new", 3)

    queue = StatusQueue(hold_s=LONG_HOLD_S)
    task = asyncio.create_task(queue.submit(nxt, WAIT_S, WAIT_S, highest))
    assert (await write_next(queue)).seq == 4  # follows the ledger's 3: no hold
    assert await task is True
    await after.record(nxt.message_id, job, nxt.status, nxt.sent_at, nxt.seq)
    assert await StatusLedger(sessions).check(status(job, "completed", 4)) == ("stale", 4)


async def test_an_update_without_seq_keeps_the_sent_at_rule(sessions: Any) -> None:
    """A job-runner from before `seq` (0): stale only when made before a final that went out."""
    job = uuid.uuid4()
    ledger = StatusLedger(sessions)
    old = status(job, "accepted", 0)
    final = status(job, "completed", 0)
    assert old.sent_at < final.sent_at
    await ledger.record(final.message_id, job, final.status, final.sent_at)
    assert await ledger.check(old) == ("stale", 0)
    assert await ledger.check(status(job, "accepted", 0)) == ("new", 0)
