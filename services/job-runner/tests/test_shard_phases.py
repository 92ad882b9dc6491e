"""The shard phases' I/O-free parts, on plain values: no sockets, no database, no worker processes.

Each phase takes its collaborators as arguments (docs/synthetic-batch.md §2), so a test builds
just those: a clock, an `EventLog`, a `JobLedger`, a `LoopMonitor` with recorded stalls, and
stand-ins for the links and generators.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_job_runner.synthetic.finish import score
from horde_job_runner.synthetic.ledger import JobLedger
from horde_job_runner.synthetic.link_events import ManifestIntake
from horde_job_runner.synthetic.loopmon import LoopMonitor
from horde_job_runner.synthetic.model import BatchTimeouts, DynamicValues, JobState
from horde_job_runner.synthetic.records import ShardFacts, build_rows
from horde_job_runner.synthetic.scoring import MAX_EXECUTORS_PER_CLASS, Scores
from horde_job_runner.synthetic.shard_links import Links
from horde_job_runner.synthetic.shard_services import EventLog

AO = ExecutorClass("always_on.gpu-24gb")
HOTKEY = "miner-hotkey"


class FixedClock:
    """Monotonic time that only moves when the test says so."""

    def __init__(self, mono: float = 1000.0) -> None:
        self.mono = mono

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


def generator(correct: bool = True) -> Any:
    verdict = SimpleNamespace(correct=correct, comment="ok" if correct else "wrong", score=1.0)
    return SimpleNamespace(
        verify=lambda stdout, took: verdict,
        job_description=lambda: "hashcat",
    )


def job(n: int, **state: Any) -> JobState:
    j = JobState(
        job_uuid=f"00000000-0000-0000-0000-{n:012d}",
        miner_hotkey=HOTKEY,
        executor_class=AO,
        generator=generator(),
        spin_up=2.0,
        timeout=10.0,
    )
    for key, value in state.items():
        setattr(j, key, value)
    return j


def links(*jobs: JobState, close_reason: str | None = None) -> Links:
    link = SimpleNamespace(
        hotkey=HOTKEY,
        name="miner",
        address="127.0.0.1",
        port=8000,
        ip_version=4,
        close_reason=close_reason,
        manifest=object(),
        jobs={j.job_uuid: j for j in jobs},
    )
    return Links((cast(Any, link),), {HOTKEY: cast(Any, link)})


def kinds(events: EventLog) -> list[tuple[str, str]]:
    return [(str(e.type), str(e.subtype)) for e in events.records]


def run_score(
    jobs: list[JobState], ls: Links, monitor: LoopMonitor, clock: FixedClock
) -> tuple[Scores, EventLog]:
    events = EventLog(7, clock)
    scores = score(
        jobs,
        ls,
        deadline_mono=900.0,
        previous_online={},
        dynamic=DynamicValues(),
        weights_version=4,
        monitor=monitor,
        timeouts=BatchTimeouts(),
        clock=clock,
        events=events,
        ledger=JobLedger(events),
    )
    return scores, events


def timed_out(n: int) -> JobState:
    """Ready, its job request sent at 900 s, no answer by the end of its wait (1030 s)."""
    return job(
        n,
        initial_sent_mono=890.0,
        window_end_mono=892.0,
        executor_ready=True,
        job_before_sent_mono=900.0,
        wait_end_mono=1030.0,
    )


def test_a_timeout_during_our_stall_is_excluded_and_one_without_is_the_miners() -> None:
    clock = FixedClock(2000.0)
    stalled, quiet = timed_out(1), timed_out(2)
    monitor = LoopMonitor()
    monitor.note_stall(950.0, 950.5)  # inside both windows: only `stalled`'s is judged against it
    _, events = run_score([stalled], links(stalled), monitor, clock)
    assert stalled.excluded and stalled.status == "FAILED" and stalled.score == 0.0
    assert "the validator stalled 0.50 s" in stalled.comment
    assert kinds(events) == [("VALIDATOR_FAILURE", "GENERIC_ERROR")]

    _, events = run_score([quiet], links(quiet), LoopMonitor(), clock)
    assert not quiet.excluded and quiet.status == "FAILED" and quiet.comment == "timed out"
    assert kinds(events) == [("MINER_SYNTHETIC_JOB_FAILURE", "JOB_EXECUTION_TIMEOUT")]


def test_no_stall_excuses_the_jobs_of_a_link_closed_for_the_miners_fault() -> None:
    j = timed_out(3)
    monitor = LoopMonitor()
    monitor.note_stall(950.0, 951.0)
    _, events = run_score([j], links(j, close_reason="malformed frame flood"), monitor, FixedClock(2000.0))
    assert not j.excluded and j.comment == "timed out"
    assert kinds(events) == [("MINER_SYNTHETIC_JOB_FAILURE", "JOB_EXECUTION_TIMEOUT")]


def test_successes_are_counted_online_and_get_the_multiplier_without_a_previous_count() -> None:
    answered = [
        job(n, executor_ready=True, job_before_sent_mono=900.0, final_kind="finished", final_mono=901.0)
        for n in (4, 5)
    ]
    scores, events = run_score(answered, links(*answered), LoopMonitor(), FixedClock(2000.0))
    assert scores.online_count(HOTKEY, str(AO)) == 2 and scores.online_count("other", str(AO)) == 0
    for j in answered:
        assert j.status == "COMPLETED" and j.multiplier == DynamicValues().manifest_score_multiplier
        assert j.score == DynamicValues().manifest_score_multiplier and j.time_took == 1.0
    assert kinds(events) == [("MINER_SYNTHETIC_JOB_SUCCESS", "SUCCESS")] * 2


def test_an_exclusion_resolves_the_job_in_both_waits() -> None:
    events = EventLog(7, FixedClock())
    ledger = JobLedger(events)
    a, b = job(6), job(7)
    ledger.spin_up.start([a, b])
    ledger.final.start([a])
    ledger.exclude_link(cast(Any, links(a, b).by_hotkey[HOTKEY]), "reader crashed", "read")
    assert a.excluded and b.excluded and a.exception_stage == "read"
    assert ledger.spin_up.done.is_set() and ledger.final.done.is_set()
    assert kinds(events) == [("VALIDATOR_FAILURE", "GENERIC_ERROR")]  # one per miner, not per job


async def test_a_manifest_is_capped_and_its_generation_starts_at_once() -> None:
    asked: list[tuple[str, list[tuple[str, int]]]] = []

    class Factory:
        async def generate(self, hotkey: str, counts: list[tuple[str, int]], *_: Any) -> list[Any]:
            asked.append((hotkey, counts))
            return []

    events = EventLog(7, FixedClock())
    intake = ManifestIntake(
        events,
        dynamic=DynamicValues(),
        job_factory=cast(Any, Factory()),
        weights_version=4,
        difficulty="localnet",
    )
    manifest = SimpleNamespace(invalid_classes=lambda: [], executor_counts=lambda: {AO: 10**6})
    link = SimpleNamespace(hotkey=HOTKEY, name="miner", manifest=manifest)
    intake.take(cast(Any, link))
    intake.take(cast(Any, link))  # a second manifest changes nothing
    assert intake.counts == {HOTKEY: {AO: MAX_EXECUTORS_PER_CLASS}}
    await asyncio.gather(*intake.generation.values())
    assert asked == [(HOTKEY, [(str(AO), MAX_EXECUTORS_PER_CLASS)])]
    assert kinds(events) == [("MINER_SYNTHETIC_JOB_FAILURE", "MANIFEST_ERROR")]
    intake.drop(HOTKEY)
    assert intake.counts == {} and intake.generation == {}


def test_rows_hold_the_online_counts_only_once_scored() -> None:
    j = job(8, status="COMPLETED", success=True, score=1.0)
    clock = FixedClock()
    events = EventLog(7, clock)
    facts = ShardFacts(
        validator_hotkey="validator",
        ok=True,
        stage_times={},
        stats={},
        messages=Counter(),
        loop_profile={},
        start_mono=0.0,
    )
    request = SimpleNamespace(batch_id=7, shard_index=0, shard_count=1, message_id=None)
    common: dict[str, Any] = {
        "counts": {HOTKEY: {AO: 1}},
        "events": events,
        "accepting_results_until": None,
        "facts": facts,
        "clock": clock,
    }
    unscored = build_rows(cast(Any, request), [j], links(j), scores=None, **common)
    scored = build_rows(
        cast(Any, request), [j], links(j), scores=Scores({HOTKEY: Counter({str(AO): 1})}), **common
    )
    assert [m["online_executor_count"] for m in unscored.manifests] == [0]
    assert [m["online_executor_count"] for m in scored.manifests] == [1]
    assert [r["excluded_from_scoring"] for r in scored.jobs] == [False]
    assert [str(e.subtype) for e in scored.events] == ["SYNTHETIC_BATCH", "SYNTHETIC_JOB"]
