"""LLM prompt jobs for `always_on.llm.a6000` (docs/miner-protocol.md §3.14): the interface only.

The prompt material (answered `PromptSample`s, their series URL and workload seed, a pre-signed PUT
URL for the answers) comes from the cross-validation pipeline. Until a sample is supplied the
generator cannot be built: `NoPromptsAvailable` is raised, and the job-runner then generates no LLM
jobs for the batch and records `VALIDATOR_TELEMETRY/INSUFFICIENT_PROMPTS` (docs/miner-protocol.md §3.6).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from .base import PRESET_NVIDIA_ALL, Entropy, JobGenerator, OutputUpload, Verdict, Volume

LLM_TIMEOUT_SECONDS = 48
LLM_IMAGE = "docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest"


class NoPromptsAvailable(Exception):
    """No answered prompt sample for an LLM job: generate no LLM jobs this batch
    (docs/miner-protocol.md §3.6)."""


@dataclass(frozen=True, slots=True)
class LlmPromptSample:
    """One answered prompt sample: its series file, the workload seed and the trusted answers."""

    series_url: str
    seed: int
    expected_answers: dict[str, str]
    answers_put_url: str
    sample_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class LlmPromptsJobGenerator(JobGenerator):
    """An LLM prompt job over one prompt sample.

    Cheap to build (no hashing); `verify` needs the answers downloaded after the job
    (docs/miner-protocol.md §3.9),
    given with `set_answers`.
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
        entropy = Entropy(rng)
        self.executor_class = executor_class
        self.miner_hotkey = miner_hotkey
        self.sample = sample
        self.job_uuid: uuid.UUID = entropy.uuid4()
        self.file_uuid: uuid.UUID = entropy.uuid4()
        self.answers: dict[str, str] | None = None

    def base_docker_image_name(self) -> str:
        return LLM_IMAGE

    def docker_image_name(self) -> str:
        return LLM_IMAGE

    def docker_run_options_preset(self) -> str:
        return PRESET_NVIDIA_ALL

    def docker_run_cmd(self) -> list[str]:
        return [
            "--temperature=0.5",
            "--top-p=0.8",
            "--max-tokens=256",
            "--seed",
            str(self.sample.seed),
            f"/volume/{self.file_uuid}.txt",
        ]

    def volume(self) -> Volume:
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
                    "relative_path": f"{self.file_uuid}.json",
                    "signed_headers": None,
                }
            ],
            "system_output": None,
        }

    def timeout_seconds(self) -> int:
        return LLM_TIMEOUT_SECONDS

    def set_answers(self, answers: dict[str, str] | None) -> None:
        """The prompt -> answer JSON downloaded from the answers bucket (None if the download failed)."""
        self.answers = answers

    def verify(self, stdout: str, time_took: float) -> Verdict:
        # stdout is not looked at for LLM jobs; the downloaded answers are.
        answers = self.answers or {}
        for prompt in self.sample.expected_answers:
            if prompt not in answers:
                return Verdict(False, "result does not contain all answers", 0.0)
        for prompt, expected in self.sample.expected_answers.items():
            if answers[prompt] != expected:
                return Verdict(False, "results does not match expected answers", 0.0)
        return Verdict(True, "", 1.0)

    def job_description(self) -> str:
        return "LLM prompts synthetic job"
