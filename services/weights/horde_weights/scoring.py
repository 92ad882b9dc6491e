"""Batch scoring: one batch's stored job scores in, one score per miner hotkey out.

docs/scoring.md §1.1–§1.4. The job-runner has already judged every job and stored its final score,
the manifest ("dance") multiplier included; this module only reads those scores: it never recomputes
a job's score nor applies the multiplier again (an excused decline counts at its base score, never
multiplied). Steps: keep the jobs that count (§1.2), aggregate
per class and hotkey (§1.3), scale each class to its weight and add the classes up (§1.4).
Pure: typed values in, typed values out, no clock and no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_weights.horde_score import DEFAULT_HORDE_SCORE_PARAMS, HordeScoreParams, horde_score

__all__ = [
    "HORDE_SCORE_CLASS",
    "BatchScores",
    "ScoredJob",
    "aggregate_class",
    "counted_jobs",
    "effective_class_weights",
    "normalise_class",
    "score_batch",
    "score_batch_by_class",
]

# The one class aggregated with the horde score (docs/scoring.md §1.3); every other class is summed.
HORDE_SCORE_CLASS: Final = str(ExecutorClass.SPIN_UP_4MIN_GPU_24GB)
# Class names a weight may be given for: the live executor classes. A weight for any other name is
# skipped like a malformed pair (docs/scoring.md §1.2).
_KNOWN_CLASSES: Final = frozenset(str(c) for c in ExecutorClass)


@dataclass(frozen=True, slots=True)
class ScoredJob:
    """One `synthetic_jobs` row as scoring sees it.

    `score` is the stored final score: the job-runner's verdict for the weights version the batch
    ran with, times `multiplier` when the dance bonus applied. `multiplier` (the stored
    `score_manifest_multiplier`) and `success` are carried for reports only; scoring uses `score`
    as it is. `excluded` (`excluded_from_scoring`) marks a job lost to the validator's own fault.
    `excused` (status `EXCUSED`) marks a decline our own organic job explains: it counts as a
    completed job of its class at its base score, never multiplied (docs/scoring.md §1.2).
    """

    miner_hotkey: str
    executor_class: str
    score: float
    success: bool = False
    excluded: bool = False
    multiplier: float | None = None
    excused: bool = False

    def __post_init__(self) -> None:
        # The job-runner stores 0 or a positive score; anything else is a corrupt row, and letting it
        # through would give a NaN or a negative weight instead of a visible error.
        if not (math.isfinite(self.score) and self.score >= 0):
            raise ValueError(f"job score must be finite and >= 0, got {self.score!r}")

    @property
    def base_score(self) -> float:
        """The score before the dance multiplier (for reports: scoring never uses it)."""
        return self.score / self.multiplier if self.multiplier else self.score

    @property
    def counted_score(self) -> float:
        """What the job adds to its class: the stored score, or for an excused job its base score
        (the job-runner stores it without a multiplier; a multiplier on such a row is not honoured)."""
        return self.base_score if self.excused else self.score


@dataclass(frozen=True, slots=True)
class BatchScores:
    """A scored batch: each weighted class's shares (class → hotkey → share) and their sum per hotkey.

    A class appears when at least one counted job ran in it; a hotkey appears in `scores` when it has
    at least one counted job in a weighted class (possibly with a score of 0).
    """

    by_class: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)


def effective_class_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The class weights scoring uses, from the parsed `DYNAMIC_EXECUTOR_CLASS_WEIGHTS` map.

    The dynamic config model already skips malformed and negative pairs; this also skips names that
    are not executor classes and non-finite values (`nan`, `inf` parse as floats, but cannot be a
    share of the total).
    """
    return {
        name: float(weight)
        for name, weight in weights.items()
        if name in _KNOWN_CLASSES and math.isfinite(weight) and weight >= 0
    }


def counted_jobs(jobs: Iterable[ScoredJob], class_weights: Mapping[str, float]) -> list[ScoredJob]:
    """The jobs that count: not excluded, and of a class that has a weight (docs/scoring.md §1.2).

    An excluded job counts neither for nor against its miner: it adds nothing to the sum and does not
    raise the job count of the horde score; a miner with only excluded jobs is absent from the result.
    """
    return [job for job in jobs if not job.excluded and job.executor_class in class_weights]


def aggregate_class(
    executor_class: str,
    scores_by_hotkey: Mapping[str, Sequence[float]],
    params: HordeScoreParams = DEFAULT_HORDE_SCORE_PARAMS,
) -> dict[str, float]:
    """One class's aggregate per hotkey: the horde score for the spin-up class, else the plain sum.

    `math.fsum` keeps the sum independent of the order of the jobs.
    """
    if executor_class == HORDE_SCORE_CLASS:
        return {hotkey: horde_score(scores, params) for hotkey, scores in scores_by_hotkey.items()}
    return {hotkey: math.fsum(scores) for hotkey, scores in scores_by_hotkey.items()}


def normalise_class(aggregates: Mapping[str, float], weight: float) -> dict[str, float]:
    """Scale a class's aggregates so that they add up to the class weight (docs/scoring.md §1.4).

    A class where nobody scored (total 0) keeps its all-zero values: there is nothing to share out,
    and the class's weight is not given to anybody.
    """
    total = math.fsum(aggregates.values())
    if total == 0:
        return dict(aggregates)
    return {hotkey: weight * value / total for hotkey, value in aggregates.items()}


def score_batch_by_class(
    jobs: Iterable[ScoredJob],
    class_weights: Mapping[str, float],
    params: HordeScoreParams = DEFAULT_HORDE_SCORE_PARAMS,
) -> BatchScores:
    """Score one batch, keeping each class's shares (docs/scoring.md §1.2–§1.4).

    `class_weights` is the parsed `DYNAMIC_EXECUTOR_CLASS_WEIGHTS` (filtered here by
    `effective_class_weights`). Classes and hotkeys are emitted in sorted order, so the result does
    not depend on the order of `jobs`.
    """
    weights = effective_class_weights(class_weights)
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for job in counted_jobs(jobs, weights):
        grouped[job.executor_class][job.miner_hotkey].append(job.counted_score)

    by_class: dict[str, dict[str, float]] = {}
    for executor_class in sorted(grouped):
        per_hotkey = {hotkey: grouped[executor_class][hotkey] for hotkey in sorted(grouped[executor_class])}
        aggregates = aggregate_class(executor_class, per_hotkey, params)
        by_class[executor_class] = normalise_class(aggregates, weights[executor_class])

    shares: dict[str, list[float]] = defaultdict(list)
    for class_shares in by_class.values():
        for hotkey, share in class_shares.items():
            shares[hotkey].append(share)
    scores = {hotkey: math.fsum(shares[hotkey]) for hotkey in sorted(shares)}
    return BatchScores(by_class=by_class, scores=scores)


def score_batch(
    jobs: Iterable[ScoredJob],
    class_weights: Mapping[str, float],
    params: HordeScoreParams = DEFAULT_HORDE_SCORE_PARAMS,
) -> dict[str, float]:
    """Score one batch: hotkey → the sum over classes of its share of each class's weight.

    The scores of a batch add up to the total weight of the classes in which somebody scored.
    """
    return dict(score_batch_by_class(jobs, class_weights, params).scores)
