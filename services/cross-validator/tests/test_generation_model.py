"""`PROMPT_GENERATION_MODEL` (docs/operations.md §2.2): the prompt generation job runs the image of
the configured model and passes the model to it; the default is `phi3`; a value that cannot be an
image-name part is refused at start."""

from __future__ import annotations

import pytest

from horde_common.config import ConfigError, Settings, load_settings
from horde_cross_validator.generation import GenerationResult, run_generation

pytestmark = pytest.mark.timeout(90)


async def test_the_generation_job_uses_the_configured_model(
    make_runtime, job_runner, miner, settings: Settings
) -> None:
    job_runner.behaviour = miner.generate
    configured = settings.model_copy(update={"PROMPT_GENERATION_MODEL": "llama3.1-8b"})
    assert await run_generation(make_runtime(settings=configured)) is GenerationResult.STORED
    [request] = job_runner.requests
    job = request.request["job"]
    assert job["docker_image"] == "backenddevelopersltd/compute-horde-prompt-gen-llama3.1-8b:v0-latest"
    args = job["args"]
    assert args[args.index("--model_name") + 1] == "llama3.1-8b"


def test_the_default_model_is_phi3_and_a_bad_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMPT_GENERATION_MODEL", raising=False)
    assert Settings(_env_file=None).PROMPT_GENERATION_MODEL == "phi3"  # type: ignore[call-arg]
    for bad in ("", "Phi3", "phi3:latest", "a/b", "x" * 65):
        monkeypatch.setenv("PROMPT_GENERATION_MODEL", bad)
        with pytest.raises(ConfigError, match="PROMPT_GENERATION_MODEL"):
            load_settings(_env_file=None)
