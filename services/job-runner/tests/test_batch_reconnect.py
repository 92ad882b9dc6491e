"""A result on a fresh connection, before or while we re-authenticate (issue 6 §6).

The November 2024 miner (compute-horde 0.0.18) rejoins a validator's running jobs as soon as a new
connection opens, before any authentication, and pushes each result as the job finishes. So after
a reconnect the result can reach us before the manifest that tells us we are authenticated. A
shard run must take it: the job is COMPLETED and nothing is blamed on anyone.

Two miners: a scripted one that pushes the result the moment the new connection opens, before it
reads our authentication (deterministic), and the simulator in both `ReconnectMode`s with the job
held until the validator's new connection is open (whichever of result and authentication comes
first, the job must complete).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection, serve

from horde_common.bus.messages import MinerEndpoint
from horde_common.db.models import JobFinishedReceipt, SyntheticJob, SystemEvent
from horde_common.protocol.miner import (
    ExecutorClass,
    ExecutorClassManifest,
    ExecutorManifest,
    MachineSpecs,
    V0AcceptJobRequest,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0InitialJobRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    dumps,
    parse_validator_message,
)
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.model import (
    BatchDeps,
    BatchTimeouts,
    DynamicValues,
    ShardRequest,
    ShardResult,
)
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import (
    Behaviour,
    BehaviourSpec,
    ExecutionResult,
    MinerConfig,
    ReconnectMode,
    SimulatedMiner,
    execute,
)

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
WAIT = 10.0  # seconds: every wait of the scripted miner is bounded

FAST = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=1.0,
    spin_up={AO: 1.0},
    job_timeout=3.0,
    persist_backoff=0.01,
)


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


async def run_batch(store: BatchStore, miner: MinerEndpoint) -> tuple[int, ShardResult]:
    batch_id, _ = await store.create_batch()
    result = await run_shard(
        ShardRequest(batch_id=batch_id, miners=[miner], weights_version=4),
        BatchDeps(
            keypair=VALIDATOR,
            store=store,
            dynamic=DynamicValues(),
            difficulty="localnet",
            timeouts=FAST,
            job_factory=InlineJobFactory(),
            sleep=no_sleep,
        ),
    )
    return batch_id, result


async def batch_rows(store: BatchStore, batch_id: int) -> tuple[list[SyntheticJob], list[SystemEvent]]:
    async with store.sessions() as session:
        jobs = (await session.scalars(select(SyntheticJob).where(SyntheticJob.batch_id == batch_id))).all()
        events = (
            await session.scalars(
                select(SystemEvent)
                .where(SystemEvent.data["batch_id"].as_integer() == batch_id)
                .where(SystemEvent.type != "VALIDATOR_TELEMETRY")
                .order_by(SystemEvent.id)
            )
        ).all()
    return list(jobs), list(events)


def assert_completed_and_nobody_blamed(jobs: list[SyntheticJob], events: list[SystemEvent]) -> None:
    (job,) = jobs
    assert (job.status, job.comment, job.excluded_from_scoring) == ("COMPLETED", "", False)
    assert job.score > 0
    # Exactly two events: the dropped link, noted against the miner (it did drop it), and the job's
    # success. No VALIDATOR_FAILURE, no timeout, no receipt error, no "out of order" response.
    assert [(e.type, e.subtype) for e in events] == [
        ("MINER_SYNTHETIC_JOB_FAILURE", "MINER_CONNECTION_ERROR"),
        ("MINER_SYNTHETIC_JOB_SUCCESS", "SUCCESS"),
    ]
    assert events[0].data["func"] == "recv" and events[0].data["miner_hotkey"] == job.miner_hotkey


# ----------------------------------------------------------------------------- the scripted miner


class PushOnOpenMiner:
    """Runs one job like a real miner, but drops the connection on the job request; on the next
    connection it pushes the result the moment the connection opens, before reading anything, then
    reads our authentication and answers it with the manifest."""

    def __init__(self, index: int) -> None:
        self.keypair = keys.miner_keypair(index)
        self.hotkey = str(self.keypair.ss58_address)
        self.connections = 0
        self.initial: V0InitialJobRequest | None = None
        self.result: V0JobFinishedRequest | None = None
        # What happened on the connections after the first, in order: ("sent"|"read", message type).
        self.after_reconnect: list[tuple[str, str]] = []
        self.finished_receipts: list[V0JobFinishedReceiptRequest] = []

    def manifest(self) -> str:
        entries = [ExecutorClassManifest(executor_class=AO, count=1)]
        return dumps(V0ExecutorManifestRequest(manifest=ExecutorManifest(executor_classes=entries)))

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        if self.connections == 1:
            await self._first(ws)
        else:
            await self._reconnected(ws)

    async def _first(self, ws: ServerConnection) -> None:
        async with asyncio.timeout(WAIT * 3):
            async for frame in ws:
                msg = parse_validator_message(frame)
                if isinstance(msg, V0AuthenticateRequest):
                    await ws.send(self.manifest())
                elif isinstance(msg, V0InitialJobRequest):
                    self.initial = msg
                    await ws.send(dumps(V0AcceptJobRequest(job_uuid=msg.job_uuid)))
                    await ws.send(dumps(V0ExecutorReadyRequest(job_uuid=msg.job_uuid)))
                elif isinstance(msg, V0JobRequest):
                    self.result = await self._crack(msg)
                    ws.transport.abort()  # the link drops with the job running
                    return

    async def _crack(self, request: V0JobRequest) -> V0JobFinishedRequest:
        assert self.initial is not None and self.initial.volume is not None
        spec = {
            "volume": self.initial.volume.model_dump(mode="json"),
            "raw_script": request.raw_script,
            "docker_run_cmd": list(request.docker_run_cmd),
            "docker_image_name": request.docker_image_name,
            "run_scripts": False,
        }
        result: ExecutionResult = await asyncio.to_thread(execute, spec)
        assert result.ok, result.stderr
        return V0JobFinishedRequest(
            job_uuid=request.job_uuid,
            docker_process_stdout=result.stdout,
            docker_process_stderr=result.stderr,
        )

    async def _reconnected(self, ws: ServerConnection) -> None:
        assert self.result is not None
        specs = V0MachineSpecsRequest(job_uuid=self.result.job_uuid, specs=MachineSpecs(specs={"gpu": {}}))
        for message in (specs, self.result):
            await ws.send(dumps(message))
            self.after_reconnect.append(("sent", message.message_type))
        async with asyncio.timeout(WAIT * 3):
            async for frame in ws:
                msg = parse_validator_message(frame)
                self.after_reconnect.append(("read", msg.message_type))
                if isinstance(msg, V0AuthenticateRequest):
                    await ws.send(self.manifest())
                elif isinstance(msg, V0JobFinishedReceiptRequest):
                    self.finished_receipts.append(msg)


async def test_a_result_pushed_before_we_reauthenticate_completes_the_job(store: BatchStore) -> None:
    miner = PushOnOpenMiner(240)
    server = await serve(miner.handle, "127.0.0.1", 0)
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        batch_id, result = await run_batch(
            store, MinerEndpoint(hotkey=miner.hotkey, uid=240, address="127.0.0.1", port=port)
        )
    finally:
        server.close(close_connections=True)
        await server.wait_closed()
    assert result.ok and result.persisted
    assert miner.connections == 2
    # The result went out first; our authentication was the first frame the miner read afterwards.
    assert miner.after_reconnect[:3] == [
        ("sent", "V0MachineSpecsRequest"),
        ("sent", "V0JobFinishedRequest"),
        ("read", "V0AuthenticateRequest"),
    ]
    jobs, events = await batch_rows(store, batch_id)
    assert_completed_and_nobody_blamed(jobs, events)
    assert miner.result is not None and str(jobs[0].job_uuid) == miner.result.job_uuid
    (receipt,) = miner.finished_receipts  # the JobFinished receipt, on the new connection
    assert receipt.payload.job_uuid == miner.result.job_uuid and float(receipt.payload.score_str) > 0
    async with store.sessions() as session:
        stored = await session.scalars(
            select(JobFinishedReceipt).where(JobFinishedReceipt.job_uuid == uuid.UUID(miner.result.job_uuid))
        )
        assert [r.score_str for r in stored.all()] == [receipt.payload.score_str]


# ------------------------------------------------------------------------------------ the simulator


class HoldUntilReconnect:
    """The simulator's runner: the job runs only once the validator's second connection is open, so
    its result is pushed on that connection before or while the validator re-authenticates."""

    def __init__(self) -> None:
        self.miner: SimulatedMiner | None = None

    async def __call__(
        self, fn: Callable[[dict[str, Any]], ExecutionResult], spec: dict[str, Any]
    ) -> ExecutionResult:
        miner = self.miner
        assert miner is not None
        await miner.wait_for(lambda: miner.connection_count >= 2, within=WAIT)
        return await asyncio.to_thread(fn, spec)


@pytest.mark.parametrize("mode", list(ReconnectMode))
async def test_simulator_reconnect_modes_complete_the_job(store: BatchStore, mode: ReconnectMode) -> None:
    index = 241 if mode is ReconnectMode.REAL else 242
    runner = HoldUntilReconnect()
    config = MinerConfig(
        executors={ExecutorClass(AO): 1},
        behaviour=BehaviourSpec(Behaviour.DISCONNECT),
        known_validators=frozenset({VALIDATOR.ss58_address}),
        reconnect=mode,
    )
    miner = SimulatedMiner(index, keys.miner_keypair(index), config=config, runner=runner)
    runner.miner = miner
    await miner.start()
    try:
        batch_id, result = await run_batch(
            store, MinerEndpoint(hotkey=miner.hotkey, uid=index, address="127.0.0.1", port=miner.port)
        )
        assert result.ok and result.persisted
        assert miner.connection_count == 2
        (job,) = miner.jobs_of(VALIDATOR.ss58_address)
        assert job.outcome_delivered and job.score_str is not None and float(job.score_str) > 0
    finally:
        await miner.stop()
    jobs, events = await batch_rows(store, batch_id)
    assert_completed_and_nobody_blamed(jobs, events)
