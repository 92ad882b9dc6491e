"""The values a shard run works with: its request, its injected dependencies, per-job state, result.

Also `ShardStore`, what a shard needs from a database (docs/synthetic-batch.md §7): declared here as
a protocol so that this module, which every part of the package imports, never imports the
Postgres implementation (`persistence.BatchStore`), which itself imports this module.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from horde_common.bus.messages import BatchShardReady, BatchShardRequested, MinerEndpoint
from horde_common.config import HashcatDifficulty
from horde_common.protocol.miner.executor_class import (
    EXECUTOR_CLASS_SPECS,
    MIN_SPIN_UP_TIME,
    ExecutorClass,
)
from horde_common.protocol.miner.session import JobRegistry, MinerSession
from horde_job_runner.generators import JobGenerator
from horde_job_runner.synthetic.generation import InlineJobFactory, JobFactory
from horde_job_runner.synthetic.transport import (
    Sleep,
    TransportFactory,
    TransportSettings,
    WebSocketTransport,
)

if TYPE_CHECKING:
    from horde_job_runner.synthetic.shard_rows import ShardRows

Keypair = Any  # a bittensor sr25519 keypair (`horde_common.wallet.load_hotkey`)

__all__ = [
    "BatchDeps",
    "BatchTimeouts",
    "Clock",
    "DynamicValues",
    "JobResult",
    "ProgressListener",
    "ReleaseWaiter",
    "ShardRequest",
    "ShardResult",
    "ShardStore",
    "SystemClock",
]


# ------------------------------------------------------------------------------------------ request


@dataclass(frozen=True)
class ShardRequest:
    """What to run: the miners of one shard of batch `batch_id`.

    `accept_deadline` (absolute, UTC) is when every executor of the whole batch should be ready:
    initial requests of a class are sent at `accept_deadline − spin-up(class)` (the reference's
    stagger), and the spin-up window ends then (never earlier than `sent + spin-up` for any job, so
    a late start on our side never shortens a miner's allowance). None: the shard decides, i.e.
    `now + max spin-up` once its jobs are generated (the single-process reference behaviour).

    `release_deadline` (absolute, UTC) is the fallback: if `batch.released` has not arrived by
    then, the shard releases its job requests on its own. None: release as soon as the spin-up
    window ends (no scheduler, e.g. `horde debug run-synthetic-jobs`).
    """

    batch_id: int
    miners: Sequence[MinerEndpoint]
    weights_version: int
    shard_index: int = 0
    shard_count: int = 1
    accept_deadline: datetime | None = None
    release_deadline: datetime | None = None
    message_id: uuid.UUID | None = None

    @classmethod
    def from_message(cls, msg: BatchShardRequested) -> ShardRequest:
        return cls(
            batch_id=msg.batch_id,
            miners=list(msg.miners),
            weights_version=msg.weights_version,
            shard_index=msg.shard_index,
            shard_count=msg.shard_count,
            accept_deadline=msg.deadlines.accept_deadline,
            release_deadline=msg.deadlines.release_deadline,
            message_id=msg.message_id,
        )


# --------------------------------------------------------------------------------------- constants


def _default_spin_up() -> dict[str, float]:
    return {
        str(c): float(max(spec.spin_up_time, MIN_SPIN_UP_TIME)) for c, spec in EXECUTOR_CLASS_SPECS.items()
    }


@dataclass(frozen=True)
class BatchTimeouts:
    """Every wait of a batch (docs/miner-protocol.md §3.1). Tests shrink them; production uses the defaults.

    `spin_up` is each class's spin-up allowance (`max(spin_up_time, 2)`): the stagger and the
    accept→ready window. Overriding it does not change the receipts' `ttl` (that stays the class's
    wire value). `job_timeout`, when set, replaces the generator's `timeout_seconds` as the scoring
    limit (tests of "took too long"); the receipts still carry the generator's value.
    """

    manifest: float = 35.0
    receipt_send: float = 5.0
    close: float = 1.0
    job_wait_extra: float = 120.0
    spin_up: Mapping[str, float] = field(default_factory=_default_spin_up)
    job_timeout: float | None = None
    # Bound on waiting for `batch.released` when the request has no release deadline but a waiter
    # exists (a scheduler that vanished): after this, release on our own.
    release_wait_max: float = 300.0
    # Seconds of back-to-back sends before yielding to the event loop once.
    send_slice: float = 0.005
    # A time-based failure is excused (excluded from scoring) when our loop stalled this long
    # within the job's window.
    stall_excuse: float = 0.25
    loop_monitor_interval: float = 0.05
    loop_stall_threshold: float = 0.1
    persist_attempts: int = 3
    persist_backoff: float = 1.0
    # Bound on each database step of the shard (the reads at the start, each persist attempt).
    db: float = 60.0
    # Bound on waiting for the job generation that is still running when the manifests are in.
    generation: float = 60.0
    # A shard request that arrives this long after its release deadline is not run (redelivery).
    late_request_grace: float = 0.0

    def spin_up_for(self, executor_class: ExecutorClass | str) -> float:
        value = self.spin_up.get(str(executor_class))
        if value is None:
            return float(MIN_SPIN_UP_TIME)
        return float(value)


# ------------------------------------------------------------------------------------------- deps


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    """Monotonic time for durations and deadlines, UTC wall time for receipts and rows."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


