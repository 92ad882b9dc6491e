"""When to generate, sample and answer prompts (docs/crossval.md §7): thresholds, the worked examples (docs/crossval.md §7.3) as counts, the answering budget, and the
once-a-day TRUSTED_MINER_NOT_CONFIGURED rule."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde_common.dynamic_config_model import DynamicSettings
from horde_cross_validator.planning import (
    ANSWERING_TOTAL_TIMEOUT_S,
    ANSWERING_WAIT_TIMEOUT_S,
    GenerationSkip,
    PromptParams,
    SamplingSkip,
    answering_may_continue,
    answering_summary_event_data,
    generation_cmd,
    generation_success_event_data,
    new_workloads_event_data,
    plan_generation,
    plan_sampling,
    required_series_to_start_sampling,
    should_report_trusted_miner_not_configured,
    trusted_miner_configured,
    workload_target,
)

NOW = datetime(2024, 11, 20, 12, 0, tzinfo=UTC)
# The reference's defaults (late November 2024), not the dynamic config's current ones.
DEFAULTS = PromptParams(
    max_prompt_series=3500,
    target_ready=1536,
    series_per_generation=25,
    prompts_in_series=240,
    prompts_per_workload=240,
    prompts_per_sample=1,
)


def params(**changes: int) -> PromptParams:
    return dataclasses.replace(DEFAULTS, **changes)


def test_params_read_from_dynamic_settings() -> None:
    settings = DynamicSettings.model_validate(
        {
            "DYNAMIC_MAX_PROMPT_SERIES": 3500,
            "DYNAMIC_TARGET_NUMBER_OF_PROMPT_SAMPLES_READY": 1536,
            "DYNAMIC_PROMPTS_SERIES_IN_A_SINGLE_GENERATION": 25,
            "DYNAMIC_NUMBER_OF_PROMPTS_IN_SERIES": 240,
            "DYNAMIC_NUMBER_OF_PROMPTS_PER_WORKLOAD": 240,
            "DYNAMIC_NUMBER_OF_PROMPTS_TO_SAMPLE_FROM_SERIES": 1,
        }
    )
    assert PromptParams.from_settings(settings) == DEFAULTS


# --- trusted miner -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port", "configured"),
    [
        ("10.0.0.1", 8000, True),
        ("", 8000, False),
        (None, 8000, False),
        ("10.0.0.1", 0, False),
        ("h", None, False),
    ],
)
def test_trusted_miner_configured_needs_address_and_port(
    address: str | None, port: int | None, configured: bool
) -> None:
    assert trusted_miner_configured(address, port) is configured


def test_not_configured_event_at_most_once_a_day() -> None:
    assert should_report_trusted_miner_not_configured(None, NOW)
    assert not should_report_trusted_miner_not_configured(NOW - timedelta(hours=1), NOW)
    assert not should_report_trusted_miner_not_configured(
        NOW - timedelta(hours=23, minutes=59, seconds=59), NOW
    )
    assert should_report_trusted_miner_not_configured(NOW - timedelta(hours=24), NOW)


# --- generation (behaviour 10) -------------------------------------------------------------------


def test_generation_triggers_below_the_cap() -> None:
    plan = plan_generation(series_count=4, unfinished_workloads=0, params=params(max_prompt_series=5))
    assert plan.run and plan.series_to_request == 25 and plan.prompts_per_series == 240
    assert plan.started_event_data == {"prompt_series_count": 4, "expected_prompt_series_count": 5}


def test_generation_skipped_at_the_cap() -> None:
    plan = plan_generation(series_count=10, unfinished_workloads=0, params=params(max_prompt_series=5))
    assert not plan.run and plan.skip is GenerationSkip.SERIES_CAP and plan.series_to_request == 0
    plan = plan_generation(series_count=5, unfinished_workloads=0, params=params(max_prompt_series=5))
    assert plan.skip is GenerationSkip.SERIES_CAP


def test_generation_skipped_while_any_workload_is_unanswered() -> None:
    plan = plan_generation(series_count=0, unfinished_workloads=1, params=DEFAULTS)
    assert plan.skip is GenerationSkip.UNANSWERED_WORKLOADS and plan.series_to_request == 0


def test_generation_requests_full_runs_even_near_the_cap() -> None:
    plan = plan_generation(series_count=3499, unfinished_workloads=0, params=DEFAULTS)
    assert plan.series_to_request == 25


def test_generation_cmd() -> None:
    uuids = [uuid.UUID(int=1), uuid.UUID(int=2)]
    assert generation_cmd("phi3", 99, uuids) == [
        "--quantize",
        "--model_name",
        "phi3",
        "--batch_size=250",
        "--num_return_sequences=1",
        "--max_new_tokens=40",
        "--number_of_prompts_per_batch",
        "99",
        "--uuids",
        f"{uuids[0]},{uuids[1]}",
    ]


def test_generation_success_event_data() -> None:
    data = generation_success_event_data(started_at=NOW, completed_at=NOW + timedelta(seconds=90), count=25)
    assert data == {
        "started_at": NOW.isoformat(),
        "completed_at": (NOW + timedelta(seconds=90)).isoformat(),
        "duration": 90.0,
        "count": 25,
    }


# --- sampling thresholds (behaviour 11) ----------------------------------------------------------


def test_sampling_needs_twice_the_target_capped_at_the_max() -> None:
    assert required_series_to_start_sampling(DEFAULTS) == 3072
    assert required_series_to_start_sampling(params(target_ready=2000)) == 3500


def test_sampling_skipped_with_too_few_series() -> None:
    plan = plan_sampling(series_count=3071, unused_samples=0, params=DEFAULTS)
    assert plan.skip is SamplingSkip.NOT_ENOUGH_SERIES and not plan.run
    assert plan.event_data == {
        "prompt_series_count": 3071,
        "required_prompt_series_count_to_start_sampling": 3072,
    }


def test_sampling_skipped_when_unused_samples_reach_the_target() -> None:
    plan = plan_sampling(series_count=3500, unused_samples=1536, params=DEFAULTS)
    assert plan.skip is SamplingSkip.ENOUGH_UNUSED_SAMPLES
    assert plan.event_data == {
        "unused_prompt_samples_count": 1536,
        "target_unused_prompt_samples_count": 1536,
    }


def test_sampling_tops_up_to_the_target() -> None:
    plan = plan_sampling(series_count=3072, unused_samples=1000, params=DEFAULTS)
    assert plan.run and plan.needed == 536


@pytest.mark.parametrize(
    ("target", "k", "per_workload", "series", "expected"),
    [
        # the worked examples: (workloads, samples, prompts)
        (5, 10, 20, 10, (3, 6, 60)),
        (4, 100, 80, 8, (4, 4, 400)),
        (1, 1, 5, 4, (0, 0, 0)),
    ],
)
def test_worked_examples_as_counts(
    target: int, k: int, per_workload: int, series: int, expected: tuple[int, int, int]
) -> None:
    p = params(target_ready=target, prompts_per_sample=k, prompts_per_workload=per_workload)
    plan = plan_sampling(series_count=series, unused_samples=0, params=p)
    assert plan.run and plan.target is not None
    assert (plan.target.workloads, plan.target.samples, plan.target.prompts) == expected


def test_defaults_make_seven_workloads_of_240_prompts() -> None:
    plan = plan_sampling(series_count=3072, unused_samples=0, params=DEFAULTS)
    assert plan.target is not None
    assert (plan.target.workloads, plan.target.samples_per_workload, plan.target.samples) == (7, 240, 1680)
    assert plan.target.series_needed == 1680


@given(
    st.integers(min_value=1, max_value=5000),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=1, max_value=500),
)
def test_target_reaches_needed_with_one_workload_at_most_to_spare(
    needed: int, k: int, per_workload: int
) -> None:
    t = workload_target(needed, params(prompts_per_sample=k, prompts_per_workload=per_workload))
    assert t.samples >= needed > t.samples - t.samples_per_workload
    assert t.samples_per_workload * k >= per_workload > (t.samples_per_workload - 1) * k


def test_new_workloads_event_data() -> None:
    assert new_workloads_event_data(created=7, series_count=3072, unused_samples=0) == {
        "new_workloads_count": 7,
        "prompt_series_count": 3072,
        "unused_prompt_samples_count": 0,
    }


# --- answering (behaviours 12, 13) ---------------------------------------------------------------


def test_answering_timeouts() -> None:
    assert (ANSWERING_TOTAL_TIMEOUT_S, ANSWERING_WAIT_TIMEOUT_S) == (288, 48)


def test_answering_first_workload_always_attempted() -> None:
    assert answering_may_continue([])


def test_answering_stops_when_spent_plus_average_passes_260s() -> None:
    assert answering_may_continue([100.0])  # 100 + 100 = 200
    assert answering_may_continue([130.0])  # 260: still within
    assert not answering_may_continue([131.0])
    assert not answering_may_continue([100.0, 80.0])  # 180 + 90 = 270


@given(st.lists(st.floats(min_value=0, max_value=300), max_size=20))
def test_answering_never_plans_past_the_budget(durations: list[float]) -> None:
    if durations and answering_may_continue(durations):
        assert sum(durations) <= 260.0


def test_answering_summary_event_data() -> None:
    data = answering_summary_event_data(
        started_at=NOW,
        completed_at=NOW + timedelta(seconds=61),
        durations_s=[30.0, 31.0],
        successes=1,
        failures=1,
    )
    assert data == {
        "started_at": NOW.isoformat(),
        "completed_at": (NOW + timedelta(seconds=61)).isoformat(),
        "task_duration": 61.0,
        "times": [30.0, 31.0],
        "job_success_count": 1,
        "job_failure_count": 1,
    }
