"""Organic jobs end to end: real Postgres, simulated miners over real sockets (docs/organic.md,
"Running organic jobs"). Timeouts are shrunk through `OrganicRuntime.timeouts`; nothing sleeps to
synchronise: waits are on the simulated miner's own state.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus import BusRouter, HandlerContext
from horde_common.bus.messages import OrganicJobRequested
from horde_common.bus.router import Dependencies
from horde_common.db.models import MinerManifest, SyntheticJobBatch, SystemEvent
from horde_common.db.models.chain import Neuron
from horde_common.db.models.organic import OrganicJob
from horde_job_runner.organic.handler import OrganicRuntime, handle_organic_job_requested, run_organic_job
from horde_job_runner.organic.run import OrganicTimeouts
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.organic_rows import job_row, statuses

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
FAST = OrganicTimeouts(total_s=2.0, wait_s=2.0)
Sessions = async_sessionmaker[AsyncSession]
BLOCK = 1  # every test's neurons go into one snapshot (the newest is the one looked up)


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def fresh(sessions: Sessions) -> Sessions:
    """No V2 job and no manifest left by an earlier test: the round-robin starts from scratch."""
    async with sessions.begin() as session:
        await session.execute(delete(OrganicJob))
        await session.execute(delete(MinerManifest))
    return sessions


def runtime(
    sessions: Sessions,
    *,
    timeouts: OrganicTimeouts = FAST,
    blacklist: frozenset[str] = frozenset(),
) -> OrganicRuntime:
    """One job-runner instance's organic runtime (two calls: two replicas sharing only the database)."""
    return OrganicRuntime(
        sessions=sessions, keypair=VALIDATOR, timeouts=timeouts, sleep=no_sleep, blacklist=blacklist
    )


async def add_neurons(sessions: Sessions, fleet: MinerFleet) -> None:
    async with sessions.begin() as session:
        for m in fleet.miners:
            await session.execute(
                pg_insert(Neuron)
                .values(block=BLOCK, uid=m.index, hotkey=m.hotkey, axon_ip="127.0.0.1", axon_port=m.port)
                .on_conflict_do_nothing()
            )


async def add_manifests(sessions: Sessions, hotkeys: list[str]) -> None:
    async with sessions.begin() as session:
        batch = SyntheticJobBatch()
        session.add(batch)
        await session.flush()
        for hotkey in hotkeys:
            online = {"executor_count": 1, "online_executor_count": 1}
            session.add(MinerManifest(batch_id=batch.id, miner_hotkey=hotkey, executor_class=AO, **online))


# A job as the facilitator sends it (what the gateway stores in `organic_jobs.request`).
BASE: dict[str, Any] = {"type": "job.new", "uuid": "", "executor_class": AO, "docker_image": "img"}
BASE |= {"raw_script": "print('hello')", "args": [], "env": {"A": "1"}, "use_gpu": False}
# What a simulated executor answers to a job it does not run (docs/organic.md §9): neither hashcat nor LLM.
STDOUT = "simulated: img\nraw_script: 14 bytes, not run\n"
PER_VERSION: dict[str, dict[str, Any]] = {
    "V0JobRequest": {"input_url": "", "output_url": ""},
    "V1JobRequest": {"volume": None, "output_upload": None},
    "V2JobRequest": {"signature": None, "volume": None, "output_upload": None},
}


def request(version: str, miner_hotkey: str = "") -> dict[str, Any]:
    named = {} if version == "V2JobRequest" else {"miner_hotkey": miner_hotkey}
    return BASE | {"message_type": version} | named | PER_VERSION[version]


async def submit(sessions: Sessions, version: str, miner_hotkey: str = "") -> OrganicJobRequested:
    """What the gateway does: the PENDING row, then the message."""
    job_uuid = uuid.uuid4()
    body = request(version, miner_hotkey) | {"uuid": str(job_uuid)}
    async with sessions.begin() as session:
        row = {"miner_hotkey": miner_hotkey, "executor_class": AO, "status": "PENDING", "request": body}
        session.add(OrganicJob(job_uuid=job_uuid, job_description="User job from facilitator", **row))
    return OrganicJobRequested(job_uuid=job_uuid, miner_hotkey=miner_hotkey, executor_class=AO, request=body)


