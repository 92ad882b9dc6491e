"""The miner simulator after a reconnect, in both `ReconnectMode`s, over real sockets.

`real` is the November 2024 miner (compute-horde 0.0.18): a new connection joins the validator's
unfinished jobs as soon as it opens and hears their messages as they happen, before it
authenticates. `legacy` is the simulator's earlier behaviour: nothing until re-authentication.
The job's execution is gated by the test (the miner's `runner`), so "the job ends while the new
connection is open but not authenticated" is a fact of the test, not a race.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from horde_common.crypto import sign
from horde_common.protocol.miner import (
    ExecutorClass,
    GenericError,
    JobStartedReceiptPayload,
    MinerMessage,
    V0AcceptJobRequest,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0InitialJobRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    dumps,
    parse_miner_message,
)
from horde_common.protocol.miner.validator_messages import AuthenticationPayload
from horde_localnet import keys
from horde_localnet.chain_spec import load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH
from horde_localnet.miners import (
    Behaviour,
    BehaviourSpec,
    ExecutionResult,
    JobState,
    MinerConfig,
    MinerFleet,
    MinerJob,
    ReconnectMode,
    SimulatedMiner,
)
from horde_localnet.miners.config import run_in_thread

T = TypeVar("T")
WAIT = 10.0
GPU = ExecutorClass.SPIN_UP_4MIN_GPU_24GB
VALIDATOR = keys.validator_keypair(0)
VHK = VALIDATOR.ss58_address
OTHER_VALIDATOR = keys.validator_keypair(1)
FENCE_JOB_UUID = "00000000-0000-4000-8000-0000000000fe"  # a job id the miner never saw


class Client:
    """A minimal validator side of one connection."""

    def __init__(self, ws: ClientConnection, miner: SimulatedMiner, validator: Any = VALIDATOR) -> None:
        self.ws = ws
        self.miner = miner
        self.validator = validator

    async def send(self, message: Any) -> None:
        await self.ws.send(dumps(message))

    async def recv(self) -> MinerMessage:
        async with asyncio.timeout(WAIT):
            return parse_miner_message(await self.ws.recv())

    async def expect(self, kind: type[T]) -> T:
        msg = await self.recv()
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
        return msg

    async def authenticate(self) -> None:
        """Authenticate; the manifest must be the very next frame (nothing was queued before it)."""
        payload = AuthenticationPayload(
            validator_hotkey=self.validator.ss58_address,
            miner_hotkey=self.miner.hotkey,
            timestamp=int(time.time()),
        )
        signature = sign(self.validator, payload.blob_for_signing())
        await self.send(V0AuthenticateRequest(payload=payload, signature=signature))
        await self.expect(V0ExecutorManifestRequest)

    async def fence(self) -> None:
        """A request the miner answers at once: every frame it sent before is read by now."""
        request = V0JobRequest.model_validate(
            {
                "job_uuid": FENCE_JOB_UUID,
                "docker_image_name": "fence",
                "docker_run_options_preset": "none",
                "docker_run_cmd": [],
            }
        )
        await self.send(request)
        error = await self.expect(GenericError)
        assert error.details == f"Received JobRequest for unknown job_uuid: {FENCE_JOB_UUID}"


@dataclass(frozen=True, slots=True)
class WireJob:
    """A hashcat job without a script (docs/miner-protocol.md §3.13): one salted SHA-256 to crack.

    Built here rather than by the job runner's generators: these tests are about when the miner
    speaks after a reconnect, and need only a job whose honest answer is known."""

    job_uuid: uuid.UUID
    volume: dict[str, Any]
    docker_run_cmd: list[str]
    answer: str

    def is_answer(self, stdout: str) -> bool:
        return stdout.strip() == self.answer


JOB_TIMEOUT = 60  # seconds; the simulator answers the job in milliseconds
IMAGE = "backenddevelopersltd/compute-horde-job:v0-latest"  # the simulator runs no image: any name does


def make_job(password: str = "q7") -> WireJob:
    """A job whose answer is `password` (one of `?l?d?u` then a digit: 620 candidates)."""
    salt = b"\x01" * 8
    line = f"{hashlib.sha256(password.encode() + salt).hexdigest()}:{salt.hex()}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", line)
    volume = {"volume_type": "inline", "contents": base64.b64encode(buf.getvalue()).decode()}
    cmd = ["--hash-type", "1410", "--hex-salt", "-1", "?l?d?u", "--outfile-format", "2"]
    return WireJob(uuid.uuid4(), volume, [*cmd, "/volume/payload.txt", "?1?d"], password)


def initial_request(miner: SimulatedMiner, gen: WireJob) -> V0InitialJobRequest:
    payload = JobStartedReceiptPayload(
        job_uuid=str(gen.job_uuid),
        miner_hotkey=miner.hotkey,
        validator_hotkey=VHK,
        timestamp=datetime.now(UTC),
        executor_class=GPU,
        max_timeout=JOB_TIMEOUT,
        is_organic=False,
        ttl=240,
    )
    return V0InitialJobRequest.model_validate(
        {
            "job_uuid": str(gen.job_uuid),
            "executor_class": GPU,
            "base_docker_image_name": IMAGE,
            "timeout_seconds": JOB_TIMEOUT,
            "volume": None,
            "job_started_receipt_payload": payload,
            "job_started_receipt_signature": sign(VALIDATOR, payload.blob_for_signing()),
        }
    )


def job_request(gen: WireJob) -> V0JobRequest:
    return V0JobRequest.model_validate(
        {
            "job_uuid": str(gen.job_uuid),
            "executor_class": GPU,
            "docker_image_name": IMAGE,
            "raw_script": None,
            "docker_run_options_preset": "nvidia_all",
            "docker_run_cmd": gen.docker_run_cmd,
            "volume": gen.volume,
        }
    )


class Gate:
    """A runner that holds every job's execution until `open()`."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def open(self) -> None:
        self.event.set()

    async def __call__(
        self, fn: Callable[[dict[str, Any]], ExecutionResult], spec: dict[str, Any]
    ) -> ExecutionResult:
        await self.event.wait()
        return await run_in_thread(fn, spec)


