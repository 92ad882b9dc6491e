"""Fixtures of the cross-validator's loop tests, on the shared ones of testing/ (a migrated database
and a RabbitMQ vhost per module, fresh buckets on the real moto_server per test): an emptied database
per test, and a stand-in for the job-runner's side of `trusted.job.requested` (docs/crossval.md §9.7)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common import s3
from horde_common.bus import Broker, BusRouter, HandlerContext
from horde_common.bus.messages import TrustedJobCompleted, TrustedJobRequested
from horde_common.config import Settings
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload, SystemEvent
from horde_cross_validator.app import router as cross_validator_router
from horde_cross_validator.planning import PromptParams
from horde_cross_validator.runtime import CrossValidatorRuntime

WAIT_S = 30.0  # every wait on the bus or a task is bounded by this

Sessions = async_sessionmaker[AsyncSession]
Behaviour = Callable[[TrustedJobRequested], Awaitable[TrustedJobCompleted | None]]


# The loop tests play the job-runner over the bus, so the trusted miner is never dialled.
TRUSTED_MINER = {"TRUSTED_MINER_ADDRESS": "127.0.0.1", "TRUSTED_MINER_PORT": 1}


@pytest.fixture()
def settings(s3_conf: Settings) -> Settings:
    return s3_conf.model_copy(update=TRUSTED_MINER)


@pytest.fixture()
async def sessions(sessions: Sessions) -> Sessions:
    """The module's database (testing/fixtures_db.py) with no prompt rows and no events left by an
    earlier test."""
    async with sessions.begin() as session:
        for model in (Prompt, PromptSample, SolveWorkload, PromptSeries, SystemEvent):
            await session.execute(delete(model))
    return sessions


@pytest.fixture(scope="module")
def vhost_url(module_vhost_url: str) -> str:
    """One vhost for the module's loop tests."""
    return module_vhost_url


class FakeJobRunner:
    """The job-runner's end of `trusted.job.requested`, played by the test over the real bus: it
    does to S3 what the trusted miner's job would do (`behaviour`) and answers
    `trusted.job.completed`, or stays silent when the behaviour returns None."""

    def __init__(self, amqp_url: str) -> None:
        self.behaviour: Behaviour = succeed_silently
        self.requests: list[TrustedJobRequested] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.got_request = asyncio.Event()
        router = BusRouter()

        @router.handler(
            "job-runner.trusted.job.requested", publishes=(TrustedJobCompleted,), long_running=True
        )
        async def on_requested(msg: TrustedJobRequested, ctx: HandlerContext) -> TrustedJobCompleted | None:
            self.requests.append(msg)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.got_request.set()
            try:
                return await self.behaviour(msg)
            finally:
                self.in_flight -= 1

        self.router = router
        self.broker = Broker(amqp_url, service="job-runner")


async def succeed_silently(msg: TrustedJobRequested) -> TrustedJobCompleted | None:
    return completed(msg, True)


def completed(msg: TrustedJobRequested, success: bool, comment: str = "") -> TrustedJobCompleted:
    return TrustedJobCompleted(
        job_uuid=msg.job_uuid, workload_id=msg.workload_id, success=success, comment=comment
    )


@pytest.fixture()
async def job_runner(vhost_url: str) -> AsyncIterator[FakeJobRunner]:
    fake = FakeJobRunner(vhost_url)
    await fake.broker.start(fake.router)
    yield fake
    await fake.broker.stop(grace_s=1.0)


@pytest.fixture()
async def cv_brokers(vhost_url: str, sessions: Sessions) -> AsyncIterator[list[Broker]]:
    """Two cross-validator replicas' brokers with the service's own router (either may take a
    `trusted.job.completed`)."""
    brokers = [
        Broker(vhost_url, service="cross-validator", session_factory=sessions, instance_id=f"cv-{i}")
        for i in range(2)
    ]
    for broker in brokers:
        await broker.start(cross_validator_router)
    yield brokers
    for broker in brokers:
        await broker.stop(grace_s=1.0)


def answer_of(prompt: str) -> str:
    return f"answer to {prompt}"


class TrustedMinerActions:
    """What the trusted miner's jobs leave in S3 (docs/crossval.md §9.7): generation PUTs one series
    file per upload URL; answering reads the workload file from its volume URL and PUTs the answers."""

    answer_of = staticmethod(answer_of)
    completed = staticmethod(completed)

    @staticmethod
    async def generate(msg: TrustedJobRequested) -> TrustedJobCompleted | None:
        job = msg.request["job"]
        args: list[str] = job["args"]
        count = int(args[args.index("--number_of_prompts_per_batch") + 1])
        for upload in job["output_upload"]["uploads"]:
            body = "\n".join(f"prompt {i} of {upload['relative_path']}" for i in range(count))
            await s3.upload_bytes(upload["url"], body.encode())
        return completed(msg, True)

    @staticmethod
    async def solve(msg: TrustedJobRequested, omit: int = 0) -> TrustedJobCompleted | None:
        """Answer every prompt of the workload file but the last `omit`."""
        job = msg.request["job"]
        workload_url = job["volume"]["volumes"][0]["url"]
        prompts = (await s3.download_bytes(workload_url)).decode().split("\n")
        answers = {p.strip(): answer_of(p.strip()) for p in prompts[: len(prompts) - omit]}
        await s3.upload_bytes(job["output_upload"]["uploads"][0]["url"], json.dumps(answers).encode())
        return completed(msg, True)

    @staticmethod
    async def fail(msg: TrustedJobRequested) -> TrustedJobCompleted | None:
        return completed(msg, False, "trusted miner 127.0.0.1:1: job_failed")

    @staticmethod
    async def silent(msg: TrustedJobRequested) -> TrustedJobCompleted | None:
        return None


@pytest.fixture()
def miner() -> type[TrustedMinerActions]:
    return TrustedMinerActions


# Small pipeline: 2 series of 5 prompts per generation; sampling starts at 2 series and makes one
# workload of 2 one-prompt samples.
PARAMS = PromptParams(
    max_prompt_series=2,
    target_ready=1,
    series_per_generation=2,
    prompts_in_series=5,
    prompts_per_workload=2,
    prompts_per_sample=1,
)


@pytest.fixture()
def make_runtime(
    sessions: Sessions, settings: Settings, cv_brokers: list[Broker]
) -> Callable[..., CrossValidatorRuntime]:
    """A replica's runtime (`replica` 0 or 1: its own broker), pinned parameters, a seeded rng."""

    def make(replica: int = 0, **overrides: Any) -> CrossValidatorRuntime:
        values: dict[str, Any] = {
            "sessions": sessions,
            "settings": settings,
            "publish": cv_brokers[replica].publish,
            "rng": random.Random(7),
            "params": PARAMS,
            "outcome_grace_s": 5.0,
        }
        values.update(overrides)
        return CrossValidatorRuntime(**values)

    return make


async def event_rows(sessions: Sessions, type_: str | None = None) -> list[tuple[str, str, dict, str]]:
    """(type, subtype, data, description) of the recorded events, oldest first."""
    from sqlalchemy import select

    query = select(SystemEvent.type, SystemEvent.subtype, SystemEvent.data, SystemEvent.long_description)
    if type_ is not None:
        query = query.where(SystemEvent.type == type_)
    async with sessions() as session:
        return [(t, s, d, x) for t, s, d, x in await session.execute(query.order_by(SystemEvent.id))]


@pytest.fixture()
def events(sessions: Sessions) -> Callable[..., Awaitable[list[tuple[str, str, dict, str]]]]:
    return lambda type_=None: event_rows(sessions, type_)
