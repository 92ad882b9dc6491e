"""Batch scoring against worked vectors (docs/scoring.md §1.1–§1.4).

Values marked "derived" were computed by hand from the formulas of docs/scoring.md §1.3–§1.4, not
taken from a run of the November 2024 validator; the orderings next to them are what its own tests
asserted.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde_common.dynamic_config_model import DynamicSettings
from horde_weights.horde_score import (
    DEFAULT_HORDE_SCORE_PARAMS,
    HordeScoreParams,
    horde_score,
    size_factor,
)
from horde_weights.scoring import (
    BatchScores,
    ScoredJob,
    aggregate_class,
    effective_class_weights,
    score_batch,
    score_batch_by_class,
)

SPIN = "spin_up-4min.gpu-24gb"
ALWAYS_ON = "always_on.gpu-24gb"
LLM = "always_on.llm.a6000"
# The class-weight override of the reference's scoring tests.
WEIGHTS_8_2 = {SPIN: 8.0, ALWAYS_ON: 2.0}


def jobs(hotkey: str, executor_class: str, count: int, score: float) -> list[ScoredJob]:
    return [ScoredJob(hotkey, executor_class, score, success=score > 0) for _ in range(count)]


def four_miner_batch() -> list[ScoredJob]:
    """hk1 11 spin × 6; hk2 5 spin × 12; hk3 11 spin × 6 + 1 always-on × 15; hk4 40 spin × 1."""
    return [
        *jobs("hk1", SPIN, 11, 6),
        *jobs("hk2", SPIN, 5, 12),
        *jobs("hk3", SPIN, 11, 6),
        *jobs("hk3", ALWAYS_ON, 1, 15),
        *jobs("hk4", SPIN, 40, 1),
    ]


def rounded(scores: dict[str, float]) -> dict[str, float]:
    return {hotkey: round(value, 6) for hotkey, value in scores.items()}


# --- the four-miner batch under three parameter sets --------------------------------------------


def test_four_miners_default_params() -> None:
    scores = score_batch(four_miner_batch(), WEIGHTS_8_2)
    assert all(isinstance(v, float) and v > 0 for v in scores.values()) and len(scores) == 4
    assert scores["hk1"] > scores["hk2"] and scores["hk3"] > scores["hk1"] and scores["hk1"] > scores["hk4"]
    # derived
    assert rounded(scores) == {"hk1": 2.287458, "hk2": 2.012877, "hk3": 4.287458, "hk4": 1.412207}


def test_four_miners_average_param_2() -> None:
    scores = score_batch(four_miner_batch(), WEIGHTS_8_2, HordeScoreParams(avg_param=2))
    assert all(scores["hk2"] > scores[other] for other in ("hk1", "hk3", "hk4"))
    # derived
    assert rounded(scores) == {"hk1": 1.444826, "hk2": 5.08557, "hk3": 3.444826, "hk4": 0.024778}


def test_four_miners_size_params() -> None:
    params = HordeScoreParams(size_param=1.75, central_size_param=20)
    scores = score_batch(four_miner_batch(), WEIGHTS_8_2, params)
    assert all(scores["hk4"] > scores[other] for other in ("hk1", "hk2", "hk3"))
    # derived
    assert rounded(scores) == {"hk1": 1.089022, "hk2": 0.002359, "hk3": 3.089022, "hk4": 5.819596}


def test_four_miners_classes_add_up_to_the_class_weights() -> None:
    result = score_batch_by_class(four_miner_batch(), WEIGHTS_8_2)
    assert math.fsum(result.by_class[SPIN].values()) == pytest.approx(8.0)
    assert result.by_class[ALWAYS_ON] == {"hk3": 2.0}
    assert result.scores["hk3"] == pytest.approx(result.scores["hk1"] + 2.0)
    assert math.fsum(result.scores.values()) == pytest.approx(10.0)


# --- class weights -----------------------------------------------------------------------------


def test_class_weights_split_the_total_whatever_the_raw_scores() -> None:
    batch = [ScoredJob("hk1", SPIN, 0.1, success=True), ScoredJob("hk2", ALWAYS_ON, 120, success=True)]
    scores = score_batch(batch, WEIGHTS_8_2)
    total = sum(scores.values())
    assert 0.79 < scores["hk1"] / total < 0.81 and 0.19 < scores["hk2"] / total < 0.21
    assert scores == {"hk1": 8.0, "hk2": 2.0}


def test_five_miners_scored_i_under_spin_weight_100() -> None:
    """The weight-setting fixture: hotkey_i has one spin job of score i, class weight 100."""
    batch = [ScoredJob(f"hotkey_{i}", SPIN, float(i), success=True) for i in range(5)]
    scores = score_batch(batch, {SPIN: 100.0})
    assert rounded(scores) == {f"hotkey_{i}": 10.0 * i for i in range(5)}
    # derived: normalised by the total and cast to float32 these are the floats the chain call gets
    total = sum(scores.values())
    as_f32 = [struct.unpack("f", struct.pack("f", scores[f"hotkey_{i}"] / total))[0] for i in range(1, 5)]
    assert as_f32 == [0.10000000149011612, 0.20000000298023224, 0.30000001192092896, 0.4000000059604645]


def test_class_not_in_the_weight_map_is_dropped() -> None:
    """The default map (85/15) has no always-on GPU class: its jobs count for nothing."""
    weights = DynamicSettings().executor_class_weights
    batch = [ScoredJob("hk1", SPIN, 1.0), ScoredJob("hk2", ALWAYS_ON, 50.0), ScoredJob("hk3", LLM, 1.0)]
    assert score_batch(batch, weights) == {"hk1": 85.0, "hk3": 15.0}


def test_malformed_pairs_and_unknown_classes_are_skipped() -> None:
    raw = f"{SPIN}=8,garbage,{ALWAYS_ON}=x,=3,{LLM}=-1,no_such.class=5,{ALWAYS_ON}=2"
    weights = DynamicSettings.model_validate({"DYNAMIC_EXECUTOR_CLASS_WEIGHTS": raw}).executor_class_weights
    assert effective_class_weights(weights) == {SPIN: 8.0, ALWAYS_ON: 2.0}
    batch = [ScoredJob("hk1", SPIN, 1.0), ScoredJob("hk2", LLM, 9.0), ScoredJob("hk3", "no_such.class", 9.0)]
    assert score_batch(batch, weights) == {"hk1": 8.0}


def test_non_finite_weights_are_skipped() -> None:
    assert effective_class_weights({SPIN: math.nan, LLM: math.inf, ALWAYS_ON: 2.0}) == {ALWAYS_ON: 2.0}


def test_class_where_nobody_scored_keeps_its_zeros() -> None:
    batch = [ScoredJob("hk1", SPIN, 0.0), ScoredJob("hk2", SPIN, 0.0), ScoredJob("hk2", LLM, 1.0)]
    result = score_batch_by_class(batch, {SPIN: 85.0, LLM: 15.0})
    assert result.by_class == {LLM: {"hk2": 15.0}, SPIN: {"hk1": 0.0, "hk2": 0.0}}
    # The batch total is the weight of the classes where somebody scored; a zero map is not empty.
    assert result.scores == {"hk1": 0.0, "hk2": 15.0}


def test_zero_weight_class_gives_zero_shares() -> None:
    assert score_batch([ScoredJob("hk1", SPIN, 3.0)], {SPIN: 0.0}) == {"hk1": 0.0}


def test_empty_batch_scores_nobody() -> None:
    assert score_batch([], WEIGHTS_8_2) == {}
    assert score_batch_by_class([], WEIGHTS_8_2) == BatchScores()


# --- horde score ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 0.5), (2, 0.622459), (3, 0.660756), (5, 0.689974), (10, 0.710950), (100, 0.729088)],
)
def test_size_factor_with_defaults(n: int, expected: float) -> None:
    assert round(size_factor(n), 6) == expected  # derived


def test_size_factor_limit_with_defaults() -> None:
    assert round(size_factor(10**9), 6) == 0.731059 == round(1 / (1 + math.exp(-1)), 6)  # derived


@pytest.mark.parametrize("scores", [[1.0], [6.0] * 11, [12.0] * 5, [3.0, 0.0, 0.0], [0.5, 2.5, 7.0, 1.0]])
def test_horde_score_defaults_is_sum_over_one_plus_exp(scores: list[float]) -> None:
    n = len(scores)
    assert horde_score(scores) == pytest.approx(sum(scores) / (1 + math.exp(1 / n - 1)))


def test_failed_jobs_raise_n_but_add_nothing() -> None:
    """A failed job is stored with score 0: it still counts as one job of the horde."""
    batch = [ScoredJob("hk1", SPIN, 6.0, success=True), ScoredJob("hk1", SPIN, 0.0, success=False)]
    aggregate = horde_score([6.0, 0.0])
    assert aggregate == pytest.approx(6.0 * size_factor(2)) and aggregate > 6.0 * size_factor(1)
    assert score_batch(batch, {SPIN: 1.0}) == {"hk1": 1.0}


def test_all_zero_jobs_score_zero_with_alpha_zero() -> None:
    assert horde_score([0.0, 0.0]) == 0.0  # 0 ** 0 == 1: the zero comes from the sum


def test_other_classes_are_plain_sums() -> None:
    batch = [*jobs("hk1", ALWAYS_ON, 3, 1.0), *jobs("hk2", ALWAYS_ON, 1, 1.0)]
    assert score_batch(batch, {ALWAYS_ON: 4.0}) == {"hk1": 3.0, "hk2": 1.0}


def test_horde_params_defaults_and_validation() -> None:
    assert DEFAULT_HORDE_SCORE_PARAMS == HordeScoreParams(0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        HordeScoreParams(central_size_param=0)
    with pytest.raises(ValueError):
        horde_score([])
    with pytest.raises(ValueError):
        horde_score([1.0, -1.0])


def test_extreme_size_params_do_not_overflow() -> None:
    assert size_factor(1, HordeScoreParams(size_param=4, central_size_param=1000)) == 0.0


# --- stored scores: multiplier and exclusion ---------------------------------------------------


@pytest.mark.parametrize(
    ("weights_version", "curr", "prev", "stored_over_base"),
    [
        (2, 3, None, 1.05),
        (2, 3, 0, 1.05),
        (2, 10, 13, 1.0),
        (2, 13, 10, 1.0),
        (2, 15, 10, 1.05),
        (2, 10, 15, 1.05),
        (1, 1, None, 1.0),
        (2, 1, None, 1.05),
        (2, 1, 100, 1.05),
    ],
)
def test_dance_multiplier_is_read_as_stored(
    weights_version: int, curr: int, prev: int | None, stored_over_base: float
) -> None:
    """The job-runner stores score × multiplier (docs/miner-protocol.md §3.15, multiplier 1.05 and
    threshold 1.4 here, none before weights version 2); scoring neither recomputes nor reapplies
    it. Each case: `curr` successful jobs of base score 1 after `prev` online executors, next to a
    miner without the bonus. `weights_version` and `prev` only say why the stored value is what it
    is: scoring does not look at them."""
    multiplier = 1.05 if stored_over_base != 1.0 else None
    dancer = [
        ScoredJob("hk1", SPIN, stored_over_base, success=True, multiplier=multiplier) for _ in range(curr)
    ]
    steady = jobs("hk2", SPIN, curr, 1.0)
    assert all(job.base_score == pytest.approx(1.0) for job in dancer)
    assert aggregate_class(SPIN, {"hk1": [j.score for j in dancer]})["hk1"] == pytest.approx(
        curr * stored_over_base * size_factor(curr)
    )
    scores = score_batch([*dancer, *steady], {SPIN: 1.0})
    assert scores["hk1"] / scores["hk2"] == pytest.approx(stored_over_base)


def test_single_job_failed_or_finished() -> None:
    """A failed job is stored at 0, a finished one at its score (0.8 here)."""
    failed = ScoredJob("hk1", ALWAYS_ON, 0.0, success=False)
    finished = ScoredJob("hk2", ALWAYS_ON, 0.8, success=True)
    assert score_batch([failed, finished], {ALWAYS_ON: 1.0}) == {"hk1": 0.0, "hk2": 1.0}


def test_excluded_jobs_count_neither_for_nor_against() -> None:
    counted = [*jobs("hk1", SPIN, 2, 6.0), *jobs("hk2", SPIN, 1, 6.0)]
    excluded = [
        ScoredJob("hk1", SPIN, 0.0, excluded=True),  # would raise hk1's n
        ScoredJob("hk2", SPIN, 6.0, excluded=True),  # would raise hk2's sum
        ScoredJob("hk3", SPIN, 0.0, excluded=True),  # only excluded jobs: hk3 is absent
    ]
    assert score_batch([*counted, *excluded], {SPIN: 1.0}) == score_batch(counted, {SPIN: 1.0})
    assert "hk3" not in score_batch([*counted, *excluded], {SPIN: 1.0})


def test_only_excluded_jobs_give_an_empty_result() -> None:
    """A batch lost entirely to the validator's fault scores nobody (no uniform weights)."""
    assert score_batch([ScoredJob("hk1", SPIN, 0.0, excluded=True)], {SPIN: 1.0}) == {}


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_corrupt_job_score_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        ScoredJob("hk1", SPIN, bad)


