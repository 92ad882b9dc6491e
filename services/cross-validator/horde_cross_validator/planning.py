"""When the cross-validator generates, samples and answers prompts (pure: counts in, decisions out).

The periodic loops read counts from the database, ask these functions what to do, then do it
(docs/crossval.md §7). Nothing here reads a clock or a
database: times and counts are passed in, so every rule is tested with plain values.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from horde_common.crossval import LLM_JOB_TIMEOUT_S, due_once_a_day
from horde_common.dynamic_config_model import DynamicSettings

__all__ = [
    "ANSWERING_BUDGET_S",
    "ANSWERING_TOTAL_TIMEOUT_S",
    "ANSWERING_WAIT_TIMEOUT_S",
    "GENERATION_TIMEOUT_S",
    "GenerationPlan",
    "GenerationSkip",
    "PromptParams",
    "SamplingPlan",
    "SamplingSkip",
    "WorkloadTarget",
    "answering_may_continue",
    "answering_summary_event_data",
    "generation_cmd",
    "generation_success_event_data",
    "new_workloads_event_data",
    "plan_generation",
    "plan_sampling",
    "required_series_to_start_sampling",
    "should_report_trusted_miner_not_configured",
    "trusted_miner_configured",
    "workload_target",
]

# The answering loop runs every 5 min with a 290 s soft limit; stopping when the time spent plus
# one average workload would pass 260 s leaves the last job room to finish before the limit.
ANSWERING_BUDGET_S = 260.0
# An A6000 executor spins up in up to 240 s (at least 10 s is allowed for any class); the solver
# then has its 48 s.
ANSWERING_SPIN_UP_S = max(240, 10)
ANSWERING_TOTAL_TIMEOUT_S = LLM_JOB_TIMEOUT_S + ANSWERING_SPIN_UP_S
ANSWERING_WAIT_TIMEOUT_S = LLM_JOB_TIMEOUT_S
# Prompt generation is one job per 5-min period: it must end within the period.
GENERATION_TIMEOUT_S = 300
# Generator arguments fixed by the prompt-generation image's v0 contract.
GENERATION_BATCH_SIZE = 250
GENERATION_MAX_NEW_TOKENS = 40


@dataclass(frozen=True, slots=True)
class PromptParams:
    """The DYNAMIC_* prompt parameters, read once per run so a config change never lands mid-run."""

    max_prompt_series: int
    target_ready: int  # unused samples the pool is topped up to
    series_per_generation: int
    prompts_in_series: int
    prompts_per_workload: int
    prompts_per_sample: int  # k: prompts taken from one series into one sample

    @classmethod
    def from_settings(cls, settings: DynamicSettings) -> PromptParams:
        return cls(
            max_prompt_series=settings.max_prompt_series,
            target_ready=settings.target_number_of_prompt_samples_ready,
            series_per_generation=settings.prompts_series_in_a_single_generation,
            prompts_in_series=settings.number_of_prompts_in_series,
            prompts_per_workload=settings.number_of_prompts_per_workload,
            prompts_per_sample=settings.number_of_prompts_to_sample_from_series,
        )


# --- trusted miner --------------------------------------------------------------------------------


def trusted_miner_configured(address: str | None, port: int | None) -> bool:
    """Configured when both the address and the port are set; the key may be empty."""
    return bool(address) and bool(port)


def should_report_trusted_miner_not_configured(last_reported_at: datetime | None, now: datetime) -> bool:
    """TRUSTED_MINER_NOT_CONFIGURED is recorded at most once a day.

    `last_reported_at` is the latest such event of either task (generation or answering): the two
    share one suppression, so whichever fires first silences the other for 24 h.
    """
    return due_once_a_day(last_reported_at, now)


# --- generation -----------------------------------------------------------------------------------


class GenerationSkip(StrEnum):
    UNANSWERED_WORKLOADS = "unanswered_workloads"  # answering has priority on the trusted miner
    SERIES_CAP = "series_cap"  # enough series: generation stops for good


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    skip: GenerationSkip | None
    series_to_request: int  # N new series in one job; 0 when skipped
    prompts_per_series: int  # P
    started_event_data: dict[str, Any]  # PROMPT_GENERATION_STARTED data (when not skipped)

    @property
    def run(self) -> bool:
        return self.skip is None


def plan_generation(*, series_count: int, unfinished_workloads: int, params: PromptParams) -> GenerationPlan:
    """Whether to run one generation job now, and for how many series.

    Skipped while any workload is unanswered (so generation never starves answering) and once the
    series count reaches the cap. Otherwise a full N series are requested even when fewer would
    reach the cap: the cap stops the next run, it does not trim this one.
    """
    skip: GenerationSkip | None = None
    if unfinished_workloads > 0:
        skip = GenerationSkip.UNANSWERED_WORKLOADS
    elif series_count >= params.max_prompt_series:
        skip = GenerationSkip.SERIES_CAP
    return GenerationPlan(
        skip=skip,
        series_to_request=0 if skip else params.series_per_generation,
        prompts_per_series=params.prompts_in_series,
        started_event_data={
            "prompt_series_count": series_count,
            "expected_prompt_series_count": params.max_prompt_series,
        },
    )


def generation_cmd(model: str, prompts_per_series: int, series_uuids: Sequence[uuid.UUID]) -> list[str]:
    """The prompt generator's argv; the uuids in the same order as the uploads."""
    return [
        "--quantize",
        "--model_name",
        model,
        f"--batch_size={GENERATION_BATCH_SIZE}",
        "--num_return_sequences=1",
        f"--max_new_tokens={GENERATION_MAX_NEW_TOKENS}",
        "--number_of_prompts_per_batch",
        str(prompts_per_series),
        "--uuids",
        ",".join(str(u) for u in series_uuids),
    ]


