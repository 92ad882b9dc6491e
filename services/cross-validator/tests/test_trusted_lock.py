"""One trusted-miner job at a time across replicas, and the not-configured rule
(docs/crossval.md §9.1, §9.2): two replicas' loops run at once against one database and bus."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from horde_common.db.models import SolveWorkload
from horde_cross_validator.answering import run_answering
from horde_cross_validator.generation import GenerationResult, run_generation
from horde_cross_validator.trusted_lock import try_advisory_lock
from horde_cross_validator.workloads import run_sampling

pytestmark = pytest.mark.timeout(90)

WAIT_S = 30.0


async def test_second_replica_skips_while_a_job_runs(make_runtime, job_runner, miner, sessions) -> None:
    release = asyncio.Event()

    async def slow_generate(msg: Any) -> Any:
        await asyncio.wait_for(release.wait(), WAIT_S)
        return await miner.generate(msg)

    job_runner.behaviour = slow_generate
    replicas = [make_runtime(0), make_runtime(1)]
    tasks = [asyncio.create_task(run_generation(r)) for r in replicas]
    await asyncio.wait_for(job_runner.got_request.wait(), WAIT_S)
    done, _ = await asyncio.wait(tasks, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result() for t in done] == [GenerationResult.LOCK_HELD]
    # Answering on the replica that lost the lock stops too (a workload is waiting for it).
    async with sessions.begin() as session:
        await session.execute(insert(SolveWorkload).values(workload_uuid=uuid.uuid4(), seed=1, s3_url="x"))
    loser = replicas[tasks.index(done.pop())]
    answering = await asyncio.wait_for(run_answering(loser), WAIT_S)
    assert answering.lock_held and answering.durations == []
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert sorted(results) == sorted([GenerationResult.LOCK_HELD, GenerationResult.STORED])
    assert len(job_runner.requests) == 1 and job_runner.max_in_flight == 1


async def test_concurrent_loops_never_overlap_on_the_trusted_miner(
    make_runtime, job_runner, miner, sessions
) -> None:
    """Generation and answering loops of two replicas, several rounds at once: at most one job in flight."""

    async def either(msg: Any) -> Any:
        await asyncio.sleep(0.2)  # a job that takes a while, so the other replica's loops run meanwhile
        if msg.request["kind"] == "prompt_generation":
            return await miner.generate(msg)
        return await miner.solve(msg)

    job_runner.behaviour = either
    replicas = [make_runtime(0), make_runtime(1)]

    async def rounds(runtime: Any) -> None:
        for _ in range(3):
            await asyncio.gather(run_generation(runtime), run_sampling(runtime), run_answering(runtime))

    await asyncio.wait_for(asyncio.gather(*(rounds(r) for r in replicas)), 60)
    kinds = {r.request["kind"] for r in job_runner.requests}
    assert kinds == {"prompt_generation", "prompt_answering"}
    assert job_runner.max_in_flight == 1


async def test_lock_is_free_after_a_run(sessions) -> None:
    async with try_advisory_lock(sessions) as first:
        async with try_advisory_lock(sessions) as second:
            assert (first, second) == (True, False)
    async with try_advisory_lock(sessions) as again:
        assert again


async def test_not_configured_reports_once_a_day_and_does_nothing_else(
    make_runtime, job_runner, settings, events
) -> None:
    unset = settings.model_copy(update={"TRUSTED_MINER_ADDRESS": None, "TRUSTED_MINER_PORT": None})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    clock = {"now": now}
    runtime = make_runtime(settings=unset, now=lambda: clock["now"])
    assert await run_generation(runtime) is GenerationResult.NOT_CONFIGURED
    assert (await run_answering(runtime)).not_configured
    clock["now"] = now + timedelta(hours=23, minutes=59)
    await run_answering(runtime)
    await run_generation(runtime)
    rows = [(t, s, d) for t, s, d, _ in await events()]
    assert rows == [("LLM_PROMPT_GENERATION", "TRUSTED_MINER_NOT_CONFIGURED", {})]
    clock["now"] = now + timedelta(hours=24)
    await asyncio.gather(
        run_answering(runtime), run_answering(make_runtime(1, settings=unset, now=lambda: clock["now"]))
    )
    rows = [(t, s, d) for t, s, d, _ in await events()]
    assert rows[1:] == [("LLM_PROMPT_ANSWERING", "TRUSTED_MINER_NOT_CONFIGURED", {})]
    assert job_runner.requests == []
