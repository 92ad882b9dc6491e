"""Pure decisions of the batch coordinator (`docs/scheduling.md §8`): no database, bus or clock.

`coordinator.py` does the I/O and asks these functions which miners a batch tests, how they are
split into shards, when each phase of the batch ends, how a shard's state moves when the job-runner
reports, and when the batch is released and completed. Every rule is therefore a unit test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from horde_common.protocol.miner.executor_class import ExecutorClass, max_spin_up_time

# Time from the dispatch to the moment the longest-spinning executors must get their initial
# request: the request's delivery to a job-runner, the manifests (each miner has 35 s to connect,
# authenticate and send it) and the job generation that overlaps them (docs/scheduling.md §8.2).
PREPARE_S = 60.0
# The longest spin-up allowance of any executor class (240 s for the 4-minute and LLM classes): the
# scheduler does not know the miners' classes before their manifests, so every batch allows it.
MAX_SPIN_UP_S = float(max_spin_up_time(set(ExecutorClass)))
# From the accept deadline to the fallback release: a job sent late still gets its full spin-up,
# and publishing `batch.shard.ready` may take up to 15 s; past this the shards release on their own.
RELEASE_GRACE_S = 30.0
# The longest job timeout (90 s, hashcat of weights version 0) plus the 120 s the runner waits
# beyond it for an answer: when the last answer of a shard is in or given up on.
ANSWER_WINDOW_S = 90.0 + 120.0
# Scoring, finished receipts (5 s each, concurrently), closing (1 s) and storing the rows (three
# attempts of at most 60 s with pauses of 1 s and 2 s): a shard's wrap-up after the answers.
WRAP_UP_S = 200.0
# A shard still not reported this long after its deadline is failed: covers the outbox relay and the
# bus carrying `batch.shard.completed`, and a runner slowed by a busy machine.
COMPLETION_GRACE_S = 60.0
# A batch started (by `due_batches`) but never dispatched — the scheduler died between the two
# transactions — is given up after this long; a live dispatch takes well under a second.
UNDISPATCHED_AFTER_S = 120.0
# With staggering off a batch starts at most this often (the reference's runner woke every 30 s),
# and never while another is in flight, so an empty subnet does not flood the table with batches.
UNSTAGGERED_INTERVAL_S = 30.0


class ShardState(StrEnum):
    """A `batch_shards.state`: requested -> ready -> completed | failed."""

    REQUESTED = "requested"
    READY = "ready"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL = frozenset({ShardState.COMPLETED, ShardState.FAILED})


@dataclass(frozen=True, slots=True)
class CoordinatorParams:
    """The coordinator's timing and sharding; the defaults are production's."""

    shard_size: int | None = None
    prepare_s: float = PREPARE_S
    spin_up_s: float = MAX_SPIN_UP_S
    release_grace_s: float = RELEASE_GRACE_S
    answer_window_s: float = ANSWER_WINDOW_S
    wrap_up_s: float = WRAP_UP_S
    completion_grace_s: float = COMPLETION_GRACE_S
    undispatched_after_s: float = UNDISPATCHED_AFTER_S
    unstaggered_interval_s: float = UNSTAGGERED_INTERVAL_S

    def __post_init__(self) -> None:
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        for name in ("prepare_s", "spin_up_s", "release_grace_s", "answer_window_s", "wrap_up_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.completion_grace_s < 0 or self.undispatched_after_s < 0:
            raise ValueError("completion_grace_s and undispatched_after_s must be >= 0")

    @property
    def run_s(self) -> float:
        """From the release deadline to the shard's deadline: answers, then wrap-up."""
        return self.answer_window_s + self.wrap_up_s


@dataclass(frozen=True, slots=True)
class BatchDeadlines:
    """The absolute phase deadlines of one batch, shared by all its shards (docs/scheduling.md §8.2)."""

    accept: datetime
    release: datetime
    shard: datetime  # `batch_shards.deadline_at`: when each shard should have completed


def batch_deadlines(start: datetime, params: CoordinatorParams) -> BatchDeadlines:
    """The deadlines of a batch dispatched at `start` (aware UTC)."""
    accept = start + timedelta(seconds=params.prepare_s + params.spin_up_s)
    release = accept + timedelta(seconds=params.release_grace_s)
    return BatchDeadlines(accept, release, release + timedelta(seconds=params.run_s))


def release_deadline_of(shard_deadline: datetime, params: CoordinatorParams) -> datetime:
    """The release deadline of a batch from a shard's stored deadline (the inverse of
    `batch_deadlines`), so the release fallback needs no column of its own."""
    return shard_deadline - timedelta(seconds=params.run_s)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One neuron of the newest metagraph snapshot, as far as miner selection is concerned."""

    uid: int
    hotkey: str
    ip: str
    port: int
    is_serving: bool


def select_miners(neurons: Iterable[Candidate], own_hotkey: str) -> list[Candidate]:
    """The miners a batch tests, in uid order (docs/scheduling.md §8.1).

    Every neuron whose axon is serving, validators included as in the reference, except this
    validator itself. The sync already stored undiallable axons as not serving (§6.3); the address
    and port are re-checked so a row written by other means cannot reach a job-runner.
    """
    chosen: dict[str, Candidate] = {}
    for n in sorted(neurons, key=lambda n: n.uid):
        if n.hotkey == own_hotkey or n.hotkey in chosen:
            continue
        if n.is_serving and n.ip not in ("", "0.0.0.0") and 1 <= n.port <= 65535:
            chosen[n.hotkey] = n
    return list(chosen.values())


def split_shards(miners: Sequence[Candidate], shard_size: int | None) -> list[list[Candidate]]:
    """Consecutive shards of at most `shard_size` miners (None: one shard); no miner, no shard."""
    if not miners:
        return []
    size = len(miners) if shard_size is None else shard_size
    return [list(miners[i : i + size]) for i in range(0, len(miners), size)]


def after_ready(state: ShardState) -> ShardState:
    """A shard's state once `batch.shard.ready` arrives: only a requested shard moves (a repeated
    ready, or one after the completion, changes nothing)."""
    return ShardState.READY if state is ShardState.REQUESTED else state


def after_completed(state: ShardState, ok: bool) -> ShardState | None:
    """A shard's state once `batch.shard.completed` arrives, or None when the report is ignored:
    the shard is already completed (a repeat) or was failed by its deadline (a late report)."""
    if state in TERMINAL:
        return None
    return ShardState.COMPLETED if ok else ShardState.FAILED


def is_overdue(deadline: datetime | None, now: datetime, params: CoordinatorParams) -> bool:
    """A shard not reported by its deadline plus the completion grace is failed by the loop."""
    return deadline is not None and now > deadline + timedelta(seconds=params.completion_grace_s)


def barrier_passed(states: Iterable[ShardState]) -> bool:
    """Every shard is ready (or already over): the batch can be released."""
    listed = list(states)
    return bool(listed) and all(s is not ShardState.REQUESTED for s in listed)


def all_over(states: Iterable[ShardState]) -> bool:
    """Every shard is completed or failed: the batch is complete (vacuously true with no shard)."""
    return all(s in TERMINAL for s in states)


def should_release(
    states: Sequence[ShardState],
    *,
    released: bool,
    release_deadline: datetime | None,
    now: datetime,
) -> bool:
    """Publish `batch.released` now? Once per batch: when the barrier passes, or at the release
    deadline whatever the shards say, unless every shard is already over (nobody is waiting)."""
    if released or not states or all_over(states):
        return False
    if barrier_passed(states):
        return True
    return release_deadline is not None and now >= release_deadline
