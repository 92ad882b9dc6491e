"""Prompt sampling and trusted answers, the pure part: seeds, picking prompts, workload files and
matching the trusted miner's answers to the workload's prompts (docs/crossval.md §7).

Sampling is sans-I/O: `SamplingRun` is fed one series at a time (its lines, or None when the
download failed) and hands back a full workload to upload; the caller uploads it, persists it and
says whether the upload worked. Randomness comes from the `random.Random` passed in, drawn in the
reference's order (the run's seed first, then one `sample` per usable series), so a seeded
generator reproduces a run exactly.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "MAX_SEED",
    "MissingAnswer",
    "SampleDraft",
    "SamplingResult",
    "SamplingRun",
    "WorkloadDraft",
    "WorkloadPrompt",
    "draw_seed",
    "match_answers",
    "missing_answer_event_data",
    "order_series",
    "pick_prompts",
    "sample_all",
    "series_lines",
    "workload_file_text",
]

T = TypeVar("T")

# The solver's seed is an unsigned 32-bit value (vLLM's seed range); SolveWorkload.seed stores it.
MAX_SEED = 2**32 - 1


def draw_seed(rng: random.Random) -> int:
    """One seed for a whole sampling run: every workload of the run is answered with it."""
    return rng.randint(0, MAX_SEED)


def series_lines(text: str) -> list[str]:
    """A series file's prompts: one per line (any line ending), an empty file has none. Lines are
    kept as they are, not stripped (the solver strips; a padded prompt never gets an answer)."""
    return text.splitlines()


def order_series(series_ids: Iterable[T], rng: random.Random) -> list[T]:
    """The series in random order, so runs do not keep sampling the same series first.

    Use another generator than the run's (or the database's random order) to keep the run's own
    draws in the reference's sequence.
    """
    out = list(series_ids)
    rng.shuffle(out)
    return out


def pick_prompts(lines: Sequence[str], k: int, rng: random.Random) -> list[str] | None:
    """k lines at distinct positions, uniformly at random; None when the series has k lines or fewer
    (strictly more than k are required)."""
    if len(lines) <= k:
        return None
    return rng.sample(list(lines), k)


def workload_file_text(prompts: Sequence[str]) -> str:
    """The workload file the trusted miner's solver reads: the prompts joined with newlines, no
    trailing newline."""
    return "\n".join(prompts)


@dataclass(frozen=True, slots=True)
class SampleDraft:
    """One PromptSample to be: k prompts of one series."""

    series_id: int
    prompts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkloadDraft:
    """A full workload to upload and persist: its seed and samples, in the order they were taken."""

    seed: int
    samples: tuple[SampleDraft, ...]

    @property
    def prompts(self) -> list[str]:
        return [p for sample in self.samples for p in sample.prompts]

    def file_text(self) -> str:
        return workload_file_text(self.prompts)


class SamplingRun:
    """One sampling run: fills workloads of at least L prompts from series until `needed` samples
    have been uploaded.

    Feed series with `add_series`; when it returns a workload, upload it and call
    `workload_finished(uploaded)` before the next series. The run is `done` once the samples of
    uploaded workloads reach `needed` (checked after each full workload, whether its upload worked
    or not). Series that run out first leave a partial workload, which is discarded.
    Persistence failures after a good upload still count: the reference counts an uploaded
    workload as sampled whatever its save did.
    """

    def __init__(
        self,
        *,
        needed: int,
        prompts_per_sample: int,
        prompts_per_workload: int,
        rng: random.Random,
        seed: int | None = None,
    ) -> None:
        if needed <= 0:
            raise ValueError("a sampling run needs at least one sample to make")
        if prompts_per_sample <= 0 or prompts_per_workload <= 0:
            raise ValueError("prompts per sample and per workload must be positive")
        self.needed = needed
        self.k = prompts_per_sample
        self.per_workload = prompts_per_workload
        self.rng = rng
        self.seed = draw_seed(rng) if seed is None else seed
        self.sampled = 0  # samples of uploaded workloads
        self.workloads_created = 0
        self.skipped_series = 0  # too few lines, or not downloaded
        self.done = False
        self._samples: list[SampleDraft] = []
        self._prompt_count = 0
        self._pending: WorkloadDraft | None = None

    @property
    def partial(self) -> tuple[SampleDraft, ...]:
        """The samples of the workload being filled (discarded if the run ends here)."""
        return tuple(self._samples)

    def add_series(self, series_id: int, lines: Sequence[str] | None) -> WorkloadDraft | None:
        """Take k prompts of this series into the current workload; the workload when it is full.

        `lines` None means the download failed (the caller records it): the series is skipped.
        """
        if self.done:
            raise RuntimeError("sampling run is done")
        if self._pending is not None:
            raise RuntimeError("call workload_finished for the full workload first")
        picked = None if lines is None else pick_prompts(lines, self.k, self.rng)
        if picked is None:
            self.skipped_series += 1
            return None
        self._samples.append(SampleDraft(series_id, tuple(picked)))
        self._prompt_count += len(picked)
        if self._prompt_count < self.per_workload:
            return None
        self._pending = WorkloadDraft(self.seed, tuple(self._samples))
        return self._pending

    def workload_finished(self, uploaded: bool) -> None:
        """The full workload was uploaded (and saved) or not; start the next one unless done."""
        if self._pending is None:
            raise RuntimeError("no full workload waiting")
        if uploaded:
            self.sampled += len(self._pending.samples)
            self.workloads_created += 1
        self._pending = None
        self._samples = []
        self._prompt_count = 0
        if self.sampled >= self.needed:
            self.done = True


@dataclass(frozen=True, slots=True)
class SamplingResult:
    seed: int
    workloads: list[WorkloadDraft] = field(default_factory=list)  # uploaded ones
    discarded: tuple[SampleDraft, ...] = ()  # the partial workload at the end
    skipped_series: int = 0

    @property
    def samples(self) -> int:
        return sum(len(w.samples) for w in self.workloads)

    @property
    def prompts(self) -> int:
        return sum(len(w.prompts) for w in self.workloads)


def sample_all(
    series: Iterable[tuple[int, Sequence[str] | None]],
    *,
    needed: int,
    prompts_per_sample: int,
    prompts_per_workload: int,
    rng: random.Random,
    upload: Callable[[WorkloadDraft], bool] = lambda _w: True,
) -> SamplingResult:
    """A whole run over `series` (already in the order to visit) with a synchronous `upload`.

    The asynchronous service drives `SamplingRun` itself; this is the same loop for callers (and
    tests) whose uploads need no event loop.
    """
    run = SamplingRun(
        needed=needed,
        prompts_per_sample=prompts_per_sample,
        prompts_per_workload=prompts_per_workload,
        rng=rng,
    )
    uploaded: list[WorkloadDraft] = []
    for series_id, lines in series:
        full = run.add_series(series_id, lines)
        if full is None:
            continue
        ok = upload(full)
        if ok:
            uploaded.append(full)
        run.workload_finished(ok)
        if run.done:
            break
    return SamplingResult(run.seed, uploaded, run.partial, run.skipped_series)


# --- trusted answers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadPrompt:
    """A prompt of a workload that has no answer yet."""

    prompt_id: int
    sample_id: int
    content: str


@dataclass(frozen=True, slots=True)
class MissingAnswer:
    """The first prompt the trusted miner's answers do not cover."""

    content: str
    sample_id: int


def match_answers(
    prompts: Sequence[WorkloadPrompt], answers: Mapping[str, str]
) -> dict[int, str] | MissingAnswer:
    """Prompt id -> trusted answer for every unanswered prompt of the workload, or the first prompt
    without an answer. All or nothing: one missing prompt means nothing is stored and the workload
    stays unfinished, to be answered again on a later run. Matching is by exact content."""
    out: dict[int, str] = {}
    for prompt in prompts:
        if prompt.content not in answers:
            return MissingAnswer(prompt.content, prompt.sample_id)
        out[prompt.prompt_id] = answers[prompt.content]
    return out


def missing_answer_event_data(missing: MissingAnswer, workload_uuid: uuid.UUID) -> dict[str, Any]:
    """LLM_PROMPT_ANSWERS_MISSING data."""
    return {
        "unanswered_prompt_content": missing.content,
        "workload_id": str(workload_uuid),
        "prompt_sample_id": missing.sample_id,
    }