async def job_events(sessions: Sessions, job_uuid: uuid.UUID) -> list[tuple[str, str, dict]]:
    async with sessions() as session:
        rows = await session.execute(
            select(SystemEvent.type, SystemEvent.subtype, SystemEvent.data)
            .where(SystemEvent.data["job_uuid"].astext == str(job_uuid))
            .order_by(SystemEvent.id)
        )
        return [(t, s, d) for t, s, d in rows]


# ---------------------------------------------------------------------------------------- V0 / V1


@pytest.mark.parametrize("version", ["V0JobRequest", "V1JobRequest"])
async def test_job_completes_with_accepted_then_completed(sessions: Sessions, version: str) -> None:
    first = 300 if version == "V0JobRequest" else 305
    async with MinerFleet(1, executors={AO: 1}, first_index=first, run_scripts=True) as fleet:
        await add_neurons(sessions, fleet)
        miner = fleet.miners[0]
        port = miner.port
        msg = await submit(sessions, version, miner.hotkey)
        await run_organic_job(runtime(sessions), msg)
        await miner.wait_for(lambda: len(miner.receipts) == 3)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "completed"]
    assert got[0]["comment"] == ""
    assert got[0]["miner_response"]["message_type"] == "V0AcceptJobRequest"
    done = got[1]["miner_response"]
    assert done == {
        "job_uuid": str(msg.job_uuid),
        "message_type": "V0JobFinishedRequest",
        "docker_process_stderr": "",
        "docker_process_stdout": STDOUT,
    }
    name = f"{miner.hotkey}(127.0.0.1:{port})"
    assert got[1]["comment"] == f"Miner {name} finished: stdout={STDOUT!r} stderr=''"
    row = await job_row(sessions, msg.job_uuid)
    assert (row.status, row.stdout, row.miner_hotkey, row.miner_port) == (
        "COMPLETED",
        STDOUT,
        miner.hotkey,
        port,
    )
    types = [str(r.payload.receipt_type) for r in miner.receipts]
    assert types == ["JobStartedReceipt", "JobAcceptedReceipt", "JobFinishedReceipt"]
    assert miner.receipts[0].payload.is_organic is True  # type: ignore[union-attr]
    assert miner.receipts[0].payload.ttl == 30  # type: ignore[union-attr]
    assert miner.receipts[2].payload.score_str == "0.000000"  # type: ignore[union-attr]
    assert not miner.rejected_receipts
    assert [t for _, t in miner.received] == [
        "V0AuthenticateRequest",
        "V0InitialJobRequest",
        "V0JobAcceptedReceiptRequest",
        "V0JobRequest",
        "V0JobFinishedReceiptRequest",
    ]
    events = await job_events(sessions, msg.job_uuid)
    assert events == [
        (
            "MINER_ORGANIC_JOB_SUCCESS",
            "SUCCESS",
            {"job_uuid": str(msg.job_uuid), "miner_hotkey": miner.hotkey},
        )
    ]


async def test_declined_job_is_only_rejected(sessions: Sessions) -> None:
    async with MinerFleet(1, executors={AO: 1}, behaviours={310: "decline"}, first_index=310) as fleet:
        await add_neurons(sessions, fleet)
        miner = fleet.miners[0]
        msg = await submit(sessions, "V0JobRequest", miner.hotkey)
        await run_organic_job(runtime(sessions), msg)
        await miner.wait_for(lambda: len(miner.receipts) == 2)  # started + finished (score 0)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["rejected"]
    assert "won't do job" in got[0]["comment"] and "V0DeclineJobRequest" in got[0]["comment"]
    assert got[0]["miner_response"]["message_type"] is None
    row = await job_row(sessions, msg.job_uuid)
    assert row.status == "FAILED" and row.comment == got[0]["comment"]
    assert [(t, s) for t, s, _ in await job_events(sessions, msg.job_uuid)] == [
        ("MINER_ORGANIC_JOB_FAILURE", "JOB_REJECTED")
    ]


