"""`GET /debug/crossval` and `horde crossval status` report the same counts (docs/crossval.md §9.6)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import insert

from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload, SystemEvent
from horde_common.service import ServiceContext
from horde_common.service.app import build_app
from horde_cross_validator.app import SPEC
from horde_cross_validator.runtime import CrossValidatorRuntime

pytestmark = pytest.mark.timeout(90)


def horde(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """`horde crossval status` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", "crossval", "status", *args],
        env={**os.environ, "DATABASE_URL": database_url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def fill(sessions) -> None:  # type: ignore[no-untyped-def]
    """3 series; one answered workload (2 samples, one used by a job), one unanswered (1 sample)."""
    async with sessions.begin() as session:
        series = [
            await session.scalar(
                insert(PromptSeries)
                .values(series_uuid=uuid.uuid4(), s3_url=f"s{i}")
                .returning(PromptSeries.id)
            )
            for i in range(3)
        ]
        done = await session.scalar(
            insert(SolveWorkload)
            .values(workload_uuid=uuid.uuid4(), seed=1, s3_url="w1", finished_at=datetime.now(UTC))
            .returning(SolveWorkload.id)
        )
        waiting = await session.scalar(
            insert(SolveWorkload)
            .values(workload_uuid=uuid.uuid4(), seed=1, s3_url="w2")
            .returning(SolveWorkload.id)
        )
        for series_id, workload_id in ((series[0], done), (series[1], done), (series[2], waiting)):
            sample = await session.scalar(
                insert(PromptSample)
                .values(series_id=series_id, workload_id=workload_id)
                .returning(PromptSample.id)
            )
            await session.execute(insert(Prompt).values(sample_id=sample, content="p"))
        event = {"type": "LLM_PROMPT_GENERATION", "subtype": "FAILURE", "long_description": "x", "data": {}}
        await session.execute(insert(SystemEvent).values(**event))


EXPECTED = {
    "series": 3,
    "workloads": {"total": 2, "unanswered": 1},
    "samples": {"used": 0, "taken": 0, "ready": 2, "unanswered": 1},
}


async def test_debug_view_and_cli_agree(sessions, settings, make_runtime, db_url: str) -> None:
    await fill(sessions)
    settings = settings.model_copy(update={"DEBUG_TOKEN": SecretStr("crossval-view-token")})
    ctx = ServiceContext(spec=SPEC, settings=settings, session_factory=sessions)
    ctx.dependencies.add(CrossValidatorRuntime, make_runtime())
    transport = httpx.ASGITransport(app=build_app(ctx, SPEC))
    async with httpx.AsyncClient(transport=transport, base_url="http://cv") as client:
        response = await client.get(
            "/debug/crossval", headers={"Authorization": "Bearer crossval-view-token"}
        )
    assert response.status_code == 200, response.text
    view = response.json()
    assert {k: view[k] for k in EXPECTED} == EXPECTED
    assert view["trusted_miner_configured"] is True
    assert (view["last_trusted_job"]["task"], view["last_trusted_job"]["outcome"]) == (
        "LLM_PROMPT_GENERATION",
        "FAILURE",
    )
    done = await asyncio.to_thread(horde, "--json", database_url=db_url)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    assert {k: cli[k] for k in EXPECTED} == EXPECTED
    assert cli["last_trusted_job"] == view["last_trusted_job"]
    table = await asyncio.to_thread(horde, database_url=db_url)
    assert table.returncode == 0 and "2 (1 unanswered)" in table.stdout


def test_cli_dead_database_is_one_line() -> None:
    done = horde(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none")
    assert done.returncode == 1
    assert (
        done.stderr.strip().startswith("database unreachable:") and len(done.stderr.strip().splitlines()) == 1
    )
