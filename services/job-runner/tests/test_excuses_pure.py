"""The excused-decline rule, pure (docs/synthetic-batch.md §9): which declines our own organic jobs
excuse, and which organic jobs count as running at the moment of a decline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from horde_job_runner.synthetic.excuses import (
    ORGANIC_RUN_MAX_AGE,
    Decline,
    OrganicRun,
    busy_counts,
    excuse_declines,
)

AO = "always_on.gpu-24gb"
SPIN = "spin_up-4min.gpu-24gb"
T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def decline(n: int, miner: str = "m1", executor_class: str = AO, at: datetime = T0) -> Decline:
    return Decline(f"job-{n}", miner, executor_class, at)


def run(
    miner: str = "m1",
    executor_class: str = AO,
    started: datetime = T0 - 30 * S,
    finished: datetime | None = None,
    name: str = "organic",
) -> OrganicRun:
    return OrganicRun(name, miner, executor_class, started, finished)


def test_no_organic_job_excuses_nothing() -> None:
    declines = [decline(1), decline(2)]
    assert excuse_declines(declines, {}) == set()
    assert excuse_declines(declines, {("m1", AO): 0}) == set()
    assert busy_counts(declines, []) == {("m1", AO): 0}


def test_one_decline_one_busy_executor_is_excused() -> None:
    declines = [decline(1)]
    busy = busy_counts(declines, [run()])
    assert busy == {("m1", AO): 1}
    assert excuse_declines(declines, busy) == {"job-1"}


def test_three_declines_one_busy_executor_excuse_only_the_first() -> None:
    declines = [decline(3, at=T0 + 2 * S), decline(1, at=T0), decline(2, at=T0 + S)]
    busy = busy_counts(declines, [run()])
    assert busy == {("m1", AO): 1}
    assert excuse_declines(declines, busy) == {"job-1"}  # the earliest decline; the others score 0
    # Same arrival: the uuid breaks the tie, so the choice never depends on the order of the list.
    same = [decline(3), decline(1), decline(2)]
    assert excuse_declines(same, {("m1", AO): 1}) == {"job-1"}
    assert excuse_declines(list(reversed(same)), {("m1", AO): 2}) == {"job-1", "job-2"}


def test_a_busy_executor_of_another_class_or_miner_excuses_nothing() -> None:
    declines = [decline(1)]
    for other in (run(executor_class=SPIN), run(miner="m2")):
        busy = busy_counts(declines, [other])
        assert busy == {("m1", AO): 0}
        assert excuse_declines(declines, busy) == set()
    # And a count for another group never leaks into this one.
    assert excuse_declines(declines, {("m1", SPIN): 5, ("m2", AO): 5}) == set()


def test_more_busy_executors_than_declines_excuse_every_decline_once() -> None:
    declines = [decline(1), decline(2), decline(3, miner="m2")]
    runs = [run(name=f"o{i}") for i in range(4)] + [run(miner="m2")]
    busy = busy_counts(declines, runs)
    assert busy == {("m1", AO): 4, ("m2", AO): 1}
    assert excuse_declines(declines, busy) == {"job-1", "job-2", "job-3"}


def test_running_means_assigned_before_and_not_finished_before_the_decline() -> None:
    assert run().running_at(T0)  # still PENDING
    assert run(finished=T0 + 5 * S).running_at(T0)  # finished after the decline
    assert run(finished=T0).running_at(T0)  # finished at that very moment
    assert not run(finished=T0 - S).running_at(T0)  # finished before: the executor was free
    assert not run(started=T0 + S).running_at(T0)  # assigned only after the decline
    orphan = run(started=T0 - ORGANIC_RUN_MAX_AGE - S)  # a PENDING row nobody will finish
    assert not orphan.running_at(T0)
    assert run(started=T0 - ORGANIC_RUN_MAX_AGE).running_at(T0)


def test_the_busy_count_is_the_most_running_at_once_over_the_declines() -> None:
    # One organic job ended between two declines of the class, another started after both.
    declines = [decline(1, at=T0), decline(2, at=T0 + 10 * S)]
    runs = [
        run(name="a", finished=T0 + 5 * S),
        run(name="b"),
        run(name="c", started=T0 + 20 * S),
    ]
    assert busy_counts(declines, runs) == {("m1", AO): 2}  # a and b at the first decline
    assert busy_counts(declines[1:], runs) == {("m1", AO): 1}  # only b at the second