@pytest.fixture
async def miners() -> AsyncIterator[Callable[..., Any]]:
    started: list[SimulatedMiner] = []

    async def start(
        mode: ReconnectMode, behaviour: Behaviour = Behaviour.HONEST, **kw: Any
    ) -> SimulatedMiner:
        config = MinerConfig(behaviour=BehaviourSpec(behaviour), known_validators=None, reconnect=mode)
        miner = SimulatedMiner(0, keys.miner_keypair(0), config=config, **kw)
        await miner.start()
        started.append(miner)
        return miner

    yield start
    for miner in started:
        await miner.stop()


async def open_client(miner: SimulatedMiner, validator: Any = VALIDATOR) -> Client:
    ws = await connect(miner.url_for(validator.ss58_address), max_size=50 * 2**20, open_timeout=WAIT)
    return Client(ws, miner, validator)


async def to_ready(client: Client, gen: WireJob) -> MinerJob:
    await client.send(initial_request(client.miner, gen))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    return client.miner.jobs[(VHK, str(gen.job_uuid))]


async def job_running_after_a_drop(miner: SimulatedMiner) -> tuple[MinerJob, WireJob]:
    """Behaviour `disconnect`: the job request drops the connection; the job runs (held by the gate)."""
    first = await open_client(miner)
    await first.authenticate()
    gen = make_job()
    job = await to_ready(first, gen)
    await first.send(job_request(gen))
    with pytest.raises(ConnectionClosed):
        await first.recv()
    await miner.wait_for(lambda: job.state is JobState.RUNNING and not job.listeners)
    return job, gen


def auths(miner: SimulatedMiner) -> int:
    return sum(1 for _, kind in miner.received if kind == "V0AuthenticateRequest")


# ------------------------------------------------------------------------------------------ modes


def test_real_is_the_default() -> None:
    assert MinerConfig().reconnect is ReconnectMode.REAL
    fleet = MinerFleet(2, behaviours={1: "disconnect"})
    assert [m.config.reconnect for m in fleet.miners] == [ReconnectMode.REAL] * 2
    legacy = MinerFleet(1, reconnect="legacy")
    assert legacy.miners[0].config.reconnect is ReconnectMode.LEGACY
    with pytest.raises(ValueError, match="unknown reconnect mode"):
        MinerFleet(1, reconnect="eventually")
    # A metagraph file may set it for its fleet (`miners.reconnect`); the CLI flag overrides that.
    spec = load_spec(DEFAULT_METAGRAPH_PATH)
    assert {m.config.reconnect for m in MinerFleet.from_spec(spec).miners} == {ReconnectMode.REAL}
    assert spec.miners.model_extra is not None
    spec.miners.model_extra["reconnect"] = "legacy"
    assert {m.config.reconnect for m in MinerFleet.from_spec(spec).miners} == {ReconnectMode.LEGACY}
    overridden = MinerFleet.from_spec(spec, reconnect="real")
    assert {m.config.reconnect for m in overridden.miners} == {ReconnectMode.REAL}


def test_cli_reconnect_flag() -> None:
    from horde_localnet.miners.__main__ import build_parser

    assert build_parser().parse_args([]).reconnect is None  # the metagraph's, else real
    assert build_parser().parse_args(["--reconnect", "legacy"]).reconnect == "legacy"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--reconnect", "sometimes"])


# ------------------------------------------------------------------------------ results on reconnect


