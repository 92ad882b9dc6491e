"""Samples a shard has taken but not (yet, or ever) linked to a job (docs/crossval.md, "Samples"):
they no longer count toward the pool sampling tops up, and `GET /debug/crossval` and
`horde crossval status` show them apart from the ready and the used ones."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, insert, select, update

from horde_common import s3
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload
from horde_common.service import ServiceContext
from horde_common.service.app import build_app
from horde_cross_validator.app import SPEC
from horde_cross_validator.planning import PromptParams
from horde_cross_validator.runtime import CrossValidatorRuntime
from horde_cross_validator.workloads import run_sampling

pytestmark = pytest.mark.timeout(90)

TOKEN = "crossval-taken-token"


def params(target: int, k: int, per_workload: int, max_series: int) -> PromptParams:
    return PromptParams(max_series, target, 1, 240, per_workload, k)


async def add_series(sessions: Any, settings: Any, count: int) -> None:
    """`count` series files of 240 lines in the prompts bucket."""
    bucket = settings.S3_BUCKET_NAME_PROMPTS
    rows = []
    for i in range(count):
        key = str(uuid.uuid4())
        text = "\n".join(f"series {i} prompt {j}" for j in range(240))
        await s3.put_object_async(settings, bucket, key, text.encode())
        rows.append({"series_uuid": uuid.UUID(key), "s3_url": s3.public_url(settings, bucket, key)})
    async with sessions.begin() as session:
        await session.execute(insert(PromptSeries), rows)


async def sample_count(sessions: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(PromptSample)) or 0)


async def test_taken_samples_do_not_count_toward_the_pool(make_runtime, sessions, settings, events) -> None:
    await add_series(sessions, settings, 10)
    runtime = make_runtime(params=params(5, 10, 20, 10))
    assert await run_sampling(runtime) == 3
    before = await sample_count(sessions)
    assert await run_sampling(runtime) == 0  # the pool is full: nothing to do
    async with sessions.begin() as session:
        await session.execute(update(PromptSample).values(taken_at=func.now()))  # all handed to shards
    made = await run_sampling(runtime)
    assert made is not None and made > 0
    assert await sample_count(sessions) > before
    created = [d for _, s, d, _ in await events("LLM_PROMPT_SAMPLING") if s == "NEW_WORKLOADS_CREATED"]
    assert created[-1]["unused_prompt_samples_count"] == 0


def horde(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """`horde crossval status` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", "crossval", "status", *args],
        env={**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_view_and_cli_show_taken_samples_apart(make_runtime, sessions, settings, db_url: str) -> None:
    async with sessions.begin() as session:
        workload = await session.scalar(
            insert(SolveWorkload)
            .values(workload_uuid=uuid.uuid4(), seed=1, s3_url="w", finished_at=datetime.now(UTC))
            .returning(SolveWorkload.id)
        )
        for i in range(3):
            series = await session.scalar(
                insert(PromptSeries)
                .values(series_uuid=uuid.uuid4(), s3_url=f"s{i}")
                .returning(PromptSeries.id)
            )
            sample = await session.scalar(
                insert(PromptSample)
                .values(series_id=series, workload_id=workload, taken_at=datetime.now(UTC) if i else None)
                .returning(PromptSample.id)
            )
            await session.execute(insert(Prompt).values(sample_id=sample, content="p", answer="a"))
    expected = {"used": 0, "taken": 2, "ready": 1, "unanswered": 0}
    settings = settings.model_copy(update={"DEBUG_TOKEN": SecretStr(TOKEN)})
    ctx = ServiceContext(spec=SPEC, settings=settings, session_factory=sessions)
    ctx.dependencies.add(CrossValidatorRuntime, make_runtime())
    transport = httpx.ASGITransport(app=build_app(ctx, SPEC))
    async with httpx.AsyncClient(transport=transport, base_url="http://cv") as client:
        response = await client.get("/debug/crossval", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.json()["samples"] == expected
    done = await asyncio.to_thread(horde, "--json", database_url=db_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == expected
    table = await asyncio.to_thread(horde, database_url=db_url)
    assert table.returncode == 0 and "samples taken, not linked" in table.stdout, table.stdout