async def test_executor_failure_is_accepted_then_failed(sessions: Sessions) -> None:
    async with MinerFleet(1, executors={AO: 1}, behaviours={315: "executor_fail"}, first_index=315) as fleet:
        await add_neurons(sessions, fleet)
        miner = fleet.miners[0]
        msg = await submit(sessions, "V0JobRequest", miner.hotkey)
        await run_organic_job(runtime(sessions), msg)
        await miner.wait_for(lambda: len(miner.receipts) == 3)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "failed"]
    assert "failed to start executor" in got[1]["comment"]
    assert got[1]["miner_response"]["message_type"] is None
    assert [s for _, s, _ in await job_events(sessions, msg.job_uuid)] == ["JOB_REJECTED"]


async def test_job_failure_keeps_the_output(sessions: Sessions) -> None:
    async with MinerFleet(1, executors={AO: 1}, behaviours={318: "job_fail"}, first_index=318) as fleet:
        await add_neurons(sessions, fleet)
        msg = await submit(sessions, "V0JobRequest", fleet.miners[0].hotkey)
        await run_organic_job(runtime(sessions), msg)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "failed"]
    assert got[1]["miner_response"]["message_type"] == "V0JobFailedRequest"
    assert got[1]["miner_response"]["docker_process_stderr"] == "simulated job failure"
    row = await job_row(sessions, msg.job_uuid)
    assert (row.status, row.stderr) == ("FAILED", "simulated job failure")


async def test_job_timeout(sessions: Sessions) -> None:
    async with MinerFleet(1, executors={AO: 1}, behaviours={320: "timeout"}, first_index=320) as fleet:
        await add_neurons(sessions, fleet)
        miner = fleet.miners[0]
        msg = await submit(sessions, "V0JobRequest", miner.hotkey)
        await run_organic_job(runtime(sessions, timeouts=OrganicTimeouts(total_s=1.0, wait_s=1.0)), msg)
        await miner.wait_for(lambda: len(miner.receipts) == 3)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "failed"]
    assert got[1]["comment"].endswith("timed out after 1 seconds")
    assert [s for _, s, _ in await job_events(sessions, msg.job_uuid)] == ["JOB_EXECUTION_TIMEOUT"]


async def test_unknown_miner_gets_one_final_status(sessions: Sessions) -> None:
    hotkey = keys.miner_keypair(399).ss58_address
    msg = await submit(sessions, "V0JobRequest", hotkey)
    await run_organic_job(runtime(sessions), msg)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["failed"]
    assert got[0]["comment"] == f"Miner with hotkey={hotkey} not present in this subnetwork"
    assert (await job_row(sessions, msg.job_uuid)).status == "FAILED"
    # A redelivery of a job that ended runs nothing and sends nothing.
    await run_organic_job(runtime(sessions), msg)
    assert len(await statuses(sessions, msg.job_uuid)) == 1


async def test_the_bus_handler_runs_the_job_with_the_instance_runtime(
    sessions: Sessions,
) -> None:
    """The wiring `app.py` needs: a long-running route whose runtime is a service dependency."""
    router = BusRouter()

    @router.handler("job-runner.organic.job.requested", publishes=(), long_running=True)
    async def on_organic_job_requested(msg: OrganicJobRequested, ctx: HandlerContext) -> None:
        await handle_organic_job_requested(msg, ctx)

    assert router.routes["job-runner.organic.job.requested"].long_running
    msg = await submit(sessions, "V1JobRequest", keys.miner_keypair(397).ss58_address)
    ctx = HandlerContext(
        queue="job-runner.organic.job.requested",
        message_id=msg.message_id,
        redelivered=False,
        delivery_count=1,
        dependencies=Dependencies(runtime(sessions)),
    )
    await on_organic_job_requested(msg, ctx)
    assert [s["status"] for s in await statuses(sessions, msg.job_uuid)] == ["failed"]


async def test_unreachable_miner_is_a_connection_failure(sessions: Sessions) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    hotkey = keys.miner_keypair(398).ss58_address
    async with sessions.begin() as session:
        session.add(Neuron(block=BLOCK, uid=398, hotkey=hotkey, axon_ip="127.0.0.1", axon_port=port))
    msg = await submit(sessions, "V0JobRequest", hotkey)
    await run_organic_job(runtime(sessions), msg)
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["failed"]
    assert got[0]["comment"].startswith("Miner connection error:")
    assert [s for _, s, _ in await job_events(sessions, msg.job_uuid)] == ["MINER_CONNECTION_ERROR"]