class ReleaseWaiter(Protocol):
    """`batch.released` for a batch: returns its `released_at`, or None after `timeout_s` seconds."""

    async def wait(self, batch_id: int, timeout_s: float) -> datetime | None: ...


class ProgressListener(Protocol):
    """Live progress (the debug command's display); every method must be cheap and never raise."""

    def stage(self, name: str, detail: str = "") -> None: ...

    def counts(self, counts: Mapping[str, int]) -> None: ...


@dataclass(frozen=True)
class DynamicValues:
    """The DYNAMIC_* values a batch reads (docs/miner-protocol.md §0): multiplier, ratio threshold and
    per-class caps."""

    manifest_score_multiplier: float = 1.3
    manifest_dance_ratio_threshold: float = 1.4
    miner_max_executors_per_class: Mapping[str, int] = field(
        default_factory=lambda: {"always_on.llm.a6000": 5}
    )

    @classmethod
    def from_config(cls, config: Any) -> DynamicValues:
        """From a `horde_common.dynamic_config.DynamicConfig`."""
        return cls(
            manifest_score_multiplier=config.manifest_score_multiplier,
            manifest_dance_ratio_threshold=config.manifest_dance_ratio_threshold,
            miner_max_executors_per_class=config.miner_max_executors_per_class,
        )


class ShardStore(Protocol):
    """What `run_shard` reads from and writes to the database (`persistence.BatchStore` in production)."""

    async def batch_uuid(self, batch_id: int) -> uuid.UUID | None: ...

    async def previous_online_counts(
        self, batch_id: int, hotkeys: Iterable[str]
    ) -> dict[str, dict[str, int]]: ...

    async def dynamic_values(self) -> DynamicValues: ...

    async def recent_event_exists(self, type_: str, subtype: str, within: timedelta) -> bool: ...

    async def persist(self, rows: ShardRows, *, fast: bool = True) -> None: ...


SessionFactory = Callable[[MinerEndpoint, JobRegistry], MinerSession]
FaultHook = Callable[[str], Awaitable[None] | None]