# --- properties ---------------------------------------------------------------------------------

HOTKEYS = st.sampled_from(["hk0", "hk1", "hk2", "hk3", "hk4"])
CLASSES = st.sampled_from([SPIN, ALWAYS_ON, LLM, "no_such.class"])
# 0 (a failed job) or a score a real job gets; far from underflow even under the steepest params.
JOB_SCORES = st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1000.0))
SCORED_JOBS = st.builds(
    ScoredJob,
    miner_hotkey=HOTKEYS,
    executor_class=CLASSES,
    score=JOB_SCORES,
    success=st.booleans(),
    excluded=st.just(False),
    multiplier=st.sampled_from([None, 1.3]),
)
CLASS_WEIGHTS = st.dictionaries(
    st.sampled_from([SPIN, ALWAYS_ON, LLM]), st.floats(min_value=0.5, max_value=100.0), min_size=1
)
HORDE_PARAMS = st.builds(
    HordeScoreParams,
    avg_param=st.sampled_from([0.0, 1.0, 2.0]),
    size_param=st.sampled_from([0.0, 1.0, 1.75]),
    central_size_param=st.sampled_from([1.0, 5.0, 20.0]),
)


@given(batch=st.lists(SCORED_JOBS, max_size=40), weights=CLASS_WEIGHTS, params=HORDE_PARAMS, rnd=st.randoms())
def test_result_does_not_depend_on_job_order(
    batch: list[ScoredJob], weights: dict[str, float], params: HordeScoreParams, rnd: random.Random
) -> None:
    shuffled = list(batch)
    rnd.shuffle(shuffled)
    assert score_batch_by_class(shuffled, weights, params) == score_batch_by_class(batch, weights, params)


