"""Status updates waiting for the facilitator link, in order (docs/organic.md, "Facilitator gateway").

Each `organic.job.status` delivery puts its update here and waits, bounded, until the link wrote
it to an authenticated socket and recorded it in `facilitator_status_sent` (`ledger.py`); only then
is the bus message acknowledged. The bus gives no order between messages delivered concurrently,
so one job's updates may reach the queue in any order; the queue restores the order the job-runner
made them in:

* by the update's `seq` (`OrganicJobStatus.seq`, per job, strictly increasing in creation order).
  The queue remembers, per job, the highest `seq` written (seeded from the ledger, which keeps it
  across restarts). An update with `seq` at most that is stale: it is not written (`submit` returns
  False), since it would move the facilitator's view of the job back. The next number goes at once;
  a higher one waits, with the job's later updates, until its predecessor was written or for
  `ORDER_HOLD_S` after it reached the queue, then goes anyway: a predecessor may never come (a
  `failed` of an attempt whose miner never accepted has no `accepted` before it);
* an update without `seq` (0, a job-runner from before the field) goes by the message's
  `sent_at`: oldest first; a final status of a job whose `accepted` was not written yet is held up
  to `ORDER_HOLD_S`; an update created before a final status of its job that was written is stale;
* pending updates otherwise go out oldest first by `sent_at`, so updates that piled up while the
  link was down drain in the order they were made. Only a held job waits: the drainer passes over
  it, and every other job's updates go on being written;
* an update that gives up waiting goes back to the bus for a later retry. Pending updates of the
  same job that are newer give up with it, and newer ones arriving later are refused until it was
  sent (at most `BLOCK_S`), so no later update of a job overtakes an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from horde_common.bus.messages import OrganicJobStatus
from horde_common.protocol.facilitator import JobStatus, MinerResponse

BLOCK_S: Final = 300.0
"""How long a job's newer updates wait behind one that went back to the bus. Its retries take about
a minute before the bus dead-letters it; after this the block lapses, so a dead-lettered update
cannot silence its job for ever."""


FINAL_STATUSES: Final = frozenset({"completed", "failed", "rejected"})
"""After one of these the job-runner sends nothing more for the attempt (docs/organic.md §1.4)."""

ORDER_HOLD_S: Final = 0.25
"""How long an update waits in the queue for an earlier update of its job. Concurrent deliveries
reach the queue within milliseconds of each other (one database check each); a quarter second
covers that with a wide margin. Only waited in full when the earlier update does not exist (a
`failed` or `rejected` without an `accepted` before it): an update whose predecessor was written,
the usual case, is not held at all."""

JOBS_REMEMBERED: Final = 10_000
"""Jobs whose newest written update this queue remembers (for order and stale updates); older
ones are covered by the `facilitator_status_sent` check before an update is queued."""


class LinkUnavailable(Exception):
    """No authenticated connection in time: the caller leaves its bus message unacknowledged."""


def miner_response(msg: OrganicJobStatus) -> MinerResponse | None:
    """The status's miner response, with the fields the facilitator requires filled when missing."""
    if msg.miner_response is None:
        return None
    base = {
        "job_uuid": str(msg.job_uuid),
        "message_type": None,
        "docker_process_stderr": "",
        "docker_process_stdout": "",
    }
    return MinerResponse.model_validate(base | msg.miner_response)


def _newer(sent_at: datetime, seq: int, than_sent_at: datetime, than_seq: int) -> bool:
    """Whether an update was made after another of its job: by `seq` when both carry one, else by
    the job-runner's clock."""
    if seq > 0 and than_seq > 0:
        return seq > than_seq
    return sent_at > than_sent_at


@dataclass(order=True)
class PendingUpdate:
    """One update waiting to be written; ordered by creation time, then arrival."""

    sent_at: datetime
    arrival: int
    job_uuid: uuid.UUID = field(compare=False)
    message_id: uuid.UUID = field(compare=False)  # the bus message's: its `facilitator_status_sent` key
    status: JobStatus = field(compare=False)
    comment: str = field(compare=False)
    miner_response: MinerResponse | None = field(compare=False)
    done: asyncio.Future[bool] = field(compare=False, repr=False)  # True: written, False: stale
    seq: int = field(default=0, compare=False)  # `OrganicJobStatus.seq`: 0 unknown
    ready_at: float = field(default=0.0, compare=False)  # monotonic time its hold ends
    writing: bool = field(default=False, compare=False)