@dataclass
class BatchDeps:
    """Everything `run_shard` touches outside itself.

    `store=None` runs without a database (nothing is read or written: tests of the flow only).
    `dynamic=None` reads `DynamicValues` from the database (through the store) at the start.
    `fault` is called with each stage name as the stage starts (tests inject failures and stalls).
    `on_initial_send` is awaited once, just before the first initial job request goes to any miner:
    the bus handler records it on the shard's lease row, so a redelivery after a crash can tell a
    shard that never reached a miner (run it again) from one that did (never send a second set). If
    it raises, nothing is sent and the shard fails as ours.
    """

    keypair: Keypair
    store: ShardStore | None
    dynamic: DynamicValues | None = None
    difficulty: HashcatDifficulty | str = HashcatDifficulty.PRODUCTION
    timeouts: BatchTimeouts = field(default_factory=BatchTimeouts)
    clock: Clock = field(default_factory=SystemClock)
    sleep: Sleep = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    transport_factory: TransportFactory = WebSocketTransport
    transport_settings: TransportSettings = field(default_factory=TransportSettings)
    session_factory: SessionFactory | None = None
    # In-process by default (tests, flows without a pool): the service, the debug command and the
    # bench pass a `PoolJobFactory` on the process pool they own.
    job_factory: JobFactory = field(default_factory=InlineJobFactory)
    release_waiter: ReleaseWaiter | None = None
    publish_ready: Callable[[BatchShardReady], Awaitable[None]] | None = None
    progress: ProgressListener | None = None
    fault: FaultHook | None = None
    on_initial_send: Callable[[], Awaitable[None]] | None = None
    service: str = "job-runner"


# ------------------------------------------------------------------------------------------ state


@dataclass(eq=False)
class JobState:
    """One job of the shard, from generation to its stored row. Times: `*_mono` monotonic, `*_at` UTC."""

    job_uuid: str
    miner_hotkey: str
    executor_class: ExecutorClass
    generator: JobGenerator
    spin_up: float
    timeout: float  # scoring limit
    # initial request / spin-up
    initial_sent_mono: float | None = None
    initial_sent_at: datetime | None = None
    window_end_mono: float | None = None
    accepted: bool = False
    accept_mono: float | None = None
    declined: bool = False
    executor_ready: bool = False
    executor_failed: bool = False
    executor_mono: float | None = None
    spin_up_resolved: bool = False
    # job request
    job_frame: str | None = None
    job_wire: bytes | None = None  # the same, as pre-built wire bytes (see transport.prebuild)
    job_before_sent_mono: float | None = None
    job_before_sent_at: datetime | None = None
    job_after_sent_mono: float | None = None
    wait_end_mono: float | None = None
    final_kind: str | None = None  # "finished" / "failed"
    final_mono: float | None = None
    final_at: datetime | None = None
    final_before_job_request: bool = False
    stdout: str = ""
    stderr: str = ""
    exit_status: int | None = None
    machine_specs: Any = None  # the last V0MachineSpecsRequest.specs (a pydantic model)
    # receipts (payload JSON + signature)
    started_receipt: tuple[Any, str] | None = None
    accepted_receipt: tuple[Any, str] | None = None
    finished_receipt: tuple[Any, str] | None = None
    # outcome
    status: str = "FAILED"
    success: bool = False
    correct: bool | None = None
    comment: str = "failed"
    score: float = 0.0
    multiplier: float | None = None
    time_took: float | None = None
    excluded: bool = False
    exception: str | None = None
    exception_stage: str | None = None

    @property
    def has_final(self) -> bool:
        return self.final_kind is not None


@dataclass(frozen=True)
class JobResult:
    """One stored job, as the debug command prints it."""

    job_uuid: str
    miner_hotkey: str
    executor_class: str
    status: str
    score: float
    comment: str
    excluded_from_scoring: bool = False
    time_took: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "job_uuid": self.job_uuid,
            "miner_hotkey": self.miner_hotkey,
            "executor_class": self.executor_class,
            "status": self.status,
            "score": self.score,
            "comment": self.comment,
            "excluded_from_scoring": self.excluded_from_scoring,
        }


@dataclass
class ShardResult:
    """What a shard did. `ok` is False when a validator-side failure hit the shard."""

    batch_id: int
    shard_index: int
    jobs: list[JobResult] = field(default_factory=list)
    ok: bool = True
    error: str | None = None
    persisted: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def job_count(self) -> int:
        return len(self.jobs)
