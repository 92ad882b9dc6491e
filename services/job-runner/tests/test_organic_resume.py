"""Organic jobs whose job-runner died mid-attempt (docs/organic.md, "Running organic jobs: resuming
after a crash"): real Postgres, simulated miners over real sockets.

The crash is staged without sleeps: the first run's miner connections go through `KillSwitch`,
which, once killed, closes them and sends nothing more (what the kernel does for a killed process),
and the run's task is cancelled before it writes anything else. The hook that says when to kill is
the miner's own job runner (the job is executing) or the job request about to be sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import OrganicJobRequested
from horde_common.db.models import SystemEvent
from horde_common.db.models.chain import Neuron
from horde_common.db.models.organic import OrganicJob
from horde_common.protocol.miner import ExecutorClass
from horde_job_runner.organic.handler import OrganicRuntime, run_organic_job
from horde_job_runner.organic.outcomes import not_run_report
from horde_job_runner.organic.run import OrganicTimeouts
from horde_job_runner.organic.runtime import write_report
from horde_job_runner.synthetic.transport import MinerConnectionError, WebSocketTransport
from horde_localnet import keys
from horde_localnet.miners import ExecutionResult, JobState, MinerConfig, SimulatedMiner
from horde_localnet.miners.config import run_in_thread
from testing.organic_rows import job_row, statuses

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
LONG = OrganicTimeouts(total_s=60.0, wait_s=60.0)  # never reached: these jobs end on the miner's word
SHORT = OrganicTimeouts(total_s=1.0, wait_s=1.0)  # a miner that stays silent: its deadline comes soon
BLOCK = 1
Sessions = async_sessionmaker[AsyncSession]
RESUMED = ("VALIDATOR_FAILURE", "ORGANIC_JOB_RESUMED")


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


class KillSwitch:
    """The first run's miner transports: `kill()` closes them and fails every later send, as a
    SIGKILL would. With `hold_job_request`, the job request is never sent: the send parks (the
    process "dies" right there) and `job_request_held` is set."""

    def __init__(self, *, hold_job_request: bool = False) -> None:
        self.hold_job_request = hold_job_request
        self.job_request_held = asyncio.Event()
        self.killed = False
        self.transports: list[WebSocketTransport] = []

    def factory(self, url: str, **kwargs: Any) -> WebSocketTransport:
        switch = self

        class Transport(WebSocketTransport):
            async def send(self, frame: str | bytes) -> None:
                if switch.killed:
                    raise MinerConnectionError("killed")
                if switch.hold_job_request and json.loads(frame).get("message_type") == "V0JobRequest":
                    switch.job_request_held.set()
                    await asyncio.get_running_loop().create_future()  # parked until cancelled
                await super().send(frame)

            def prebuild(self, frame: str | bytes) -> bytes | None:
                return None if switch.killed else super().prebuild(frame)

            def write_prebuilt(self, wire: bytes) -> bool:
                return False if switch.killed else super().write_prebuilt(wire)

        transport = Transport(url, **kwargs)
        self.transports.append(transport)
        return transport

    async def kill(self, task: asyncio.Task[None]) -> None:
        self.killed = True
        for transport in self.transports:
            await transport.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Gate:
    """The miner's job runner: tells when the job executes, and holds it until `release`."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def run(
        self, fn: Callable[[dict[str, Any]], ExecutionResult], job: dict[str, Any]
    ) -> ExecutionResult:
        self.started.set()
        await self.release.wait()
        return await run_in_thread(fn, job)


@contextlib.asynccontextmanager
async def miner_at(sessions: Sessions, index: int, gate: Gate | None = None) -> AsyncIterator[SimulatedMiner]:
    """One simulated miner on a free port, in the metagraph snapshot."""
    config = MinerConfig(executors={ExecutorClass(AO): 1}, run_scripts=True)
    runner = gate.run if gate is not None else run_in_thread
    miner = SimulatedMiner(index, keys.miner_keypair(index), config=config, runner=runner)
    await miner.start()
    try:
        async with sessions.begin() as session:
            values = {"block": BLOCK, "uid": index, "hotkey": miner.hotkey, "axon_ip": "127.0.0.1"}
            await session.execute(
                pg_insert(Neuron).values(axon_port=miner.port, **values).on_conflict_do_nothing()
            )
        yield miner
    finally:
        await miner.stop()


def runtime(
    sessions: Sessions, timeouts: OrganicTimeouts, switch: KillSwitch | None = None
) -> OrganicRuntime:
    """One job-runner process (a new one after each "crash": nothing shared but the database)."""
    rt = OrganicRuntime(sessions=sessions, keypair=VALIDATOR, timeouts=timeouts, sleep=no_sleep)
    if switch is not None:
        rt.transport_factory = switch.factory
    return rt


