"""Pure rules of a batch: manifest capping, per-job verdicts and the manifest ("dance") multiplier.

Spec A §3.4–§3.5 (counting and capping), §3.10 (scoring each job), §3.15 (multiplier). Plain values
in, plain values out: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from horde_common.protocol.miner.executor_class import ExecutorClass

__all__ = [
    "FinalKind",
    "JobVerdict",
    "Verifier",
    "cap_executor_counts",
    "manifest_multiplier",
    "score_job",
    "score_str",
]


def cap_executor_counts(
    counts: Mapping[ExecutorClass, int], max_per_class: Mapping[str, int]
) -> dict[ExecutorClass, int]:
    """Apply `DYNAMIC_MINER_MAX_EXECUTORS_PER_CLASS` (already parsed): `min(count, limit)` per listed
    class, a limit of 0 disables the class, unlisted classes are unlimited; classes left at 0 drop out."""
    out: dict[ExecutorClass, int] = {}
    for executor_class, count in counts.items():
        limit = max_per_class.get(str(executor_class))
        capped = count if limit is None else min(count, limit)
        if capped > 0:
            out[executor_class] = capped
    return out


def manifest_multiplier(
    previous_online: int | None,
    current_online: int,
    *,
    weights_version: int,
    multiplier: float,
    threshold: float,
) -> float | None:
    """The dance multiplier for one (miner, class), or None for "no change" (spec A §3.15).

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
    time alone ("timed out", "took too long", "out of order"): these are excused when the validator
    itself stalled during the job's window.
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
) -> JobVerdict:
    """Spec A §3.10, steps 1–6, for one job.

    `time_took` is (validator receive time of the final response − validator time just before the
    job request was sent), or None when the job request was never sent. `verify` may raise: that is
    the validator's bug, and the caller must not blame the miner for it.
    """
    if final is None:
        return JobVerdict(
            False, None, str(no_final_reason), 0.0, time_failure=no_final_reason is NoFinalReason.TIMED_OUT
        )
    if final is FinalKind.FAILED:
        return JobVerdict(False, None, f"failed: returncode={exit_status}", 0.0)
    if time_took is None or time_took <= 0:
        return JobVerdict(False, None, "out of order job response", 0.0, out_of_order=True)
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
