"""The whole LLM cross-validation pipeline over the real bus (docs/crossval.md §9): the
cross-validator's generation, sampling and answering runs, the job-runner's trusted handler, the
localnet trusted miner (docs/crossval.md §8) and moto_server. Series are the simulator's generated
prompts and the stored answers its deterministic solver's."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from horde_common import s3
from horde_common.bus import Broker
from horde_common.bus.router import Dependencies
from horde_common.config import get_settings
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload
from horde_cross_validator.answering import run_answering
from horde_cross_validator.app import router as cross_validator_router
from horde_cross_validator.generation import GenerationResult, run_generation
from horde_cross_validator.planning import PromptParams
from horde_cross_validator.runtime import CrossValidatorRuntime
from horde_cross_validator.workloads import run_sampling
from horde_job_runner.app import router as job_runner_router
from horde_job_runner.organic.handler import OrganicRuntime
from horde_localnet import keys, llm
from horde_localnet.miners import trusted_miner

pytestmark = pytest.mark.timeout(120)

VALIDATOR = keys.validator_keypair(0)
PARAMS = PromptParams(
    max_prompt_series=2,
    target_ready=1,
    series_per_generation=2,
    prompts_in_series=5,
    prompts_per_workload=2,
    prompts_per_sample=1,
)


async def no_sleep(delay: float) -> None:
    return None


async def test_generation_sampling_answering_end_to_end(sessions, vhost_url, s3_conf, monkeypatch) -> None:
    miner = trusted_miner(VALIDATOR.ss58_address)
    await miner.start()
    monkeypatch.setenv("TRUSTED_MINER_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("TRUSTED_MINER_PORT", str(miner.port))
    get_settings.cache_clear()
    settings = s3_conf.model_copy(
        update={
            "TRUSTED_MINER_ADDRESS": "127.0.0.1",
            "TRUSTED_MINER_PORT": miner.port,
        }
    )
    job_runner = Broker(vhost_url, service="job-runner", session_factory=sessions)
    cross_validator = Broker(vhost_url, service="cross-validator", session_factory=sessions)
    organic = OrganicRuntime(sessions=sessions, keypair=VALIDATOR, sleep=no_sleep)
    try:
        await job_runner.start(job_runner_router.bind(Dependencies(organic)))
        await cross_validator.start(cross_validator_router)
        runtime = CrossValidatorRuntime(
            sessions=sessions,
            settings=settings,
            publish=cross_validator.publish,
            rng=random.Random(3),
            params=PARAMS,
        )
        assert await run_generation(runtime) is GenerationResult.STORED
        async with sessions() as session:
            series = (await session.scalars(select(PromptSeries))).all()
        assert len(series) == 2
        for row in series:
            body = (await s3.download_bytes(row.s3_url)).decode()
            assert body == "\n".join(llm.generated_prompts(row.series_uuid, 5))
        assert await run_sampling(runtime) == 1
        answered = await run_answering(runtime)
        assert (answered.successes, answered.failures) == (1, 0)
        async with sessions() as session:
            workload = (await session.scalars(select(SolveWorkload))).one()
            prompts = (
                await session.execute(
                    select(Prompt.content, Prompt.answer).join(
                        PromptSample, PromptSample.id == Prompt.sample_id
                    )
                )
            ).all()
        assert workload.finished_at is not None and len(prompts) == 2
        assert all(answer == llm.answer(workload.seed, content) for content, answer in prompts)
    finally:
        await cross_validator.stop(grace_s=1.0)
        await job_runner.stop(grace_s=1.0)
        await miner.stop()
        get_settings.cache_clear()