async def submit(sessions: Sessions, miner_hotkey: str, **row: Any) -> OrganicJobRequested:
    """The gateway's PENDING row for a V0 job naming the miner, and its message."""
    job_uuid = uuid.uuid4()
    body: dict[str, Any] = {
        "message_type": "V0JobRequest",
        "type": "job.new",
        "uuid": str(job_uuid),
        "executor_class": AO,
    }
    body |= {"miner_hotkey": miner_hotkey, "docker_image": "img", "raw_script": "print('hi')", "args": []}
    body |= {"env": {}, "use_gpu": False, "input_url": "", "output_url": ""}
    values = {"miner_hotkey": miner_hotkey, "executor_class": AO, "status": "PENDING", "request": body} | row
    async with sessions.begin() as session:
        session.add(OrganicJob(job_uuid=job_uuid, job_description="User job from facilitator", **values))
    return OrganicJobRequested(job_uuid=job_uuid, miner_hotkey=miner_hotkey, executor_class=AO, request=body)


async def events(sessions: Sessions, job_uuid: uuid.UUID) -> list[tuple[str, str]]:
    async with sessions() as session:
        rows = await session.execute(
            select(SystemEvent.type, SystemEvent.subtype)
            .where(SystemEvent.data["job_uuid"].astext == str(job_uuid))
            .order_by(SystemEvent.id)
        )
        return [(t, s) for t, s in rows]


def finals(got: list[dict[str, Any]]) -> list[str]:
    return [s["status"] for s in got if s["status"] != "accepted"]


async def crash_while_executing(sessions: Sessions, miner: SimulatedMiner, gate: Gate) -> OrganicJobRequested:
    """Run a job until the miner executes it, kill the job-runner, then let the job finish while no
    validator connection listens: the miner keeps the outcome undelivered."""
    msg = await submit(sessions, miner.hotkey)
    switch = KillSwitch()
    task = asyncio.create_task(run_organic_job(runtime(sessions, LONG, switch), msg))
    await asyncio.wait_for(gate.started.wait(), 10)
    await switch.kill(task)
    await miner.wait_for(lambda: not miner.connections)
    gate.release.set()
    job = miner.jobs[(VALIDATOR.ss58_address, str(msg.job_uuid))]
    await miner.wait_for(lambda: job.state in (JobState.FINISHED, JobState.FAILED))
    assert job.state is JobState.FINISHED, (job.state, job.outcome)
    assert not job.outcome_delivered
    assert [s["status"] for s in await statuses(sessions, msg.job_uuid)] == ["accepted"]
    assert (await job_row(sessions, msg.job_uuid)).status == "PENDING"
    return msg


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("late", [False, True], ids=["in-time", "after-the-deadline"])
async def test_redelivery_takes_the_outcome_the_miner_kept(sessions: Sessions, late: bool) -> None:
    gate = Gate()
    async with miner_at(sessions, 460 + int(late), gate) as miner:
        msg = await crash_while_executing(sessions, miner, gate)
        if late:  # restarted long after the job's deadline: the kept outcome still counts
            async with sessions.begin() as session:
                earlier = func.now() - timedelta(hours=1)
                await session.execute(
                    update(OrganicJob).where(OrganicJob.job_uuid == msg.job_uuid).values(created_at=earlier)
                )
        await run_organic_job(runtime(sessions, LONG), msg)  # the redelivery, in a new process
        await miner.wait_for(lambda: len(miner.receipts_of_type("JobFinishedReceipt")) == 1)
        received = [t for _, t in miner.received]
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "completed"]  # one accepted, one final
    assert got[1]["miner_response"]["message_type"] == "V0JobFinishedRequest"
    row = await job_row(sessions, msg.job_uuid)
    assert row.status == "COMPLETED" and row.comment.startswith(f"Miner {miner.hotkey}(127.0.0.1:")
    # The receipts of a normal run, each once; the job was sent once, never again on resume.
    types = [str(r.payload.receipt_type) for r in miner.receipts]
    assert types == ["JobStartedReceipt", "JobAcceptedReceipt", "JobFinishedReceipt"]
    assert miner.receipts[0].payload.is_organic is True  # type: ignore[union-attr]
    assert received.count("V0InitialJobRequest") == 1 and received.count("V0JobRequest") == 1
    assert await events(sessions, msg.job_uuid) == [RESUMED, ("MINER_ORGANIC_JOB_SUCCESS", "SUCCESS")]
    await run_organic_job(runtime(sessions, LONG), msg)  # a further redelivery: the job ended
    assert len(await statuses(sessions, msg.job_uuid)) == 2


