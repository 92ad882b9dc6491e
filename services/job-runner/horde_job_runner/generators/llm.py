"""LLM prompt jobs for `always_on.llm.a6000` (docs/miner-protocol.md §3.14; docs/synthetic-batch.md,
"LLM jobs").

One job per LLM executor, each over one answered prompt sample prepared by the cross-validator: the
miner runs the prompt solver on the sample's whole series file with the sample's workload seed and
uploads its answers through a presigned PUT; after the batch the job-runner downloads them
(`synthetic/llm_answers.py`) and hands them to `set_answers`; `verify` compares the sampled prompts'
answers with the trusted ones (`horde_common.crossval.check_answers`, docs/crossval.md §7.5).

The solver image, its argv and the answers file name come from `horde_common.crossval`, which the
cross-validator's answering job uses too: only identical runs give comparable answers.
Without a sample the generator cannot be built (`NoPromptsAvailable`): the shard then generates no
LLM job (docs/miner-protocol.md §3.6).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from horde_common.crossval import (
    LLM_JOB_TIMEOUT_S,
    SOLVER_IMAGE,
    ExpectedPrompt,
    answers_file_name,
    check_answers,
    solver_cmd,
)

from .base import PRESET_NVIDIA_ALL, Entropy, JobGenerator, OutputUpload, Verdict, Volume

__all__ = [
    "LLM_IMAGE",
    "LLM_JOB_DESCRIPTION",
    "LLM_TIMEOUT_SECONDS",
    "LlmPromptSample",
    "LlmPromptsJobGenerator",
    "NoPromptsAvailable",
]

LLM_TIMEOUT_SECONDS = LLM_JOB_TIMEOUT_S
LLM_IMAGE = SOLVER_IMAGE
# Stored as `SyntheticJob.job_description`; the reference's wording, which dashboards match on.
LLM_JOB_DESCRIPTION = "LLM prompts synthetic job"


class NoPromptsAvailable(Exception):
    """No answered prompt sample for an LLM job: generate no LLM jobs this batch
    (docs/miner-protocol.md §3.6)."""


@dataclass(frozen=True, slots=True)
class LlmPromptSample:
    """Everything one LLM job needs about its sample and its answers file.

    `series_url`: the public URL of the sample's series (the job's input, all its prompts).
    `seed`: the sample's workload seed (the trusted answers were made with it).
    `expected_answers`: the sampled prompts -> trusted answers, in the sample's prompt order.
    `answers_put_url`: the presigned PUT the miner uploads `solved/{file_uuid}.json` through.
    `answers_url`: the public URL the validator reads that file back from (None: not known, tests).
    `file_uuid`: names the input and the answers file; must be the uuid the PUT URL was signed for
    (None: drawn by the generator, for tests that do not upload).
    `sample_id`: the `prompt_samples` row, marked used after the batch.
    """

    series_url: str
    seed: int
    expected_answers: Mapping[str, str]
    answers_put_url: str
    answers_url: str | None = None
    file_uuid: uuid.UUID | None = None
    sample_id: int | None = None

    def expected(self) -> tuple[ExpectedPrompt, ...]:
        return tuple(ExpectedPrompt(p, a) for p, a in self.expected_answers.items())


class LlmPromptsJobGenerator(JobGenerator):
    """An LLM prompt job over one prompt sample.

    Cheap to build (no hashing, built on the event loop). `verify` needs the answers downloaded
    after the job (docs/miner-protocol.md §3.9), given with `set_answers`.
    """

    def __init__(
        self,
        *,
        executor_class: str,
        miner_hotkey: str,
        sample: LlmPromptSample | None,
        rng: random.Random | None = None,
    ) -> None:
        if sample is None:
            raise NoPromptsAvailable("no answered prompt sample for an LLM job")
        # No `rng` (production): the job and file uuids come from the OS CSPRNG. The answers file
        # is publicly readable at a URL built from `file_uuid`, so a guessable one would let a
        # miner copy another miner's answers.
        entropy = Entropy(rng)
        self.executor_class = executor_class
        self.miner_hotkey = miner_hotkey
        self.sample = sample
        self.job_uuid: uuid.UUID = entropy.uuid4()
        self.file_uuid: uuid.UUID = sample.file_uuid if sample.file_uuid is not None else entropy.uuid4()
        self.answers: dict[str, str] | None = None
        # Why the downloaded answers do not count, when the file itself disqualifies them (an
        # upload after the finished message, `reject_answers`): the job's failure comment.
        self.rejection: str | None = None

    def base_docker_image_name(self) -> str:
        return LLM_IMAGE

    def docker_image_name(self) -> str:
        return LLM_IMAGE

    def docker_run_options_preset(self) -> str:
        return PRESET_NVIDIA_ALL

    def docker_run_cmd(self) -> list[str]:
        return solver_cmd(self.sample.seed, self.file_uuid)

    def volume(self) -> Volume:
        """The whole series file, not only the sampled prompts: the miner cannot tell which of
        them will be checked."""
        return {
            "volume_type": "multi_volume",
            "volumes": [
                {
                    "volume_type": "single_file",
                    "url": self.sample.series_url,
                    "relative_path": f"{self.file_uuid}.txt",
                }
            ],
        }

    def volume_in_initial_req(self) -> bool:
        return True

    def output_upload(self) -> OutputUpload:
        return {
            "output_upload_type": "multi_upload",
            "uploads": [
                {
                    "output_upload_type": "single_file_put",
                    "url": self.sample.answers_put_url,
                    "relative_path": answers_file_name(self.file_uuid),
                    "signed_headers": None,
                }
            ],
            "system_output": None,
        }

    def timeout_seconds(self) -> int:
        return LLM_TIMEOUT_SECONDS

    def set_answers(self, answers: Mapping[str, str] | None) -> None:
        """The downloaded prompt -> answer object (None: no usable answers).

        Only the sampled prompts' answers are kept: a miner's file holds ~240 answers (more if it
        is hostile), and the shard keeps every job's generator until it is stored.
        """
        self.rejection = None
        if answers is None:
            self.answers = None
            return
        self.answers = {p: answers[p] for p in self.sample.expected_answers if p in answers}

    def reject_answers(self, comment: str) -> None:
        """The answers file does not count, whatever it holds (it was written after the miner
        reported the job finished, docs/synthetic-batch.md "LLM jobs"): the job fails with
        `comment`."""
        self.answers = None
        self.rejection = comment

    def verify(self, stdout: str, time_took: float) -> Verdict:
        """The answers against the trusted ones; stdout is not looked at (the time limit is the
        caller's, docs/miner-protocol.md §3.10)."""
        if self.rejection is not None:
            return Verdict(False, self.rejection, 0.0)
        verdict = check_answers(self.sample.expected(), self.answers)
        return Verdict(verdict.correct, verdict.comment, verdict.score)

    def job_description(self) -> str:
        return LLM_JOB_DESCRIPTION