def generation_success_event_data(
    *, started_at: datetime, completed_at: datetime, count: int
) -> dict[str, Any]:
    """SUCCESS data of a generation run: ISO times, the duration in seconds and the series stored."""
    return {
        "started_at": started_at.isoformat(),
        "completed_at": completed_at.isoformat(),
        "duration": (completed_at - started_at).total_seconds(),
        "count": count,
    }


# --- sampling -------------------------------------------------------------------------------------


class SamplingSkip(StrEnum):
    NOT_ENOUGH_SERIES = "not_enough_series"
    ENOUGH_UNUSED_SAMPLES = "enough_unused_samples"


@dataclass(frozen=True, slots=True)
class WorkloadTarget:
    """What a sampling run makes when every series is usable and every upload succeeds."""

    workloads: int
    samples_per_workload: int
    samples: int
    prompts: int
    series_needed: int  # each sample comes from a different series


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    skip: SamplingSkip | None
    needed: int  # samples still wanted: the run stops once it has sampled at least this many
    event_data: dict[str, Any]  # PROMPT_SAMPLING_SKIPPED data (when skipped)
    target: WorkloadTarget | None  # None when skipped

    @property
    def run(self) -> bool:
        return self.skip is None


def required_series_to_start_sampling(params: PromptParams) -> int:
    """Sampling waits for twice the target in series, capped at the series cap so that a cap below
    twice the target still lets sampling start."""
    return min(2 * params.target_ready, params.max_prompt_series)


def workload_target(needed: int, params: PromptParams, usable_series: int | None = None) -> WorkloadTarget:
    """Whole workloads until at least `needed` samples exist (a partial workload is never made).

    A workload closes once it holds at least L prompts, i.e. after ceil(L / k) samples; the run
    stops after the first workload that brings the samples to `needed` or more. With
    `usable_series` given, only as many whole workloads as those series fill are counted.
    """
    k, per_workload_prompts = params.prompts_per_sample, params.prompts_per_workload
    per_workload = max(1, math.ceil(per_workload_prompts / k)) if k > 0 else 0
    if needed <= 0 or per_workload == 0:
        return WorkloadTarget(0, per_workload, 0, 0, 0)
    workloads = math.ceil(needed / per_workload)
    if usable_series is not None:
        workloads = min(workloads, usable_series // per_workload)
    samples = workloads * per_workload
    return WorkloadTarget(workloads, per_workload, samples, samples * k, samples)


def plan_sampling(*, series_count: int, unused_samples: int, params: PromptParams) -> SamplingPlan:
    """Whether to sample now, and how many samples are wanted.

    `unused_samples` counts every sample no synthetic job has used, answered or not: samples
    waiting for answers already count toward the target.
    """
    required = required_series_to_start_sampling(params)
    if series_count < required:
        return SamplingPlan(
            SamplingSkip.NOT_ENOUGH_SERIES,
            0,
            {
                "prompt_series_count": series_count,
                "required_prompt_series_count_to_start_sampling": required,
            },
            None,
        )
    needed = params.target_ready - unused_samples
    if needed <= 0:
        return SamplingPlan(
            SamplingSkip.ENOUGH_UNUSED_SAMPLES,
            0,
            {
                "unused_prompt_samples_count": unused_samples,
                "target_unused_prompt_samples_count": params.target_ready,
            },
            None,
        )
    return SamplingPlan(None, needed, {}, workload_target(needed, params, series_count))


def new_workloads_event_data(*, created: int, series_count: int, unused_samples: int) -> dict[str, Any]:
    """NEW_WORKLOADS_CREATED data: the counts the run started from, and what it made."""
    return {
        "new_workloads_count": created,
        "prompt_series_count": series_count,
        "unused_prompt_samples_count": unused_samples,
    }


# --- answering ------------------------------------------------------------------------------------


def answering_may_continue(durations_s: Sequence[float], budget_s: float = ANSWERING_BUDGET_S) -> bool:
    """Whether to answer another workload after those that took `durations_s`.

    The next one is expected to take the average so far: continue while the time spent plus that
    average stays within the budget. The first workload is always attempted.
    """
    if not durations_s:
        return True
    total = sum(durations_s)
    return total + total / len(durations_s) <= budget_s


def answering_summary_event_data(
    *,
    started_at: datetime,
    completed_at: datetime,
    durations_s: Sequence[float],
    successes: int,
    failures: int,
) -> dict[str, Any]:
    """SUCCESS data of an answering run (recorded only when at least one workload was attempted)."""
    return {
        "started_at": started_at.isoformat(),
        "completed_at": completed_at.isoformat(),
        "task_duration": (completed_at - started_at).total_seconds(),
        "times": list(durations_s),
        "job_success_count": successes,
        "job_failure_count": failures,
    }