async def test_redelivery_sends_the_payload_the_miner_waits_for(sessions: Sessions) -> None:
    async with miner_at(sessions, 463) as miner:
        msg = await submit(sessions, miner.hotkey)
        switch = KillSwitch(hold_job_request=True)
        task = asyncio.create_task(run_organic_job(runtime(sessions, LONG, switch), msg))
        await asyncio.wait_for(switch.job_request_held.wait(), 10)
        await switch.kill(task)
        job = miner.jobs[(VALIDATOR.ss58_address, str(msg.job_uuid))]
        assert job.state is JobState.READY and job.job_request is None
        await miner.wait_for(lambda: not miner.connections)
        await run_organic_job(runtime(sessions, LONG), msg)
        received = [t for _, t in miner.received]
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "completed"]  # `accepted` not sent again
    assert (await job_row(sessions, msg.job_uuid)).status == "COMPLETED"
    assert received.count("V0JobRequest") == 1 and job.state is JobState.FINISHED
    assert await events(sessions, msg.job_uuid) == [RESUMED, ("MINER_ORGANIC_JOB_SUCCESS", "SUCCESS")]


async def test_a_miner_that_knows_nothing_fails_the_job_once(sessions: Sessions) -> None:
    async with miner_at(sessions, 464) as miner:
        # The dead consumer assigned the miner and died before the initial request went out.
        msg = await submit(sessions, miner.hotkey, miner_address="127.0.0.1", miner_port=miner.port)
        await run_organic_job(runtime(sessions, SHORT), msg)
        await run_organic_job(runtime(sessions, SHORT), msg)  # redelivered again: nothing more
        received = [t for _, t in miner.received]
        name = f"{miner.hotkey}(127.0.0.1:{miner.port})"
    got = await statuses(sessions, msg.job_uuid)
    assert finals(got) == ["failed"] and len(got) == 1
    comment = f"job-runner restarted during the job; miner {name} did not report its outcome in time"
    assert got[0]["comment"] == comment
    row = await job_row(sessions, msg.job_uuid)
    assert (row.status, row.comment) == ("FAILED", comment)
    assert received == ["V0AuthenticateRequest"]  # never given the job
    assert await events(sessions, msg.job_uuid) == [RESUMED, RESUMED]


async def test_an_unreachable_miner_fails_the_job_once(sessions: Sessions) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    hotkey = keys.miner_keypair(465).ss58_address
    msg = await submit(sessions, hotkey, miner_address="127.0.0.1", miner_port=port)
    await run_organic_job(runtime(sessions, SHORT), msg)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["failed"]
    assert got[0]["comment"].startswith("Miner connection error:")
    assert await events(sessions, msg.job_uuid) == [
        RESUMED,
        ("MINER_ORGANIC_JOB_FAILURE", "MINER_CONNECTION_ERROR"),
    ]


async def test_two_concurrent_consumers_write_one_final_status(sessions: Sessions) -> None:
    async with miner_at(sessions, 466) as miner:
        msg = await submit(sessions, miner.hotkey)
        await asyncio.gather(
            run_organic_job(runtime(sessions, LONG), msg), run_organic_job(runtime(sessions, LONG), msg)
        )
        received = [t for _, t in miner.received]
    got = await statuses(sessions, msg.job_uuid)
    assert finals(got) == ["completed"]
    assert (await job_row(sessions, msg.job_uuid)).status == "COMPLETED"
    assert received.count("V0InitialJobRequest") == 1  # the second consumer followed, never re-ran
    assert RESUMED in await events(sessions, msg.job_uuid)


async def test_two_concurrent_redeliveries_write_one_final_status(sessions: Sessions) -> None:
    gate = Gate()
    async with miner_at(sessions, 467, gate) as miner:
        msg = await crash_while_executing(sessions, miner, gate)
        await asyncio.gather(
            run_organic_job(runtime(sessions, LONG), msg), run_organic_job(runtime(sessions, LONG), msg)
        )
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "completed"]
    assert (await events(sessions, msg.job_uuid)).count(("MINER_ORGANIC_JOB_SUCCESS", "SUCCESS")) == 1


async def test_a_row_that_ended_is_not_resumed(sessions: Sessions) -> None:
    async with miner_at(sessions, 468) as miner:
        msg = await submit(
            sessions, miner.hotkey, miner_address="127.0.0.1", miner_port=miner.port, status="COMPLETED"
        )
        await run_organic_job(runtime(sessions, SHORT), msg)
        assert miner.connection_count == 0
    assert await statuses(sessions, msg.job_uuid) == []
    assert await events(sessions, msg.job_uuid) == []


async def test_only_the_first_final_report_is_written(sessions: Sessions) -> None:
    """The write itself is conditional: a consumer whose outcome comes second writes no status."""
    msg = await submit(sessions, keys.miner_keypair(469).ss58_address)
    rt = runtime(sessions, SHORT)
    written = await asyncio.gather(
        write_report(rt, msg.job_uuid, msg.miner_hotkey, not_run_report("first")),
        write_report(rt, msg.job_uuid, msg.miner_hotkey, not_run_report("second")),
    )
    assert sorted(written) == [False, True]
    got = await statuses(sessions, msg.job_uuid)
    assert len(got) == 1 and (await job_row(sessions, msg.job_uuid)).comment == got[0]["comment"]
    assert await events(sessions, msg.job_uuid) == [("MINER_ORGANIC_JOB_FAILURE", "JOB_NOT_STARTED")]
