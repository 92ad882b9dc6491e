"""The cross-validation rules both services share: answer check, sample taking and consumption,
the answers file, the solver command and the once-a-day rule (docs/crossval.md §7)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde_common.crossval import (
    ANSWERS_MISMATCH,
    ANSWERS_MISSING,
    AnswersFormatError,
    ExpectedPrompt,
    LlmJobRecord,
    check_answers,
    consumed_samples,
    due_once_a_day,
    parse_answers,
    solved_key,
    solver_cmd,
)

NOW = datetime(2024, 11, 20, 12, 0, tzinfo=UTC)
FILE = uuid.UUID("7d0c8e2a-1111-4222-8333-444455556666")


# --- answer check (a miner passes only if every sampled prompt has an exactly equal answer) -------


def test_all_answers_equal_passes_with_score_one() -> None:
    expected = [ExpectedPrompt("p1", "a1"), ExpectedPrompt("p2", "a2")]
    verdict = check_answers(expected, {"p1": "a1", "p2": "a2", "other": "x"})
    assert (verdict.correct, verdict.comment, verdict.score) == (True, "", 1.0)


def test_missing_prompt_fails() -> None:
    verdict = check_answers([ExpectedPrompt("p1", "a1")], {"p2": "a1"})
    assert (verdict.correct, verdict.comment, verdict.score) == (False, ANSWERS_MISSING, 0.0)


def test_different_answer_fails() -> None:
    verdict = check_answers([ExpectedPrompt("p1", "a1")], {"p1": "a1 "})
    assert (verdict.correct, verdict.comment, verdict.score) == (False, ANSWERS_MISMATCH, 0.0)


@pytest.mark.parametrize("answers", [None, {}])
def test_no_answers_downloaded_fails_as_missing(answers: dict[str, str] | None) -> None:
    assert check_answers([ExpectedPrompt("p", "a")], answers).comment == ANSWERS_MISSING


def test_first_failing_prompt_decides_the_comment() -> None:
    expected = [ExpectedPrompt("p1", "a1"), ExpectedPrompt("p2", "a2")]
    assert check_answers(expected, {"p1": "wrong"}).comment == ANSWERS_MISMATCH
    assert check_answers(expected, {"p2": "wrong"}).comment == ANSWERS_MISSING


def test_equality_is_byte_for_byte() -> None:
    assert not check_answers([ExpectedPrompt("p", "Ä")], {"p": "A\u0308"}).correct  # no normalisation
    assert not check_answers([ExpectedPrompt("p", "a")], {"p": "A"}).correct


def test_unanswered_trusted_prompt_never_matches() -> None:
    assert check_answers([ExpectedPrompt("p", None)], {"p": ""}).comment == ANSWERS_MISMATCH


@given(st.dictionaries(st.text(), st.text(), min_size=1), st.data())
def test_a_superset_of_the_trusted_answers_passes(trusted: dict[str, str], data: st.DataObject) -> None:
    extra = data.draw(st.dictionaries(st.text(), st.text()))
    expected = [ExpectedPrompt(p, a) for p, a in trusted.items()]
    assert check_answers(expected, {**extra, **trusted}).correct


@given(st.dictionaries(st.text(), st.text(), min_size=1), st.data())
def test_any_changed_answer_fails(trusted: dict[str, str], data: st.DataObject) -> None:
    prompt = data.draw(st.sampled_from(sorted(trusted)))
    changed = data.draw(st.text().filter(lambda a: a != trusted[prompt]))
    expected = [ExpectedPrompt(p, a) for p, a in trusted.items()]
    assert not check_answers(expected, {**trusted, prompt: changed}).correct


# --- answers file --------------------------------------------------------------------------------


def test_answers_file_parses_to_prompt_answer_map() -> None:
    body = json.dumps({"what is 2+2?": "4", "héllo": "wörld"}).encode()
    assert parse_answers(body) == {"what is 2+2?": "4", "héllo": "wörld"}


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'"text"', b'{"p": 1}', b'{"p": null}', b'{"p": ["a"]}', b"\xff\xfe"]
)
def test_answers_file_of_another_shape_is_an_error(body: bytes) -> None:
    with pytest.raises(AnswersFormatError):
        parse_answers(body)


def test_solver_cmd_and_answers_key() -> None:
    assert solver_cmd(1234567, FILE) == [
        "--temperature=0.5",
        "--top-p=0.8",
        "--max-tokens=256",
        "--seed",
        "1234567",
        f"/volume/{FILE}.txt",
    ]
    assert solved_key(FILE) == f"solved/{FILE}.json"


# --- consuming samples -----------------------------------------


def test_sample_consumed_whatever_the_outcome() -> None:
    jobs = [LlmJobRecord(1, 10, True), LlmJobRecord(2, 11, False)]
    assert consumed_samples(jobs) == {1: 10, 2: 11}


def test_sample_consumed_exactly_once() -> None:
    with pytest.raises(ValueError):
        consumed_samples([LlmJobRecord(1, 10, True), LlmJobRecord(1, 11, False)])


def test_once_a_day() -> None:
    assert due_once_a_day(None, NOW)
    assert not due_once_a_day(NOW - timedelta(hours=23, minutes=59), NOW)
    assert due_once_a_day(NOW - timedelta(hours=24), NOW)
