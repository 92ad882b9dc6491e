"""`horde debug run-organic-job` as operators run it (a subprocess) against real Postgres and
simulated miners on free ports (docs/operations.md §3.5). The metagraph snapshot is seeded as in
`services/job-runner/tests/test_organic_jobs.py`; nothing sleeps to synchronise: the command's own
exit is the end of each job.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db.models.chain import Neuron
from horde_common.db.models.organic import OrganicJob
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.fixtures_db import truncate

pytestmark = pytest.mark.timeout(120)

Sessions = async_sessionmaker[AsyncSession]
AO = "always_on.gpu-24gb"  # no spin-up: the simulated miner is ready at once
BLOCK = 7
CLI_TIMEOUT_S = 90.0  # a subprocess start plus one job on a local simulated miner; seconds in practice


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, "neurons, organic_jobs, system_events, outbox")
    yield sessions


async def seed_snapshot(sessions: Sessions, neurons: list[tuple[int, str, int, bool]]) -> None:
    """One snapshot at `BLOCK`: (uid, hotkey, port, serving) on 127.0.0.1."""
    async with sessions.begin() as session:
        for uid, hotkey, port, serving in neurons:
            session.add(
                Neuron(
                    block=BLOCK,
                    uid=uid,
                    hotkey=hotkey,
                    axon_ip="127.0.0.1",
                    axon_port=port,
                    is_serving=serving,
                )
            )


async def horde(database_url: str, *args: str) -> Run:
    """`horde debug run-organic-job ARGS` in a subprocess, on this loop (the miners serve meanwhile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTKEY_", "DATABASE_"))}
    env |= {"DATABASE_URL": database_url, "HOTKEY_SEED": keys.validator_seed(0), "COLUMNS": "300"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "horde_cli.main",
        "debug",
        "run-organic-job",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    return Run(proc.returncode or 0, out.decode(), err.decode())


def status_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("job status:")]


async def rows(sessions: Sessions) -> list[OrganicJob]:
    async with sessions() as session:
        return list(await session.scalars(select(OrganicJob)))


async def test_completing_job_prints_accepted_then_completed(sessions: Sessions, db_url: str) -> None:
    """No --miner-hotkey: the first serving neuron that is not this validator (uid order)."""
    own = keys.validator_keypair(0).ss58_address
    async with MinerFleet(1, executors={AO: 1}, first_index=360, run_scripts=True) as fleet:
        miner, port = fleet.miners[0], fleet.miners[0].port  # the port is 0 again once stopped
        idle = keys.miner_keypair(361).ss58_address
        await seed_snapshot(
            sessions, [(0, idle, 1, False), (1, own, port, True), (2, miner.hotkey, port, True)]
        )
        run = await horde(
            db_url,
            "--executor-class",
            AO,
            "--raw-script",
            "import sys; print('hello', *sys.argv[1:])",
            "--timeout",
            "30",
            "--",
            "--flag",
            "x",
        )
    assert run.code == 0, run.err
    assert f"picked miner {miner.hotkey} at 127.0.0.1:{port}" in run.out
    statuses = status_lines(run.out)
    assert [line.split()[2] for line in statuses] == ["accepted", "completed"]
    assert f"Miner {miner.hotkey}(127.0.0.1:{port}) finished" in statuses[1]
    # The simulated executor runs no script: it answers with what a real one would have run, so the
    # arguments after -- and the script are in its stdout (docs/organic.md §9).
    script_bytes = len("import sys; print('hello', *sys.argv[1:])")
    (row,) = await rows(sessions)
    assert (row.source, row.status, row.miner_hotkey) == ("cli", "COMPLETED", miner.hotkey)
    first, second = row.stdout.splitlines()
    assert first.startswith("simulated: ") and first.endswith(" --flag x"), row.stdout
    assert second == f"raw_script: {script_bytes} bytes, not run"
    assert "--flag x" in run.out
    assert f"job {row.job_uuid} done: COMPLETED" in run.out
    async with sessions() as session:  # the facilitator never sent this job: no status goes to it
        queued = (await session.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
    assert queued == 0


async def test_declining_miner_exits_1_with_the_rejection(sessions: Sessions, db_url: str) -> None:
    async with MinerFleet(1, executors={AO: 1}, behaviours={365: "decline"}, first_index=365) as fleet:
        miner = fleet.miners[0]
        await seed_snapshot(sessions, [(0, miner.hotkey, miner.port, True)])
        run = await horde(db_url, "--miner-hotkey", miner.hotkey, "--executor-class", AO)
    assert run.code == 1, run.err
    statuses = status_lines(run.out)
    assert len(statuses) == 1 and statuses[0].startswith("job status: rejected")
    assert "won't do job" in statuses[0] and "V0DeclineJobRequest" in statuses[0]
    (row,) = await rows(sessions)
    assert row.status == "FAILED"
    assert f"job {row.job_uuid} done: FAILED" in run.out


async def test_unknown_miner_hotkey_exits_1_without_a_job(sessions: Sessions, db_url: str) -> None:
    await seed_snapshot(sessions, [(0, keys.miner_keypair(370).ss58_address, 1, True)])
    stranger = keys.miner_keypair(371).ss58_address
    run = await horde(db_url, "--miner-hotkey", stranger)
    assert run.code == 1
    assert f"miner {stranger} is not in the newest metagraph snapshot (block {BLOCK})" in run.err
    assert status_lines(run.out) == []
    assert await rows(sessions) == []


async def test_unknown_executor_class_is_a_config_error(db_url: str) -> None:
    run = await horde(db_url, "--executor-class", "no-such-class")
    assert run.code == 2
    assert "config error: unknown executor class 'no-such-class'" in run.err
