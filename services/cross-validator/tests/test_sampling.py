"""Sampling prompts into workloads and matching trusted answers (docs/crossval.md §7): the worked examples, the reference's draws, and properties."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde_cross_validator.planning import PromptParams, plan_sampling
from horde_cross_validator.sampling import (
    MAX_SEED,
    MissingAnswer,
    SamplingRun,
    WorkloadDraft,
    WorkloadPrompt,
    draw_seed,
    match_answers,
    missing_answer_event_data,
    order_series,
    pick_prompts,
    sample_all,
    series_lines,
    workload_file_text,
)


def series_of(count: int, lines: int) -> list[tuple[int, list[str]]]:
    return [(i, [f"series {i} prompt {j}" for j in range(lines)]) for i in range(count)]


# --- the worked examples (behaviour 11) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("needed", "k", "per_workload", "series", "lines", "expected"),
    [
        (5, 10, 20, 10, 240, (3, 6, 60)),
        (4, 100, 80, 8, 240, (4, 4, 400)),
        (1, 1, 5, 4, 240, (0, 0, 0)),  # only 4 prompts available: the partial workload is dropped
        (1536, 1, 240, 3072, 240, (7, 1680, 1680)),  # the defaults
    ],
)
def test_worked_examples(
    needed: int, k: int, per_workload: int, series: int, lines: int, expected: tuple[int, int, int]
) -> None:
    result = sample_all(
        series_of(series, lines),
        needed=needed,
        prompts_per_sample=k,
        prompts_per_workload=per_workload,
        rng=random.Random(1),
    )
    assert (len(result.workloads), result.samples, result.prompts) == expected
    for workload in result.workloads:
        assert len(workload.prompts) >= per_workload


def test_worked_examples_agree_with_the_plan() -> None:
    p = PromptParams(
        max_prompt_series=3500,
        target_ready=5,
        series_per_generation=25,
        prompts_in_series=240,
        prompts_per_workload=20,
        prompts_per_sample=10,
    )
    plan = plan_sampling(series_count=10, unused_samples=0, params=p)
    result = sample_all(
        series_of(10, 240),
        needed=plan.needed,
        prompts_per_sample=10,
        prompts_per_workload=20,
        rng=random.Random(2),
    )
    assert plan.target is not None
    assert (plan.target.workloads, plan.target.samples, plan.target.prompts) == (
        len(result.workloads),
        result.samples,
        result.prompts,
    )


def test_defaults_take_one_prompt_from_each_of_240_series_per_workload() -> None:
    result = sample_all(
        series_of(3072, 240),
        needed=1536,
        prompts_per_sample=1,
        prompts_per_workload=240,
        rng=random.Random(3),
    )
    for workload in result.workloads:
        assert len(workload.samples) == 240
        assert len({s.series_id for s in workload.samples}) == 240


# --- skipping, failures, seed -------------------------------------------------------------------


def test_series_with_k_lines_or_fewer_is_skipped() -> None:
    series = [(0, ["a"]), (1, []), (2, ["x", "y"])]
    result = sample_all(series, needed=1, prompts_per_sample=1, prompts_per_workload=1, rng=random.Random(0))
    assert result.skipped_series == 2
    assert [s.series_id for w in result.workloads for s in w.samples] == [2]


def test_failed_download_skips_the_series() -> None:
    series: list[tuple[int, Sequence[str] | None]] = [(0, None), (1, ["a", "b"])]
    result = sample_all(series, needed=1, prompts_per_sample=1, prompts_per_workload=1, rng=random.Random(0))
    assert result.skipped_series == 1 and result.samples == 1


def test_failed_upload_persists_nothing_and_sampling_goes_on() -> None:
    calls: list[WorkloadDraft] = []

    def upload(w: WorkloadDraft) -> bool:
        calls.append(w)
        return len(calls) != 1  # the first upload fails

    result = sample_all(
        series_of(6, 10),
        needed=2,
        prompts_per_sample=1,
        prompts_per_workload=2,
        rng=random.Random(0),
        upload=upload,
    )
    assert len(calls) == 2 and result.workloads == [calls[1]]
    assert result.samples == 2


def test_run_stops_after_a_full_workload_even_if_its_upload_failed_when_enough() -> None:
    run = SamplingRun(needed=1, prompts_per_sample=1, prompts_per_workload=1, rng=random.Random(0))
    full = run.add_series(0, ["a", "b"])
    assert full is not None
    run.workload_finished(True)
    assert run.done and run.sampled == 1 and run.workloads_created == 1
    with pytest.raises(RuntimeError):
        run.add_series(1, ["a", "b"])


def test_workload_must_be_finished_before_the_next_series() -> None:
    run = SamplingRun(needed=5, prompts_per_sample=1, prompts_per_workload=1, rng=random.Random(0))
    assert run.add_series(0, ["a", "b"]) is not None
    with pytest.raises(RuntimeError):
        run.add_series(1, ["a", "b"])


def test_one_seed_for_every_workload_of_a_run() -> None:
    result = sample_all(
        series_of(10, 5), needed=5, prompts_per_sample=1, prompts_per_workload=2, rng=random.Random(7)
    )
    assert len(result.workloads) == 3
    assert {w.seed for w in result.workloads} == {result.seed}
    assert 0 <= result.seed <= MAX_SEED


def test_draws_follow_the_reference_sequence() -> None:
    """Seed first (randint over 32 bits), then one `sample` of k lines per usable series."""
    series = series_of(6, 30)
    result = sample_all(
        series, needed=3, prompts_per_sample=2, prompts_per_workload=4, rng=random.Random(1234)
    )
    ref = random.Random(1234)
    seed = ref.randint(0, 2**32 - 1)
    picks = [tuple(ref.sample(lines, 2)) for _, lines in series]
    assert result.seed == seed
    assert [s.prompts for w in result.workloads for s in w.samples] == picks[:4]


def test_draw_seed_is_32_bit_and_deterministic() -> None:
    assert draw_seed(random.Random(5)) == draw_seed(random.Random(5))
    assert all(0 <= draw_seed(random.Random(i)) <= MAX_SEED for i in range(100))


def test_order_series_is_a_permutation() -> None:
    assert sorted(order_series(range(50), random.Random(0))) == list(range(50))


# --- files ---------------------------------------------------------------------------------------


def test_workload_file_is_newline_joined_without_trailing_newline() -> None:
    assert workload_file_text(["a", "b c", "d"]) == "a\nb c\nd"
    result = sample_all(
        [(0, ["p", "q"]), (1, ["r", "s"])],
        needed=2,
        prompts_per_sample=1,
        prompts_per_workload=2,
        rng=random.Random(0),
    )
    (workload,) = result.workloads
    assert workload.file_text() == "\n".join(workload.prompts) and not workload.file_text().endswith("\n")


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("a\nb\nc", ["a", "b", "c"]),
        ("one", ["one"]),
        ("", []),
        ("a\r\nb\n", ["a", "b"]),
        (" padded \n", [" padded "]),
    ],
)
def test_series_lines(text: str, lines: list[str]) -> None:
    assert series_lines(text) == lines


# --- trusted answers (behaviour 12) --------------------------------------------------------------


PROMPTS = [WorkloadPrompt(1, 10, "p1"), WorkloadPrompt(2, 11, "p2")]


def test_all_answers_present_are_stored() -> None:
    assert match_answers(PROMPTS, {"p1": "a1", "p2": "a2", "extra": "x"}) == {1: "a1", 2: "a2"}


def test_any_missing_answer_stores_nothing() -> None:
    missing = match_answers(PROMPTS, {"p1": "a1"})
    assert missing == MissingAnswer("p2", 11)
    wid = uuid.UUID(int=9)
    assert missing_answer_event_data(missing, wid) == {
        "unanswered_prompt_content": "p2",
        "workload_id": str(wid),
        "prompt_sample_id": 11,
    }


def test_padded_prompt_never_matches_a_stripped_answer_key() -> None:
    assert isinstance(match_answers([WorkloadPrompt(1, 1, " p ")], {"p": "a"}), MissingAnswer)


# --- properties -----------------------------------------------------------------------------------

series_strategy = st.lists(st.lists(st.text(max_size=5), max_size=12), min_size=0, max_size=25).map(
    lambda all_lines: list(enumerate(all_lines))
)


@given(series_strategy, st.integers(1, 40), st.integers(1, 5), st.integers(1, 20), st.integers(0, 2**32))
def test_properties_of_a_run(
    series: list[tuple[int, list[str]]], needed: int, k: int, per_workload: int, seed: int
) -> None:
    result = sample_all(
        series,
        needed=needed,
        prompts_per_sample=k,
        prompts_per_workload=per_workload,
        rng=random.Random(seed),
    )
    lines_of = dict(series)
    used_series: list[int] = []
    for workload in result.workloads:
        assert workload.seed == result.seed
        assert len(workload.prompts) >= per_workload
        assert len(workload.prompts) - k < per_workload  # closed as soon as it was full
        for sample in workload.samples:
            lines = lines_of[sample.series_id]
            assert len(lines) > k and len(sample.prompts) == k  # never more prompts than exist
            pool = list(lines)
            for prompt in sample.prompts:  # distinct positions of the series
                pool.remove(prompt)
            used_series.append(sample.series_id)
    # a series gives at most one sample per run: workloads are disjoint, (series, workload) unique
    assert len(used_series) == len(set(used_series))
    assert result.samples < needed + max(1, -(-per_workload // k))


@given(series_strategy, st.integers(1, 40), st.integers(1, 5), st.integers(1, 20), st.integers(0, 2**32))
def test_runs_are_deterministic_for_a_seeded_generator(
    series: list[tuple[int, list[str]]], needed: int, k: int, per_workload: int, seed: int
) -> None:
    def run() -> object:
        return sample_all(
            series,
            needed=needed,
            prompts_per_sample=k,
            prompts_per_workload=per_workload,
            rng=random.Random(seed),
        )

    assert run() == run()


@given(st.lists(st.text(), max_size=20), st.integers(0, 25), st.integers(0, 1000))
def test_pick_never_takes_more_than_exist(lines: list[str], k: int, seed: int) -> None:
    picked = pick_prompts(lines, k, random.Random(seed))
    if len(lines) <= k:
        assert picked is None
    else:
        assert picked is not None and len(picked) == k
