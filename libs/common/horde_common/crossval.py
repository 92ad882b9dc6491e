"""LLM cross-validation rules shared by the cross-validator and the job-runner (pure, no I/O).

The cross-validator prepares prompt samples and their trusted answers; the job-runner hands the
samples to miners' LLM jobs and checks what they return. Both sides must agree on the solver
command (the answers are only comparable when the sampling parameters match), on the layout of the
answers file, on how answers are compared, on when samples may be taken and on how they are
consumed, so those rules live here once (docs/crossval.md §7).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "ANSWERS_MISMATCH",
    "ANSWERS_MISSING",
    "EVENT_SUPPRESSION",
    "LLM_JOB_TIMEOUT_S",
    "SOLVER_IMAGE",
    "AnswerVerdict",
    "AnswersFormatError",
    "ExpectedPrompt",
    "LlmJobRecord",
    "answers_file_name",
    "check_answers",
    "consumed_samples",
    "due_once_a_day",
    "parse_answers",
    "solved_key",
    "solver_cmd",
]


# The failure comments a miner's LLM job gets; stored with the job and shown to operators, spelled
# as the reference spells them (the second one's grammar included) so dashboards keep matching.
ANSWERS_MISSING = "result does not contain all answers"
ANSWERS_MISMATCH = "results does not match expected answers"

# The solver image and sampling parameters. The trusted answers and the miners' answers are only
# comparable because both runs use exactly these (docs/crossval.md §7.4).
SOLVER_IMAGE = "docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest"
SOLVER_SAMPLING_ARGS: tuple[str, ...] = ("--temperature=0.5", "--top-p=0.8", "--max-tokens=256")
# A solver run takes about 42 s; 48 s is that plus 15 %. It is the LLM synthetic job's limit and
# the trusted-miner answering job's wait timeout.
LLM_JOB_TIMEOUT_S = 48

# "Not configured" and "insufficient prompts" say the same thing every run until an operator acts:
# recorded at most once a day.
EVENT_SUPPRESSION = timedelta(hours=24)


def solver_cmd(seed: int, file_uuid: uuid.UUID) -> list[str]:
    """The solver's argv: the same for the trusted answering job and a miner's LLM job, so the two
    answers of one prompt (same seed) can be compared byte for byte."""
    return [*SOLVER_SAMPLING_ARGS, "--seed", str(seed), f"/volume/{file_uuid}.txt"]


def answers_file_name(file_uuid: uuid.UUID) -> str:
    """The solver writes `{input stem}.json`; the input is `{file_uuid}.txt`."""
    return f"{file_uuid}.json"


def solved_key(file_uuid: uuid.UUID) -> str:
    """Where a solver run's answers are put in the answers bucket, and read back from (public URL)."""
    return f"solved/{answers_file_name(file_uuid)}"


class AnswersFormatError(ValueError):
    """The answers file is not a JSON object of string to string."""


def parse_answers(body: bytes | str) -> dict[str, str]:
    """The solver's output: a JSON object prompt text -> answer text.

    Anything else (not JSON, not an object, a non-string answer) is an error, as a failed download
    is: the caller records it and stores nothing. Strings are never coerced from other types.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnswersFormatError(f"answers are not JSON: {exc}") from None
    except RecursionError:  # `[[[[…` nested deeper than the parser's stack: a hostile file
        raise AnswersFormatError("answers are not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise AnswersFormatError(f"answers must be a JSON object, got {type(data).__name__}")
    for prompt, answer in data.items():
        if not isinstance(answer, str):
            raise AnswersFormatError(f"answer to {prompt[:80]!r} is not a string")
        if "\x00" in answer:  # PostgreSQL text cannot hold NUL: refused here, not by the database
            raise AnswersFormatError(f"answer to {prompt[:80]!r} contains a NUL character")
    return data


@dataclass(frozen=True, slots=True)
class ExpectedPrompt:
    """One prompt of a sample with its trusted answer (None while the workload is unanswered)."""

    content: str
    answer: str | None


@dataclass(frozen=True, slots=True)
class AnswerVerdict:
    correct: bool
    comment: str
    score: float


def check_answers(expected: Sequence[ExpectedPrompt], answers: Mapping[str, str] | None) -> AnswerVerdict:
    """A miner's answers against the trusted ones: every expected prompt must be a key, and its
    answer must equal the trusted answer exactly (string equality, no normalisation).

    The prompts are checked in order and the first failing one decides the comment, so with several
    prompts a mismatch before a missing prompt reports the mismatch. No answers at all (download
    failed or not done) means every prompt is missing. Success scores 1.0 with an empty comment.
    """
    got: Mapping[str, str] = answers or {}
    for prompt in expected:
        if prompt.content not in got:
            return AnswerVerdict(False, ANSWERS_MISSING, 0.0)
        if got[prompt.content] != prompt.answer:
            return AnswerVerdict(False, ANSWERS_MISMATCH, 0.0)
    return AnswerVerdict(True, "", 1.0)


@dataclass(frozen=True, slots=True)
class LlmJobRecord:
    """A generated LLM job of a batch: its sample and its stored SyntheticJob row."""

    sample_id: int
    synthetic_job_id: int
    success: bool  # not looked at: a sample is consumed whatever the outcome


def consumed_samples(jobs: Iterable[LlmJobRecord]) -> dict[int, int]:
    """Sample id -> synthetic job id for every generated LLM job, pass or fail.

    A sample is consumed exactly once: a miner that failed has still seen its prompts, so the sample
    can never be given to anyone again. Two jobs of one sample are a caller's bug (ValueError).
    """
    out: dict[int, int] = {}
    for job in jobs:
        if job.sample_id in out:
            raise ValueError(f"prompt sample {job.sample_id} given to two jobs")
        out[job.sample_id] = job.synthetic_job_id
    return out


def due_once_a_day(last_recorded_at: datetime | None, now: datetime) -> bool:
    """Whether a once-a-day event is due: never recorded, or recorded at least 24 h before `now`."""
    return last_recorded_at is None or now - last_recorded_at >= EVENT_SUPPRESSION
