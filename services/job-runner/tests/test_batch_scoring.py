"""Pure batch rules: capping (§3.5), per-job verdicts (§3.10), the dance multiplier (§3.15), score_str."""

from __future__ import annotations

import pytest

from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_job_runner.synthetic.scoring import (
    FinalKind,
    NoFinalReason,
    cap_executor_counts,
    manifest_multiplier,
    score_job,
    score_str,
)

SPIN = ExecutorClass.SPIN_UP_4MIN_GPU_24GB
AO = ExecutorClass.ALWAYS_ON_GPU_24GB
LLM = ExecutorClass.ALWAYS_ON_LLM_A6000


def test_caps_apply_only_to_listed_classes_and_zero_disables() -> None:
    counts = {SPIN: 10, AO: 3, LLM: 7}
    assert cap_executor_counts(counts, {"always_on.llm.a6000": 5}) == {SPIN: 10, AO: 3, LLM: 5}
    assert cap_executor_counts(counts, {"always_on.gpu-24gb": 0}) == {SPIN: 10, LLM: 7}
    assert cap_executor_counts(counts, {}) == counts


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (10, 10, None),  # 10 after 10 → no change
        (10, 15, 1.3),  # 15 after 10: ratio 1.5
        (None, 3, 1.3),  # nothing recorded before
        (0, 3, 1.3),  # after 0
        (3, 0, 1.3),  # dropped to 0 (the job scores are 0 anyway)
        (10, 13, None),  # ratio 1.3 < 1.4
        (10, 14, 1.3),  # ratio exactly 1.4
        (14, 10, 1.3),  # the ratio is symmetric
    ],
)
def test_manifest_multiplier_examples(previous: int | None, current: int, expected: float | None) -> None:
    assert (
        manifest_multiplier(previous, current, weights_version=4, multiplier=1.3, threshold=1.4) == expected
    )


@pytest.mark.parametrize("weights_version", [0, 1])
def test_no_multiplier_before_weights_version_2(weights_version: int) -> None:
    assert (
        manifest_multiplier(None, 3, weights_version=weights_version, multiplier=1.3, threshold=1.4) is None
    )


@pytest.mark.parametrize(
    ("score", "text"), [(1.0, "1"), (1.3, "1.3"), (0.0, "0"), (1 / 3, "0.333333"), (1.3 * 1 / 3, "0.433333")]
)
def test_score_str_is_percent_6g(score: float, text: str) -> None:
    assert score_str(score) == text == "%.6g" % score  # noqa: UP031


def _ok(stdout: str, took: float) -> tuple[bool, str, float]:
    return (stdout.strip() == "answer", "" if stdout.strip() == "answer" else "result does not match", 1.0)


def test_no_final_response_reasons() -> None:
    v = score_job(final=None, timeout=53)
    assert (v.success, v.comment, v.score, v.time_failure) == (False, "timed out", 0.0, True)
    declined = score_job(final=None, no_final_reason=NoFinalReason.DECLINED, timeout=53)
    assert (declined.comment, declined.time_failure) == ("declined", False)
    assert score_job(final=None, no_final_reason=NoFinalReason.EXECUTOR_FAILED, timeout=53).comment == (
        "executor failed"
    )


def test_failed_job() -> None:
    v = score_job(final=FinalKind.FAILED, exit_status=1, timeout=53)
    assert (v.success, v.comment, v.score) == (False, "failed: returncode=1", 0.0)
    assert (
        score_job(final=FinalKind.FAILED, exit_status=None, timeout=53).comment == "failed: returncode=None"
    )


def test_finished_job_rules() -> None:
    good = score_job(final=FinalKind.FINISHED, stdout="answer\n", time_took=3.0, timeout=53, verify=_ok)
    assert (good.success, good.correct, good.comment, good.score) == (True, True, "", 1.0)
    wrong = score_job(final=FinalKind.FINISHED, stdout="nope", time_took=3.0, timeout=53, verify=_ok)
    assert (wrong.success, wrong.correct, wrong.score) == (False, False, 0.0)
    late = score_job(final=FinalKind.FINISHED, stdout="answer", time_took=53.5, timeout=53, verify=_ok)
    assert (late.success, late.correct, late.comment, late.score) == (
        False,
        True,  # `correct` is recorded even when the job fails on time
        "took too long: time_took_sec=53.50",
        0.0,
    )
    assert late.time_failure and late.took_too_long
    for took in (None, 0.0, -1.0):
        early = score_job(final=FinalKind.FINISHED, stdout="answer", time_took=took, timeout=53, verify=_ok)
        assert (early.success, early.comment, early.out_of_order) == (
            False,
            "out of order job response",
            True,
        )
