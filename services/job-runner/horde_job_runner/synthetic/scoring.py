"""Pure rules of a batch: manifest capping, per-job verdicts and the manifest ("dance") multiplier.

docs/miner-protocol.md §3.4–§3.5 (counting and capping), §3.10 (scoring each job), §3.15 (multiplier);
how the shard applies them: docs/synthetic-batch.md §3–§5. Plain values in, plain values out: no
clock, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from horde_common.protocol.miner.executor_class import ExecutorClass

__all__ = [
    "EXCUSED_COMMENT",
    "EXCUSED_JOB_SCORE",
    "MAX_EXECUTORS_PER_CLASS",
    "MAX_EXECUTORS_PER_MINER",
    "CappedCounts",
    "FinalKind",
    "JobVerdict",
    "NoFinalReason",
    "Scores",
    "Verifier",
    "cap_executor_counts",
    "cap_manifest",
    "manifest_multiplier",
    "score_job",
    "score_str",
]


# Absolute ceilings on what a manifest may claim, so that no claim (10^9 executors, say) can make the
# validator build more jobs than a real miner could ever run. November-2024 miners run a handful to a
# few tens of executors per class (each one a GPU machine the miner pays for), so 128 per class is an
# order of magnitude above any honest manifest, yet 128 jobs cost only ~0.2 s of worker CPU at
# production difficulty (~1.5 ms each) and ~8 MB of job payloads (62 KB each).
MAX_EXECUTORS_PER_CLASS: Final = 128
# Over all classes of one miner: two full classes. Bounds one miner's share of a batch's generation
# (~0.4 s of worker CPU, ~16 MB of payloads) even where a dynamic per-class cap is higher.
MAX_EXECUTORS_PER_MINER: Final = 256

# The score of an excused decline (docs/synthetic-batch.md "Excused declines"): what a correct answer
# in time scores in every class under weights versions 3 and 4 (docs/miner-protocol.md §3.13; 4 in
# production), never multiplied: the executor was not tested, so no dance bonus is earned. The older
# time-based formulas have no per-class constant; there it is still 1, the reference's own value for
# an excused job.
EXCUSED_JOB_SCORE: Final = 1.0
# The stored comment of an excused job (the batch views count jobs by their status, not this text).
EXCUSED_COMMENT: Final = "excused: executor busy with an organic job of this validator"


@dataclass(frozen=True, slots=True)
class CappedCounts:
    """A manifest's counts after capping.

    `counts`: what the batch uses (jobs, `MinerManifest` rows). `excess`: class -> (claimed, kept)
    for the classes cut by the absolute ceilings, i.e. claims beyond what any miner runs: the
    miner's fault (a MANIFEST_ERROR event). A cut by a dynamic cap is the operator's policy, not a
    fault, and is not listed.
    """

    counts: dict[ExecutorClass, int]
    excess: dict[ExecutorClass, tuple[int, int]]


def cap_manifest(
    counts: Mapping[ExecutorClass, int],
    max_per_class: Mapping[str, int],
    *,
    class_ceiling: int = MAX_EXECUTORS_PER_CLASS,
    miner_ceiling: int = MAX_EXECUTORS_PER_MINER,
) -> CappedCounts:
    """Cap every class before any job is generated.

    A class listed in `DYNAMIC_MINER_MAX_EXECUTORS_PER_CLASS` (already parsed) gets `min(count,
    limit)` (0 disables it); an unlisted class gets at most `class_ceiling`. Then the classes share
    `miner_ceiling`, in the fixed order of `ExecutorClass` (never the miner's order, so that the
    miner cannot choose which class survives). Classes left at 0 drop out.
    """
    out: dict[ExecutorClass, int] = {}
    excess: dict[ExecutorClass, tuple[int, int]] = {}
    budget = miner_ceiling
    order = list(ExecutorClass)
    for executor_class in sorted(counts, key=order.index):
        claimed = counts[executor_class]
        limit = max_per_class.get(str(executor_class))
        allowed = min(claimed, limit) if limit is not None else claimed
        kept = min(allowed, budget) if limit is not None else min(allowed, class_ceiling, budget)
        kept = max(kept, 0)
        budget -= kept
        if kept < allowed:
            excess[executor_class] = (claimed, kept)
        if kept > 0:
            out[executor_class] = kept
    return CappedCounts(out, excess)


def cap_executor_counts(
    counts: Mapping[ExecutorClass, int], max_per_class: Mapping[str, int]
) -> dict[ExecutorClass, int]:
    """The counts a batch uses (`cap_manifest(...).counts`): the dynamic caps where set, otherwise
    `MAX_EXECUTORS_PER_CLASS`, and at most `MAX_EXECUTORS_PER_MINER` in all."""
    return cap_manifest(counts, max_per_class).counts


def manifest_multiplier(
    previous_online: int | None,
    current_online: int,
    *,
    weights_version: int,
    multiplier: float,
    threshold: float,
) -> float | None:
    """The dance multiplier for one (miner, class), or None for "no change" (docs/miner-protocol.md §3.15).

    Only from weights version 2. Absent previous count (not the same as 0), a zero on either side,
    or a ratio of at least `threshold` between the two counts earns the multiplier.
    """
    if weights_version < 2:
        return None
    if previous_online is None:
        return multiplier
    low, high = sorted((previous_online, current_online))
    if low == 0 or high / low >= threshold:
        return multiplier
    return None


def score_str(score: float) -> str:
    """A JobFinished receipt's `score_str`: `"%.6g"` of the final score (e.g. "1", "1.3", "0.333333")."""
    return f"{score:.6g}"