@given(
    batch=st.lists(SCORED_JOBS, max_size=30),
    excluded=st.lists(SCORED_JOBS.map(lambda j: replace(j, excluded=True)), min_size=1, max_size=10),
    weights=CLASS_WEIGHTS,
    rnd=st.randoms(),
)
def test_excluded_jobs_have_no_effect(
    batch: list[ScoredJob], excluded: list[ScoredJob], weights: dict[str, float], rnd: random.Random
) -> None:
    mixed = [*batch, *excluded]
    rnd.shuffle(mixed)
    assert score_batch_by_class(mixed, weights) == score_batch_by_class(batch, weights)


@given(batch=st.lists(SCORED_JOBS, max_size=40), weights=CLASS_WEIGHTS, params=HORDE_PARAMS)
def test_each_class_sums_to_its_weight_when_anybody_scores(
    batch: list[ScoredJob], weights: dict[str, float], params: HordeScoreParams
) -> None:
    result = score_batch_by_class(batch, weights, params)
    assert set(result.by_class) <= set(weights)
    scored_classes = 0.0
    for executor_class, shares in result.by_class.items():
        total = math.fsum(shares.values())
        if any(j.score > 0 for j in batch if j.executor_class == executor_class):
            assert total == pytest.approx(weights[executor_class], rel=1e-9)
            scored_classes += weights[executor_class]
        else:
            assert all(share == 0.0 for share in shares.values())
        assert all(share >= 0 for share in shares.values())
    assert math.fsum(result.scores.values()) == pytest.approx(scored_classes, rel=1e-9)
    counted_hotkeys = {j.miner_hotkey for j in batch if j.executor_class in weights}
    assert set(result.scores) == counted_hotkeys