async def test_real_pushes_the_result_on_a_fresh_connection_before_authentication(
    miners: Callable[..., Any],
) -> None:
    gate = Gate()
    miner: SimulatedMiner = await miners(ReconnectMode.REAL, Behaviour.DISCONNECT, runner=gate)
    job, gen = await job_running_after_a_drop(miner)
    second = await open_client(miner)
    other = await open_client(miner, OTHER_VALIDATOR)  # another validator never joins this job
    await miner.wait_for(lambda: len(miner.connections) == 2)
    # The new connection joined the running job on opening, before sending anything.
    assert [c.serial for c in job.listeners] == [2]
    gate.open()
    specs = await second.expect(V0MachineSpecsRequest)
    finished = await second.expect(V0JobFinishedRequest)
    assert specs.job_uuid == finished.job_uuid == str(gen.job_uuid)
    assert gen.is_answer(finished.docker_process_stdout)
    assert job.outcome_delivered and auths(miner) == 1  # only the first connection authenticated
    # Authenticating afterwards: the manifest, and the result is not sent a second time.
    await second.authenticate()
    await second.fence()
    await other.authenticate()
    await other.fence()
    await second.ws.close()
    await other.ws.close()


async def test_legacy_holds_the_result_until_reauthentication(miners: Callable[..., Any]) -> None:
    gate = Gate()
    miner: SimulatedMiner = await miners(ReconnectMode.LEGACY, Behaviour.DISCONNECT, runner=gate)
    job, gen = await job_running_after_a_drop(miner)
    second = await open_client(miner)
    await miner.wait_for(lambda: len(miner.connections) == 1)
    gate.open()
    await miner.wait_for(lambda: job.outcome is not None)
    assert job.state is JobState.FINISHED and not job.outcome_delivered and not job.listeners
    await second.authenticate()  # the manifest is the first frame: nothing was pushed before
    finished = await second.expect(V0JobFinishedRequest)
    assert finished.job_uuid == str(gen.job_uuid) and gen.is_answer(finished.docker_process_stdout)
    assert job.outcome_delivered
    await second.ws.close()


@pytest.mark.parametrize("mode", list(ReconnectMode))
async def test_a_result_that_came_while_disconnected_waits_for_authentication(
    mode: ReconnectMode, miners: Callable[..., Any]
) -> None:
    """Both modes, as the real miner's `get_not_reported`: nobody heard it, so it goes after auth."""
    gate = Gate()
    miner: SimulatedMiner = await miners(mode, Behaviour.DISCONNECT, runner=gate)
    job, gen = await job_running_after_a_drop(miner)
    gate.open()
    await miner.wait_for(lambda: job.outcome is not None)
    assert not job.outcome_delivered
    second = await open_client(miner)
    await miner.wait_for(lambda: len(miner.connections) == 1)
    assert not job.listeners  # a finished job is not joined
    await second.authenticate()
    finished = await second.expect(V0JobFinishedRequest)
    assert gen.is_answer(finished.docker_process_stdout) and job.outcome_delivered
    await second.fence()
    await second.ws.close()


@pytest.mark.parametrize("mode", list(ReconnectMode))
async def test_ready_waits_for_authentication_and_the_payload_goes_on_the_new_connection(
    mode: ReconnectMode, miners: Callable[..., Any]
) -> None:
    miner: SimulatedMiner = await miners(mode)
    first = await open_client(miner)
    await first.authenticate()
    gen = make_job()
    job = await to_ready(first, gen)
    await first.ws.close()
    await miner.wait_for(lambda: not miner.connections)
    second = await open_client(miner)
    await miner.wait_for(lambda: len(miner.connections) == 1)
    assert [c.serial for c in job.listeners] == ([2] if mode is ReconnectMode.REAL else [])
    await second.authenticate()  # the manifest first: the ready was not pushed before it
    assert (await second.expect(V0ExecutorReadyRequest)).job_uuid == str(gen.job_uuid)
    await second.send(job_request(gen))
    await second.expect(V0MachineSpecsRequest)
    finished = await second.expect(V0JobFinishedRequest)
    assert gen.is_answer(finished.docker_process_stdout)
    await second.ws.close()


@pytest.mark.parametrize("mode", list(ReconnectMode))
async def test_job_request_on_a_connection_that_never_joined_the_job(
    mode: ReconnectMode, miners: Callable[..., Any]
) -> None:
    """`real`: a connection knows only the jobs it joined (opened before the job: unknown job);
    `legacy`: every job of the validator, whose messages go to its latest authenticated connection."""
    miner: SimulatedMiner = await miners(mode)
    older = await open_client(miner)
    await older.authenticate()
    newer = await open_client(miner)
    await newer.authenticate()
    gen = make_job()
    await to_ready(newer, gen)
    await older.send(job_request(gen))
    if mode is ReconnectMode.REAL:
        error = await older.expect(GenericError)
        assert error.details == f"Received JobRequest for unknown job_uuid: {gen.job_uuid}"
    else:  # accepted; the result goes to the latest authenticated connection
        await newer.expect(V0MachineSpecsRequest)
        finished = await newer.expect(V0JobFinishedRequest)
        assert gen.is_answer(finished.docker_process_stdout)
    await older.ws.close()
    await newer.ws.close()