class FinalKind(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"


class NoFinalReason(StrEnum):
    """Why a job has no final response (stored as the comment; the reference said "timed out").

    NOT_SENT: our request never reached the miner because its connection failed (a miner fault).
    """

    DECLINED = "declined"
    EXECUTOR_FAILED = "executor failed"
    TIMED_OUT = "timed out"
    NOT_SENT = "not sent"


Verifier = Callable[[str, float], tuple[bool, str, float]]
"""`verify(stdout, time_took) -> (correct, comment, score)`: the generator's check (§3.13/§3.14)."""


@dataclass(frozen=True, slots=True)
class JobVerdict:
    """The outcome of `score_job`. `score` is the base score (the multiplier is applied later).

    `correct` is None when the answer was never checked. `time_failure` marks verdicts that fail on
    time alone ("timed out", "took too long"): these are excused when the validator itself stalled
    during the job's window. `out_of_order` (a final response before its job request) is never a
    time failure: the miner answered a request it had not been sent, a protocol error of its own
    whatever our loop did.
    """

    success: bool
    correct: bool | None
    comment: str
    score: float
    time_failure: bool = False
    out_of_order: bool = False
    took_too_long: bool = False


def score_job(
    *,
    final: FinalKind | None,
    no_final_reason: NoFinalReason = NoFinalReason.TIMED_OUT,
    exit_status: int | None = None,
    stdout: str = "",
    time_took: float | None = None,
    timeout: float,
    verify: Verifier | None = None,
    before_job_request: bool = False,
) -> JobVerdict:
    """docs/miner-protocol.md §3.10, steps 1–6, for one job.

    `time_took` is (validator receive time of the final response − validator time just before the
    job request was sent), or None when the job request was never sent. `before_job_request` says
    the final response arrived before we sent the job request (an out-of-order answer; a failure
    keeps the reference's "failed: returncode" comment but is flagged `out_of_order` too). `verify`
    may raise: that is the validator's bug, and the caller must not blame the miner for it.
    """
    if final is None:
        return JobVerdict(
            False, None, str(no_final_reason), 0.0, time_failure=no_final_reason is NoFinalReason.TIMED_OUT
        )
    if final is FinalKind.FAILED:
        return JobVerdict(
            False, None, f"failed: returncode={exit_status}", 0.0, out_of_order=before_job_request
        )
    if before_job_request or time_took is None or time_took <= 0:
        return JobVerdict(
            False, None, "out of order job response", 0.0, time_failure=False, out_of_order=True
        )
    if verify is None:
        raise ValueError("a finished job needs a verifier")
    correct, comment, score = verify(stdout, time_took)
    if time_took > timeout:
        return JobVerdict(
            False,
            bool(correct),
            f"took too long: time_took_sec={time_took:.2f}",
            0.0,
            time_failure=True,
            took_too_long=True,
        )
    if not correct:
        return JobVerdict(False, False, comment, 0.0)
    return JobVerdict(True, True, comment, float(score))


@dataclass(frozen=True)
class Scores:
    """What scoring found beyond each job's own verdict: the online (successful) executors per
    miner and class, stored with the manifests and read by the next batch's multiplier."""

    online: Mapping[str, Counter[str]] = field(default_factory=dict)

    def online_count(self, hotkey: str, executor_class: str) -> int:
        counts = self.online.get(hotkey)
        return counts[executor_class] if counts is not None else 0
