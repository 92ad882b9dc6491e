"""LLM jobs' samples and answers against real Postgres and the real moto S3 (127.0.0.1:9000), without
miners (docs/synthetic-batch.md, "LLM jobs"): which samples are ready, all-or-nothing taking with
INSUFFICIENT_PROMPTS, answers files a PUT reaches and a public GET
reads back, consuming samples, and whose fault each failed answers download is.

Each test seeds its own prompt rows (the tables are emptied first) and S3 objects in buckets of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select

from horde_common import s3
from horde_common.config import Settings
from horde_common.crossval import ANSWERS_MISMATCH, ANSWERS_MISSING
from horde_common.db import create_engine, session_factory
from horde_common.db.models import (
    Prompt,
    PromptSample,
    PromptSeries,
    SolveWorkload,
    SyntheticJob,
    SystemEvent,
)
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_job_runner.generators import LlmPromptSample, LlmPromptsJobGenerator, make_generator
from horde_job_runner.synthetic.ledger import JobLedger
from horde_job_runner.synthetic.llm_answers import fetch_llm_answers
from horde_job_runner.synthetic.llm_sample_store import PromptSampleStore, SampleCounts
from horde_job_runner.synthetic.llm_samples import answer_targets, take_llm_samples
from horde_job_runner.synthetic.model import JobState, SystemClock
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.shard_services import EventLog
from horde_localnet import llm
from testing.s3 import MOTO, s3_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def conf(s3_conf: Settings) -> Settings:
    return s3_conf


@pytest.fixture()
async def samples(store: BatchStore) -> AsyncIterator[PromptSampleStore]:
    async with store.sessions.begin() as session:
        await session.execute(delete(PromptSeries))
        await session.execute(delete(SolveWorkload))
    yield PromptSampleStore(store.sessions)


async def seed(
    store: BatchStore,
    conf: Settings,
    count: int,
    *,
    answered: bool = True,
    prompts_per_sample: int = 1,
    missing_answer: bool = False,
) -> list[int]:
    """`count` samples, each of its own series (uploaded to the prompts bucket) in one workload."""
    workload_seed = 1_000_003
    ids: list[int] = []
    async with store.sessions.begin() as session:
        workload = SolveWorkload(
            workload_uuid=uuid.uuid4(),
            seed=workload_seed,
            s3_url="http://unused/workload",
            finished_at=datetime.now(UTC) if answered else None,
        )
        session.add(workload)
        await session.flush()
        for _ in range(count):
            series_uuid = uuid.uuid4()
            lines = llm.generated_prompts(series_uuid, 5)
            bucket = conf.S3_BUCKET_NAME_PROMPTS
            assert bucket is not None
            await asyncio.to_thread(
                s3.put_object, conf, bucket, str(series_uuid), llm.series_text(lines).encode()
            )
            series = PromptSeries(
                series_uuid=series_uuid, s3_url=s3.public_url(conf, bucket, str(series_uuid))
            )
            session.add(series)
            await session.flush()
            sample = PromptSample(series_id=series.id, workload_id=workload.id)
            session.add(sample)
            await session.flush()
            for i, line in enumerate(lines[:prompts_per_sample]):
                known = answered and not (missing_answer and i == 0)
                session.add(
                    Prompt(
                        sample_id=sample.id,
                        content=line,
                        answer=llm.answer(workload_seed, line) if known else None,
                    )
                )
            ids.append(sample.id)
    return ids


async def stored_jobs(store: BatchStore, n: int) -> list[uuid.UUID]:
    """`n` SyntheticJob rows of a new batch (what samples are consumed by)."""
    batch_id, _ = await store.create_batch()
    uuids = [uuid.uuid4() for _ in range(n)]
    async with store.sessions.begin() as session:
        session.add_all(SyntheticJob(job_uuid=u, batch_id=batch_id, miner_hotkey="hk") for u in uuids)
    return uuids


def event_log() -> EventLog:
    return EventLog(batch_id=0, clock=SystemClock())


# --------------------------------------------------------------------------------------------- samples


async def test_only_answered_unused_complete_samples_are_ready(
    store: BatchStore, conf: Settings, samples: PromptSampleStore
) -> None:
    ready_ids = await seed(store, conf, 2, prompts_per_sample=2)
    await seed(store, conf, 1, answered=False)
    await seed(store, conf, 1, missing_answer=True)  # answered workload, but a prompt has no answer
    used = await seed(store, conf, 1)
    (job,) = await stored_jobs(store, 1)
    assert await samples.mark_used({used[0]: job}) == 1
    ready = await samples.ready(10)
    assert [r.sample_id for r in ready] == ready_ids
    first = ready[0]
    async with store.sessions() as session:
        series_url = await session.scalar(
            select(PromptSeries.s3_url)
            .join(PromptSample, PromptSample.series_id == PromptSeries.id)
            .where(PromptSample.id == first.sample_id)
        )
    assert first.series_url == series_url and first.seed == 1_000_003
    assert len(first.prompts) == 2 and all(
        p.answer == llm.answer(1_000_003, p.content) for p in first.prompts
    )
    assert await samples.counts() == SampleCounts(
        prompt_series_total_count=5,
        prompt_sample_used_count=1,
        prompt_sample_unused_answered_count=3,  # the one with a missing answer is counted, never taken
        prompt_sample_unused_unanswered_count=1,
    )
    assert len(await samples.ready(1)) == 1


async def test_taking_is_all_or_nothing_and_the_shortage_is_reported_unless_recent(
    store: BatchStore, conf: Settings, samples: PromptSampleStore
) -> None:
    await seed(store, conf, 2)
    take: dict[str, Any] = {"shard_index": 0, "db_timeout": 5.0}
    events = event_log()
    assert await take_llm_samples(samples, 3, recently_reported=False, events=events, **take) == ()
    assert events.records == []  # written at once, in a transaction of its own (test_llm_atomic.py)
    async with store.sessions() as session:
        (short,) = (
            await session.scalars(select(SystemEvent).where(SystemEvent.subtype == "INSUFFICIENT_PROMPTS"))
        ).all()
    assert (short.type, short.subtype) == ("VALIDATOR_TELEMETRY", "INSUFFICIENT_PROMPTS")
    assert short.data["llm_executor_count"] == 3 and short.data["prompt_samples_available"] == 2
    assert (
        short.data["prompt_sample_unused_answered_count"] == 2
        and short.data["prompt_series_total_count"] == 2
    )

    quiet = event_log()
    assert await take_llm_samples(samples, 3, recently_reported=True, events=quiet, **take) == ()
    assert await take_llm_samples(samples, 0, recently_reported=False, events=quiet, **take) == ()
    assert quiet.records == []  # reported within 24 h, or no LLM executor: nothing to say

    enough = event_log()
    taken = await take_llm_samples(samples, 2, recently_reported=False, events=enough, **take)
    assert len(taken) == 2 and enough.records == []
    no_db = event_log()
    assert await take_llm_samples(None, 1, recently_reported=False, events=no_db, **take) == ()
    assert [e.subtype for e in no_db.records] == ["INSUFFICIENT_PROMPTS"]


async def test_a_database_failure_while_taking_is_ours_not_a_shortage() -> None:
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    try:
        events = event_log()
        taken = await take_llm_samples(
            PromptSampleStore(session_factory(engine)),
            2,
            shard_index=0,
            recently_reported=False,
            events=events,
            db_timeout=5.0,
        )
    finally:
        await engine.dispose()
    assert taken == ()
    assert [(e.type, e.subtype) for e in events.records] == [("VALIDATOR_FAILURE", "GENERIC_ERROR")]


async def test_consuming_links_each_sample_to_its_job_once(
    store: BatchStore, conf: Settings, samples: PromptSampleStore
) -> None:
    a, b = await seed(store, conf, 2)
    first, second = await stored_jobs(store, 2)
    assert await samples.mark_used({a: first, b: second}) == 2
    (third,) = await stored_jobs(store, 1)
    assert await samples.mark_used({a: third}) == 0  # already used: never given to a second job
    async with store.sessions() as session:
        linked: dict[int, uuid.UUID] = dict(
            (
                await session.execute(
                    select(PromptSample.id, SyntheticJob.job_uuid).join(
                        SyntheticJob, SyntheticJob.id == PromptSample.synthetic_job_id
                    )
                )
            )
            .tuples()
            .all()
        )
    assert linked == {a: first, b: second}
    assert await samples.ready(10) == []


# ---------------------------------------------------------------------------------------- answers files


async def test_answers_files_take_the_miners_put_and_read_back_publicly(conf: Settings) -> None:
    targets = await asyncio.to_thread(answer_targets, conf, 2)
    assert len({t.file_uuid for t in targets}) == 2
    target = targets[0]
    assert target.get_url == f"{MOTO}/{conf.S3_BUCKET_NAME_ANSWERS}/solved/{target.file_uuid}.json"
    assert "X-Amz-Signature=" in target.put_url and "X-Amz-Signature" not in target.get_url
    await s3.upload_bytes(target.put_url, b'{"p": "a"}')
    assert await s3.download_bytes(target.get_url) == b'{"p": "a"}'
    with pytest.raises(s3.S3ConfigError):
        answer_targets(s3_settings(), 1)  # no answers bucket configured


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def finished_llm_job(seed_value: int, prompt: str, answers_url: str) -> JobState:
    gen = make_generator(
        str(LLM_EXECUTOR_CLASS),
        4,
        "hk-" + uuid.uuid4().hex[:6],
        llm_sample=LlmPromptSample(
            series_url="unused",
            seed=seed_value,
            expected_answers={prompt: llm.answer(seed_value, prompt)},
            answers_put_url="unused",
            answers_url=answers_url,
        ),
    )
    return JobState(
        job_uuid=str(gen.job_uuid),
        miner_hotkey=gen.miner_hotkey,  # type: ignore[attr-defined]
        executor_class=LLM_EXECUTOR_CLASS,
        generator=gen,
        spin_up=1.0,
        timeout=48.0,
        final_kind="finished",
    )


async def test_answers_are_downloaded_and_each_failure_blamed_on_the_right_side(conf: Settings) -> None:
    async def on_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_503, "127.0.0.1", 0)
    port_503 = server.sockets[0].getsockname()[1]
    bucket = conf.S3_BUCKET_NAME_ANSWERS
    assert bucket is not None
    prompt, seed_value = "Explain glaciers to a ten-year-old.", 77

    def put(key: str, body: bytes) -> str:
        s3.put_object(conf, bucket, key, body)
        return s3.public_url(conf, bucket, key)

    honest = await asyncio.to_thread(
        put, "solved/honest.json", llm.answers_json(llm.solve(seed_value, prompt))
    )
    cheat = await asyncio.to_thread(
        put, "solved/cheat.json", llm.answers_json(llm.solve(seed_value, prompt, wrong=True))
    )
    garbage = await asyncio.to_thread(put, "solved/garbage.json", b"[1, 2, 3]")
    huge = await asyncio.to_thread(put, "solved/huge.json", json.dumps({prompt: "x" * 5000}).encode())
    jobs = {
        "honest": finished_llm_job(seed_value, prompt, honest),
        "cheat": finished_llm_job(seed_value, prompt, cheat),
        "missing": finished_llm_job(seed_value, prompt, s3.public_url(conf, bucket, "solved/never.json")),
        "garbage": finished_llm_job(seed_value, prompt, garbage),
        "huge": finished_llm_job(seed_value, prompt, huge),
        "s3 down": finished_llm_job(seed_value, prompt, f"http://127.0.0.1:{closed_port()}/{bucket}/x.json"),
        "s3 503": finished_llm_job(seed_value, prompt, f"http://127.0.0.1:{port_503}/{bucket}/x.json"),
    }
    events = event_log()
    try:
        outcome = await fetch_llm_answers(
            list(jobs.values()), events=events, ledger=JobLedger(events), timeout_s=3.0, max_bytes=4096
        )
    finally:
        server.close()
        await server.wait_closed()
    assert (outcome.fetched, outcome.miner_failures, outcome.validator_failures) == (2, 3, 2)
    verdicts = {name: tuple(job.generator.verify("", 1.0)) for name, job in jobs.items() if not job.excluded}
    assert verdicts == {
        "honest": (True, "", 1.0),
        "cheat": (False, ANSWERS_MISMATCH, 0.0),
        "missing": (False, ANSWERS_MISSING, 0.0),
        "garbage": (False, ANSWERS_MISSING, 0.0),
        "huge": (False, ANSWERS_MISSING, 0.0),
    }
    assert {name for name, job in jobs.items() if job.excluded} == {"s3 down", "s3 503"}
    assert all(
        j.comment.startswith("validator failure: answers could not be downloaded")
        for j in jobs.values()
        if j.excluded
    )
    faults = {
        e.data["job_uuid"]: e.data["fault"]
        for e in events.records
        if e.subtype == "ERROR_DOWNLOADING_FROM_S3"
    }
    by_uuid = {job.job_uuid: name for name, job in jobs.items()}
    assert {by_uuid[u]: f for u, f in faults.items()} == {
        "missing": "miner",
        "garbage": "miner",
        "huge": "miner",
        "s3 down": "validator",
        "s3 503": "validator",
    }
    assert all(e.data["miner_hotkey"] for e in events.records)
    assert sum(1 for e in events.records if e.type == "VALIDATOR_FAILURE") == 2
    gen = jobs["honest"].generator
    assert isinstance(gen, LlmPromptsJobGenerator) and gen.answers == {prompt: llm.answer(seed_value, prompt)}
