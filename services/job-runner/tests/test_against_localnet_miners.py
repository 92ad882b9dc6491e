"""The job runner's real hashcat jobs, every weights version, through a simulated miner's socket.

Moved from the simulator's own tests, which build their jobs from the wire format alone: this is
the check that a job made by `horde_job_runner.generators` is run and answered by the localnet
miner exactly as it is by a real one (docs/miner-protocol.md §3.13), including with the validator's
own script run in a subprocess (`run_scripts`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect

from horde_common.crypto import sign
from horde_common.protocol.miner import (
    ExecutorClass,
    JobStartedReceiptPayload,
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
from horde_job_runner.generators import HashcatJobGenerator, make_generator
from horde_localnet import keys
from horde_localnet.miners import MinerFleet, SimulatedMiner

T = TypeVar("T")
WAIT = 10.0  # seconds for one message; a localnet job takes milliseconds
GPU = ExecutorClass.SPIN_UP_4MIN_GPU_24GB
VALIDATOR = keys.validator_keypair(0)


class Client:
    """The validator side of one connection, just enough to run one honest job at a time."""

    def __init__(self, ws: ClientConnection, miner: SimulatedMiner) -> None:
        self.ws = ws
        self.miner = miner

    async def send(self, message: Any) -> None:
        await self.ws.send(dumps(message))

    async def expect(self, kind: type[T]) -> T:
        """The next message, which must be a `kind` (machine specs skipped unless asked for)."""
        while True:
            async with asyncio.timeout(WAIT):
                msg = parse_miner_message(await self.ws.recv())
            if isinstance(msg, V0MachineSpecsRequest) and kind is not V0MachineSpecsRequest:
                continue
            assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
            return msg

    async def authenticate(self) -> None:
        payload = AuthenticationPayload(
            validator_hotkey=VALIDATOR.ss58_address,
            miner_hotkey=self.miner.hotkey,
            timestamp=int(time.time()),
        )
        await self.send(
            V0AuthenticateRequest(payload=payload, signature=sign(VALIDATOR, payload.blob_for_signing()))
        )
        await self.expect(V0ExecutorManifestRequest)

    async def run_job(self, gen: HashcatJobGenerator) -> V0JobFinishedRequest:
        job_uuid = str(gen.job_uuid)
        receipt = JobStartedReceiptPayload(
            job_uuid=job_uuid,
            miner_hotkey=self.miner.hotkey,
            validator_hotkey=VALIDATOR.ss58_address,
            timestamp=datetime.now(UTC),
            executor_class=GPU,
            max_timeout=gen.timeout_seconds(),
            is_organic=False,
            ttl=240,
        )
        initial = V0InitialJobRequest.model_validate(
            {
                "job_uuid": job_uuid,
                "executor_class": GPU,
                "base_docker_image_name": gen.base_docker_image_name(),
                "timeout_seconds": gen.timeout_seconds(),
                "volume": gen.initial_request_volume(),
                "job_started_receipt_payload": receipt,
                "job_started_receipt_signature": sign(VALIDATOR, receipt.blob_for_signing()),
            }
        )
        await self.send(initial)
        await self.expect(V0AcceptJobRequest)
        await self.expect(V0ExecutorReadyRequest)
        request = V0JobRequest.model_validate(
            {
                "job_uuid": job_uuid,
                "executor_class": GPU,
                "docker_image_name": gen.docker_image_name(),
                "raw_script": gen.raw_script(),
                "docker_run_options_preset": gen.docker_run_options_preset(),
                "docker_run_cmd": gen.docker_run_cmd(),
                "volume": gen.job_request_volume(),
            }
        )
        await self.send(request)
        finished = await self.expect(V0JobFinishedRequest)
        assert finished.job_uuid == job_uuid
        return finished


def make_job(weights_version: int, miner: SimulatedMiner) -> HashcatJobGenerator:
    gen = make_generator(GPU, weights_version, miner.hotkey, "localnet", None, now=datetime.now(UTC))
    assert isinstance(gen, HashcatJobGenerator)
    return gen


async def start_miner(**kwargs: Any) -> MinerFleet:
    fleet = MinerFleet(1, 0, known_validators=[VALIDATOR.ss58_address], **kwargs)
    await fleet.start()
    return fleet


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    fleet = await start_miner()
    miner = fleet.miner(0)
    async with connect(miner.url_for(VALIDATOR.ss58_address), max_size=50 * 2**20) as ws:
        c = Client(ws, miner)
        await c.authenticate()
        yield c
    await fleet.stop()


@pytest.mark.parametrize("weights_version", [0, 1, 2, 3, 4])
async def test_honest_job_end_to_end(weights_version: int, client: Client) -> None:
    gen = make_job(weights_version, client.miner)
    finished = await client.run_job(gen)
    assert gen.verify(finished.docker_process_stdout, 1.0).correct, finished
    assert finished.docker_process_stdout.strip() == gen.expected_answer


async def test_running_the_validators_script() -> None:
    fleet = await start_miner(run_scripts=True)
    miner = fleet.miner(0)
    try:
        async with connect(miner.url_for(VALIDATOR.ss58_address), max_size=50 * 2**20) as ws:
            client = Client(ws, miner)
            await client.authenticate()
            for weights_version in (1, 4):
                gen = make_job(weights_version, miner)
                finished = await client.run_job(gen)
                assert gen.verify(finished.docker_process_stdout, 1.0).correct, finished
    finally:
        await fleet.stop()