class StatusQueue:
    """The pending updates of one link: `submit` waits for the write, the link's drainer writes."""

    def __init__(self, hold_s: float = ORDER_HOLD_S) -> None:
        self._hold_s = hold_s
        self._heap: list[PendingUpdate] = []
        self._arrivals = itertools.count()
        self._changed = asyncio.Event()
        # job uuid -> (sent_at, seq of its update that went back to the bus, monotonic time the block lapses)
        self._blocked: dict[uuid.UUID, tuple[datetime, int, float]] = {}
        # job uuid -> highest `seq` of the job written, least recent first
        self._highest: OrderedDict[uuid.UUID, int] = OrderedDict()
        # job uuid -> `sent_at` of the newest final status of the job written, least recent first
        self._finals: OrderedDict[uuid.UUID, datetime] = OrderedDict()
        # jobs whose `accepted` was written (a final status without `seq` needs no hold), least recent first
        self._accepted: OrderedDict[uuid.UUID, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def blocked_jobs(self) -> int:
        return len(self._blocked)

    def highest_written(self, job_uuid: uuid.UUID) -> int:
        """The highest `seq` of the job this queue wrote or was told of (0: none known)."""
        return self._highest.get(job_uuid, 0)

    def _note_seq(self, job_uuid: uuid.UUID, seq: int) -> None:
        highest = max(seq, self._highest.pop(job_uuid, 0))
        self._highest[job_uuid] = highest
        while len(self._highest) > JOBS_REMEMBERED:
            self._highest.popitem(last=False)

    def _stale(self, job_uuid: uuid.UUID, sent_at: datetime, seq: int) -> bool:
        if seq > 0:
            return seq <= self._highest.get(job_uuid, 0)
        final = self._finals.get(job_uuid)
        return final is not None and sent_at < final

    async def submit(
        self, msg: OrganicJobStatus, wait_s: float, write_s: float, written_seq: int = 0
    ) -> bool:
        """Queue `msg` and return True once it was written, False if it is stale (not written);
        `LinkUnavailable` after `wait_s` (plus up to `write_s` if its write had begun) or when an
        older update of its job is being retried. `written_seq`: the highest `seq` of the job the
        ledger holds (a write before this process started)."""
        if written_seq > 0:
            self._note_seq(msg.job_uuid, written_seq)
        if self._stale(msg.job_uuid, msg.sent_at, msg.seq):
            return False
        blocked = self._blocked.get(msg.job_uuid)
        if blocked is not None:
            if time.monotonic() >= blocked[2]:
                del self._blocked[msg.job_uuid]
            elif _newer(msg.sent_at, msg.seq, blocked[0], blocked[1]):
                raise LinkUnavailable("an earlier update of this job is waiting to be retried")
        holds = msg.seq > 0 or msg.status in FINAL_STATUSES
        update = PendingUpdate(
            sent_at=msg.sent_at,
            arrival=next(self._arrivals),
            job_uuid=msg.job_uuid,
            message_id=msg.message_id,
            status=JobStatus(msg.status),
            comment=msg.comment or "",
            miner_response=miner_response(msg),
            done=asyncio.get_running_loop().create_future(),
            seq=msg.seq,
            ready_at=time.monotonic() + (self._hold_s if holds else 0.0),
        )
        heapq.heappush(self._heap, update)
        self._changed.set()
        try:
            return await asyncio.wait_for(asyncio.shield(update.done), wait_s)
        except TimeoutError:
            pass
        if update.writing:  # the write began just now: let it finish (bounded by the send timeout)
            try:
                return await asyncio.wait_for(asyncio.shield(update.done), write_s)
            except TimeoutError:
                pass
        self._give_up(update)
        raise LinkUnavailable(f"no authenticated facilitator connection within {wait_s} s")

    def _give_up(self, update: PendingUpdate) -> None:
        """Drop `update` and this job's newer pending updates; block the job's newer arrivals."""
        lapse = time.monotonic() + BLOCK_S
        previous = self._blocked.get(update.job_uuid)
        if previous is not None and _newer(update.sent_at, update.seq, previous[0], previous[1]):
            self._blocked[update.job_uuid] = (previous[0], previous[1], lapse)
        else:
            self._blocked[update.job_uuid] = (update.sent_at, update.seq, lapse)
        keep: list[PendingUpdate] = []
        for other in self._heap:
            if other is update:
                continue
            if (
                other.job_uuid == update.job_uuid
                and not other.writing
                and not _newer(update.sent_at, update.seq, other.sent_at, other.seq)
            ):
                other.done.set_exception(LinkUnavailable("an earlier update of this job gave up waiting"))
                continue
            keep.append(other)
        heapq.heapify(keep)
        self._heap = keep
        if not update.done.done():
            update.done.cancel()

    def _waits_for_predecessor(self, update: PendingUpdate) -> bool:
        """Whether an earlier update of its job may still come: a `seq` that does not follow the
        highest written one, or (without `seq`) a final status before its job's `accepted`."""
        if update.seq > 0:
            return update.seq != self._highest.get(update.job_uuid, 0) + 1
        return update.job_uuid not in self._accepted

    async def next(self) -> PendingUpdate:
        """The oldest pending update that may go, marked as being written (waits while there is
        none). A held update and its job's later updates are passed over, not waited for."""
        while True:
            pending: list[PendingUpdate] = []
            while self._heap:
                update = heapq.heappop(self._heap)
                if update.done.done():
                    continue
                if self._stale(update.job_uuid, update.sent_at, update.seq):
                    update.done.set_result(False)
                    continue
                pending.append(update)
            lowest: dict[uuid.UUID, int] = {}  # per job, the lowest pending `seq`: it goes first
            for update in pending:
                if update.seq > 0:
                    lowest[update.job_uuid] = min(update.seq, lowest.get(update.job_uuid, update.seq))
            hold: float | None = None
            held_jobs: set[uuid.UUID] = set()
            found: PendingUpdate | None = None
            for update in pending:
                if found is not None or update.job_uuid in held_jobs:
                    heapq.heappush(self._heap, update)
                    continue
                if update.seq > lowest.get(update.job_uuid, update.seq):  # an earlier one is pending
                    heapq.heappush(self._heap, update)
                    continue
                wait = update.ready_at - time.monotonic()
                if wait > 0 and self._waits_for_predecessor(update):
                    heapq.heappush(self._heap, update)
                    held_jobs.add(update.job_uuid)
                    hold = wait if hold is None else min(hold, wait)
                    continue
                found = update
            if found is not None:
                found.writing = True
                return found
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), hold)

    def written(self, update: PendingUpdate) -> None:
        """The frame is on the socket: the waiting delivery may be acknowledged."""
        update.writing = False
        blocked = self._blocked.get(update.job_uuid)
        if blocked is not None and not _newer(update.sent_at, update.seq, blocked[0], blocked[1]):
            del self._blocked[update.job_uuid]  # the update that blocked its job went out
        if update.seq > 0:
            self._note_seq(update.job_uuid, update.seq)
        if update.status.value == "accepted":
            self._accepted[update.job_uuid] = None
            while len(self._accepted) > JOBS_REMEMBERED:
                self._accepted.popitem(last=False)
        if update.status.value in FINAL_STATUSES:
            self._accepted.pop(update.job_uuid, None)
            newest = max(update.sent_at, self._finals.pop(update.job_uuid, update.sent_at))
            self._finals[update.job_uuid] = newest
            while len(self._finals) > JOBS_REMEMBERED:
                self._finals.popitem(last=False)
        self._changed.set()  # an update of this job held for this one may go now
        if not update.done.done():
            update.done.set_result(True)

    def put_back(self, update: PendingUpdate) -> None:
        """The write failed: the update waits for the next connection, in its place."""
        update.writing = False
        if not update.done.done():
            heapq.heappush(self._heap, update)
            self._changed.set()
