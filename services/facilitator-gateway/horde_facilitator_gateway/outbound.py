"""Status updates waiting for the facilitator link, in order (docs/organic.md, "Facilitator gateway").

Each `organic.job.status` delivery puts its update here and waits, bounded, until the link wrote
it to an authenticated socket and recorded it in `facilitator_status_sent` (`ledger.py`); only then
is the bus message acknowledged. Order:

* pending updates go out oldest first by the message's `sent_at` (the job-runner's creation time),
  so a job's updates that piled up while the link was down drain in the order they were made,
  whatever order the concurrent deliveries reached the handler in (across jobs too, but for the
  held final statuses below);
* an update that gives up waiting goes back to the bus for a later retry. Pending updates of the
  same job that are newer give up with it, and newer ones arriving later are refused until it was
  sent (at most `BLOCK_S`), so no later update of a job overtakes an earlier one. Jobs are
  independent: one job's stuck update never holds back another's;
* a final status of a job whose `accepted` was not written yet waits up to `FINAL_HOLD_S` after it
  reached the queue (or until that `accepted` was written): a job's `accepted` and final status made
  milliseconds apart (a job that ends at once) are delivered concurrently, and either may reach the
  queue first; the hold lets the older one in to be sorted before it. Only that job waits (its
  other updates stay behind the held one); every other job's updates go on being written;
* an update created before a final status of its job that was already written is stale and is not
  written (`submit` returns False): should an older update arrive after the hold all the same, it
  would move the facilitator's view of the job back from final.
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

FINAL_HOLD_S: Final = 0.25
"""Concurrent deliveries reach the queue within milliseconds of each other (one database check
each); a quarter second covers that with a wide margin. It is only ever waited in full by a job
that ends without an `accepted` (refused, or failed before the miner accepted): a job whose
`accepted` was written, the usual case, is not held at all."""

FINALS_REMEMBERED: Final = 10_000
"""Jobs whose newest written final status this queue remembers (for stale updates); older ones are
covered by the `facilitator_status_sent` check before an update is queued."""


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


@dataclass(order=True)
class PendingUpdate:
    """One update waiting to be written; ordered by creation time, then arrival."""

    sent_at: datetime
    seq: int
    job_uuid: uuid.UUID = field(compare=False)
    message_id: uuid.UUID = field(compare=False)  # the bus message's: its `facilitator_status_sent` key
    status: JobStatus = field(compare=False)
    comment: str = field(compare=False)
    miner_response: MinerResponse | None = field(compare=False)
    done: asyncio.Future[bool] = field(compare=False, repr=False)  # True: written, False: stale
    ready_at: float = field(default=0.0, compare=False)  # monotonic time it may be written from
    writing: bool = field(default=False, compare=False)


class StatusQueue:
    """The pending updates of one link: `submit` waits for the write, the link's drainer writes."""

    def __init__(self, final_hold_s: float = FINAL_HOLD_S) -> None:
        self._final_hold_s = final_hold_s
        self._heap: list[PendingUpdate] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        # job uuid -> (sent_at of its update that went back to the bus, monotonic time the block lapses)
        self._blocked: dict[uuid.UUID, tuple[datetime, float]] = {}
        # job uuid -> `sent_at` of the newest final status of the job written, least recent first
        self._finals: OrderedDict[uuid.UUID, datetime] = OrderedDict()
        # jobs whose `accepted` was written (their final status needs no hold), least recent first
        self._accepted: OrderedDict[uuid.UUID, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def blocked_jobs(self) -> int:
        return len(self._blocked)

    def _stale(self, job_uuid: uuid.UUID, sent_at: datetime) -> bool:
        final = self._finals.get(job_uuid)
        return final is not None and sent_at < final

    async def submit(self, msg: OrganicJobStatus, wait_s: float, write_s: float) -> bool:
        """Queue `msg` and return True once it was written, False if it is stale (not written);
        `LinkUnavailable` after `wait_s` (plus up to `write_s` if its write had begun) or when an
        older update of its job is being retried."""
        if self._stale(msg.job_uuid, msg.sent_at):
            return False
        blocked = self._blocked.get(msg.job_uuid)
        if blocked is not None:
            if time.monotonic() >= blocked[1]:
                del self._blocked[msg.job_uuid]
            elif msg.sent_at > blocked[0]:
                raise LinkUnavailable("an earlier update of this job is waiting to be retried")
        update = PendingUpdate(
            sent_at=msg.sent_at,
            seq=next(self._seq),
            job_uuid=msg.job_uuid,
            message_id=msg.message_id,
            status=JobStatus(msg.status),
            comment=msg.comment or "",
            miner_response=miner_response(msg),
            done=asyncio.get_running_loop().create_future(),
            ready_at=time.monotonic() + (self._final_hold_s if msg.status in FINAL_STATUSES else 0.0),
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
        oldest = min(previous[0], update.sent_at) if previous else update.sent_at
        self._blocked[update.job_uuid] = (oldest, lapse)
        keep: list[PendingUpdate] = []
        for other in self._heap:
            if other is update:
                continue
            if other.job_uuid == update.job_uuid and other.sent_at >= update.sent_at and not other.writing:
                other.done.set_exception(LinkUnavailable("an earlier update of this job gave up waiting"))
                continue
            keep.append(other)
        heapq.heapify(keep)
        self._heap = keep
        if not update.done.done():
            update.done.cancel()

    async def next(self) -> PendingUpdate:
        """The oldest pending update that may go, marked as being written (waits while there is
        none). A held final status and its job's later updates are passed over, not waited for."""
        while True:
            hold: float | None = None
            held: list[PendingUpdate] = []
            held_jobs: set[uuid.UUID] = set()
            found: PendingUpdate | None = None
            while self._heap:
                update = heapq.heappop(self._heap)
                if update.done.done():
                    continue
                if self._stale(update.job_uuid, update.sent_at):
                    update.done.set_result(False)
                    continue
                wait = update.ready_at - time.monotonic()
                if update.job_uuid in held_jobs or (wait > 0 and update.job_uuid not in self._accepted):
                    held.append(update)
                    held_jobs.add(update.job_uuid)
                    if wait > 0:
                        hold = wait if hold is None else min(hold, wait)
                    continue
                found = update
                break
            for update in held:
                heapq.heappush(self._heap, update)
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
        if blocked is not None and update.sent_at <= blocked[0]:
            del self._blocked[update.job_uuid]  # the update that blocked its job went out
        if update.status.value == "accepted":
            self._accepted[update.job_uuid] = None
            while len(self._accepted) > FINALS_REMEMBERED:
                self._accepted.popitem(last=False)
            self._changed.set()  # a final status of this job held for it may go now
        if update.status.value in FINAL_STATUSES:
            self._accepted.pop(update.job_uuid, None)
            newest = max(update.sent_at, self._finals.pop(update.job_uuid, update.sent_at))
            self._finals[update.job_uuid] = newest
            while len(self._finals) > FINALS_REMEMBERED:
                self._finals.popitem(last=False)
        if not update.done.done():
            update.done.set_result(True)

    def put_back(self, update: PendingUpdate) -> None:
        """The write failed: the update waits for the next connection, in its place."""
        update.writing = False
        if not update.done.done():
            heapq.heappush(self._heap, update)
            self._changed.set()
