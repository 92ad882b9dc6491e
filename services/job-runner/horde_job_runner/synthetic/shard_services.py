"""The small services one shard run shares among its phases (docs/synthetic-batch.md §2).

Each is created once per shard by `batch` and handed, by name, only to the phases that need it:

* `Signer`: the validator's hotkey and its signing function (receipts, sessions);
* `EventLog`: the shard's system events, in order, each tagged with the batch;
* `Checkpoints`: the CHECKPOINT event of each stage, its times, live progress and the test fault hook;
* `SendPacer`: the yield to the event loop between back-to-back sends;
* `drain`: let already-received frames be read before a phase is judged.

The exclusion ledger (`ledger`) and the loop monitor (`loopmon`) are the other two.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from horde_common.crypto import sign as crypto_sign
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType

if TYPE_CHECKING:
    from horde_job_runner.synthetic.model import Clock, FaultHook, JobState, Keypair, ProgressListener

__all__ = ["Checkpoints", "EventLog", "SendPacer", "Signer", "drain"]

T = SystemEventType
S = SystemEventSubtype

# How many loop iterations `drain` gives the transports and readers: one to wake a transport whose
# socket became readable, one for it to hand the frame to the reader, one for the reader to act.
_DRAIN_ITERATIONS = 3


async def drain() -> None:
    """Let frames that already reached our socket be read before a phase is judged.

    After a deadline (or a stall of ours) the loop may not have polled the sockets yet; a few
    iterations let the transports and readers take what arrived. Their receive stamps are what
    they are: a late stamp is judged late (and excused if we stalled).
    """
    for _ in range(_DRAIN_ITERATIONS):
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Signer:
    """The validator's hotkey (`hotkey`, ss58) and `sign(blob) -> "0x" + hex signature`."""

    hotkey: str
    sign: Callable[[str], str]

    @classmethod
    def from_keypair(cls, keypair: Keypair) -> Signer:
        def sign(blob: str) -> str:
            return crypto_sign(keypair, blob)

        return cls(hotkey=keypair.ss58_address, sign=sign)


class SendPacer:
    """Shared by every writer: yield to the loop once per `slice_s` of back-to-back sends.

    One pacer per shard (not per miner): what matters is how long the loop went without reading,
    whichever miner's frames it was writing.
    """

    def __init__(self, slice_s: float) -> None:
        self.slice_s = slice_s
        self._last = time.perf_counter()
        self.yields = 0

    async def tick(self) -> None:
        now = time.perf_counter()
        if now - self._last >= self.slice_s:
            self.yields += 1
            await asyncio.sleep(0)
            self._last = time.perf_counter()


class EventLog:
    """The shard's system events, in the order they happened, each tagged with its batch.

    Stored with the shard's rows; nothing here is written anywhere until then.
    """

    def __init__(self, batch_id: int, clock: Clock) -> None:
        self.batch_id = batch_id
        self.batch_uuid = ""  # known once the batch row is read (`set_batch_uuid`)
        self.records: list[SystemEventRecord] = []
        self._clock = clock

    def __len__(self) -> int:
        return len(self.records)

    def record(
        self,
        type_: SystemEventType,
        subtype: SystemEventSubtype | str,
        description: str = "",
        **data: Any,
    ) -> None:
        """One event; `data` entries that are None are left out."""
        payload = {"batch_uuid": self.batch_uuid, "batch_id": self.batch_id}
        payload.update({k: v for k, v in data.items() if v is not None})
        self.records.append(SystemEventRecord(type_, subtype, description, payload, self._clock.now()))

    def set_batch_uuid(self, batch_uuid: str) -> None:
        """The batch's uuid, also into the events recorded before it was known (the begin events)."""
        self.batch_uuid = batch_uuid
        for e in self.records:
            if isinstance(e.data, dict):
                e.data["batch_uuid"] = batch_uuid

    def receipt_failure(self, job: JobState, receipt: str, func: str) -> Callable[[BaseException], None]:
        """`on_failure` for a queued receipt: a receipt that did not go out is our RECEIPT_FAILURE
        event, never a miner failure."""

        def failed(exc: BaseException) -> None:
            self.record(
                T.RECEIPT_FAILURE,
                S.RECEIPT_SEND_ERROR,
                f"{receipt} receipt not sent: {type(exc).__name__}: {exc}",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                func=func,
            )

        return failed


class Checkpoints:
    """Each stage's start: a CHECKPOINT event, its wall and monotonic times, live progress, and the
    test seam `fault(stage)` (docs/synthetic-batch.md §1).

    `progress_counts` is asked for the live counts only when a `progress` listener exists.
    """

    def __init__(
        self,
        events: EventLog,
        clock: Clock,
        *,
        progress: ProgressListener | None,
        progress_counts: Callable[[], Mapping[str, int]],
        fault: FaultHook | None,
    ) -> None:
        self._events = events
        self._clock = clock
        self._progress = progress
        self._progress_counts = progress_counts
        self._fault = fault
        self.times: dict[str, str] = {}  # stage -> UTC ISO time (telemetry's `stage_times`)
        self.mono: dict[str, float] = {}  # stage -> monotonic time (the result's `stage_mono`)

    async def stage(self, name: str, *, hook: bool = True) -> None:
        """Record that stage `name` starts; then, with `hook`, call the fault hook."""
        now = self._clock.now()
        self.times[name] = now.isoformat()
        self.mono[name] = self._clock.monotonic()
        self._events.record(T.VALIDATOR_TELEMETRY, S.CHECKPOINT, name, time=now.isoformat(), stage=name)
        if self._progress is not None:
            with contextlib.suppress(Exception):
                self._progress.stage(name)
                self._progress.counts(self._progress_counts())
        if hook:
            await self.hook(name)

    async def hook(self, name: str) -> None:
        """Test seam: `deps.fault(name)` may raise (a validator bug) or block (a stall)."""
        if self._fault is not None:
            outcome = self._fault(name)
            if inspect.isawaitable(outcome):
                await outcome