# --------------------------------------------------------------------------------------------- V2


async def test_v2_round_robin_is_shared_by_replicas(fresh: Sessions) -> None:
    sessions = fresh
    async with MinerFleet(2, executors={AO: 1}, first_index=330, run_scripts=True) as fleet:
        await add_neurons(sessions, fleet)
        await add_manifests(sessions, fleet.hotkeys)
        replicas = [runtime(sessions), runtime(sessions)]  # two instances: nothing shared in memory
        picked = []
        for i in range(4):
            msg = await submit(sessions, "V2JobRequest")
            await run_organic_job(replicas[i % 2], msg)
            row = await job_row(sessions, msg.job_uuid)
            assert row.status == "COMPLETED"
            assert [s["status"] for s in await statuses(sessions, msg.job_uuid)] == ["accepted", "completed"]
            picked.append(row.miner_hotkey)
    assert picked == sorted(fleet.hotkeys) * 2


async def test_v2_concurrent_replicas_take_turns(fresh: Sessions) -> None:
    sessions = fresh
    async with MinerFleet(2, executors={AO: 2}, first_index=335, run_scripts=True) as fleet:
        await add_neurons(sessions, fleet)
        await add_manifests(sessions, fleet.hotkeys)
        msgs = [await submit(sessions, "V2JobRequest") for _ in range(4)]
        await asyncio.gather(*(run_organic_job(runtime(sessions), m) for m in msgs))
        picked = [(await job_row(sessions, m.job_uuid)).miner_hotkey for m in msgs]
    assert sorted(picked) == sorted(fleet.hotkeys * 2)


async def test_v2_blacklisted_miner_is_skipped(fresh: Sessions) -> None:
    sessions = fresh
    async with MinerFleet(2, executors={AO: 1}, first_index=340, run_scripts=True) as fleet:
        await add_neurons(sessions, fleet)
        await add_manifests(sessions, fleet.hotkeys)
        banned, allowed = fleet.hotkeys
        picked = []
        for _ in range(2):
            msg = await submit(sessions, "V2JobRequest")
            await run_organic_job(runtime(sessions, blacklist=frozenset({banned})), msg)
            picked.append((await job_row(sessions, msg.job_uuid)).miner_hotkey)
    assert picked == [allowed, allowed]


async def test_v2_retries_each_attempt_reports(fresh: Sessions) -> None:
    sessions = fresh
    # One failing miner per attempt: a miner takes a job uuid once (the simulator ignores a repeat).
    failing = {i: "job_fail" for i in (345, 346, 347, 348)}
    async with MinerFleet(4, executors={AO: 1}, behaviours=failing, first_index=345) as fleet:
        await add_neurons(sessions, fleet)
        await add_manifests(sessions, fleet.hotkeys)
        msg = await submit(sessions, "V2JobRequest")
        await run_organic_job(runtime(sessions), msg)
        tried = [m.hotkey for m in fleet.miners if m.receipts]
    got = await statuses(sessions, msg.job_uuid)
    assert [s["status"] for s in got] == ["accepted", "failed"] * 3  # DYNAMIC_ORGANIC_JOB_MAX_RETRIES = 3
    assert all(s["miner_response"]["message_type"] == "V0JobFailedRequest" for s in got[1::2])
    row = await job_row(sessions, msg.job_uuid)
    assert (row.status, row.attempt) == ("FAILED", 3)
    order = sorted(fleet.hotkeys)  # round-robin in hotkey order, from an empty pointer
    assert sorted(tried) == order[:3] and row.miner_hotkey == order[2]


async def test_v2_without_candidates_fails_once(fresh: Sessions) -> None:
    msg = await submit(fresh, "V2JobRequest")
    await run_organic_job(runtime(fresh), msg)
    got = await statuses(fresh, msg.job_uuid)
    assert [s["status"] for s in got] == ["failed"]
    assert got[0]["comment"] == f"No available miners with executor class {AO}"
