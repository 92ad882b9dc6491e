"""The miner simulator over real sockets: authentication, manifest, jobs, receipts, behaviours."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import pickle
import random
import string
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx
import pytest
from cryptography.fernet import Fernet
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from horde_common.crypto import sign, verify
from horde_common.protocol.miner import (
    ExecutorClass,
    GenericError,
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    MinerMessage,
    ProtocolError,
    V0AcceptJobRequest,
    V0AuthenticateRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFailedRequest,
    V0JobFinishedReceiptRequest,
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
from horde_localnet.miners import Behaviour, BehaviourSpec, JobState, MinerFleet, SimulatedMiner

T = TypeVar("T")
WAIT = 10.0
GPU = ExecutorClass.SPIN_UP_4MIN_GPU_24GB
VALIDATOR = keys.validator_keypair(0)
OTHER_VALIDATOR = keys.validator_keypair(1)


# ------------------------------------------------------------------------------------ wire jobs
# Jobs are built here from the hashcat job format of docs/miner-protocol.md §3.13, not by the job
# runner's generators: the simulator is tested through the wire protocol alone. Whether it also
# answers the job runner's real jobs is tested in services/job-runner/tests/test_against_localnet_*.

Flavour = Literal["hashcat", "clear", "keyed"]
"""`hashcat`: no script, the image's entrypoint is hashcat (weights version 0); `clear`: the chained
script job with stage 0 in clear, volume in the job request (versions 1-3); `keyed`: stage 0 encrypted
with the command's first password, volume in the initial request (version 4)."""

CHARSET_1 = "?l?d?u"
MASK = "?1?d"  # 62 x 10 = 620 candidates: the localnet difficulty, a millisecond of brute force
STAGE_MODES = {"1410": hashlib.sha256, "10810": hashlib.sha384, "1710": hashlib.sha512}
PASSWORDS_PER_STAGE = 3
EMULATED_SCRIPT = "# the decryption script: the simulator emulates it unless run_scripts is set\n"
JOB_TIMEOUT = 60  # seconds; the simulator answers these jobs in milliseconds
IMAGE = "backenddevelopersltd/compute-horde-job:v1-latest"  # the simulator runs no image: any name does


@dataclass(frozen=True, slots=True)
class WireJob:
    """What a validator sends for one job, and the answer an honest executor prints."""

    job_uuid: uuid.UUID
    volume: dict[str, Any]
    raw_script: str | None
    docker_run_cmd: list[str]
    volume_in_initial_request: bool
    answer: str

    def is_answer(self, stdout: str) -> bool:
        return stdout.strip() == self.answer


def _hash_lines(mode: str, salt: bytes, passwords: list[str]) -> str:
    hasher = STAGE_MODES[mode]
    return "\n".join(f"{hasher(p.encode() + salt).hexdigest()}:{salt.hex()}" for p in passwords)


def _fernet_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


def _inline_volume(payload: bytes) -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", payload)
    return {
        "volume_type": "inline",
        "contents": base64.b64encode(buf.getvalue()).decode(),
        "relative_path": None,
    }


def make_job(flavour: Flavour = "keyed", seed: int | None = None) -> WireJob:
    """A job of `flavour` whose passwords fit `MASK`; the same `seed` gives the same job."""
    rng = random.Random(seed)
    job_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
    charset = string.ascii_letters + string.digits

    def password() -> str:
        return rng.choice(charset) + rng.choice(string.digits)

    def salt() -> bytes:
        return rng.randbytes(8)

    if flavour == "hashcat":
        secret = password()
        cmd = ["--attack-mode", "3", "--hash-type", "1410", "--hex-salt", "-1", CHARSET_1]
        cmd += ["--outfile-format", "2", "--quiet", "/volume/payload.txt", MASK]
        volume = _inline_volume(_hash_lines("1410", salt(), [secret]).encode())
        return WireJob(job_uuid, volume, None, cmd, False, secret)
    stages = [sorted({password() for _ in range(PASSWORDS_PER_STAGE)}) for _ in STAGE_MODES]
    first = f"first-{password()}" if flavour == "keyed" else None
    payloads: list[str] = []
    for i, (mode, passwords) in enumerate(zip(STAGE_MODES, stages, strict=True)):
        text = _hash_lines(mode, salt(), passwords)
        key_secret = first if i == 0 else "\n".join(stages[i - 1])
        payloads.append(
            text if key_secret is None else Fernet(_fernet_key(key_secret)).encrypt(text.encode()).decode()
        )
    job = {
        "n": len(stages),
        "payloads": payloads,
        "masks": [MASK] * len(stages),
        "algorithms": list(STAGE_MODES),
    }
    digest = hashlib.sha256("".join("".join(stage) for stage in stages).encode()).digest()
    cmd = ["/script.py"] if first is None else ["/script.py", first]
    volume = _inline_volume(pickle.dumps(job, protocol=4))
    return WireJob(
        job_uuid, volume, EMULATED_SCRIPT, cmd, flavour == "keyed", base64.urlsafe_b64encode(digest).decode()
    )


# ------------------------------------------------------------------------------------ test client


class Client:
    """A minimal validator side: builds and signs messages with the protocol models."""

    def __init__(self, ws: ClientConnection, miner: SimulatedMiner, validator: Any = VALIDATOR) -> None:
        self.ws = ws
        self.miner = miner
        self.validator = validator
        self.vhk: str = validator.ss58_address

    async def send(self, message: Any) -> None:
        await self.ws.send(dumps(message))

    async def recv(self, within: float = WAIT) -> MinerMessage:
        return parse_miner_message(await self.recv_raw(within))

    async def recv_raw(self, within: float = WAIT) -> str | bytes:
        async with asyncio.timeout(within):
            return await self.ws.recv()

    async def expect(self, kind: type[T], within: float = WAIT, skip_invalid: bool = False) -> T:
        """The next message, which must be a `kind` (machine specs skipped unless asked for; invalid
        frames skipped when `skip_invalid`)."""
        while True:
            raw = await self.recv_raw(within)
            try:
                msg = parse_miner_message(raw)
            except ProtocolError:
                if skip_invalid:
                    continue
                raise
            if isinstance(msg, V0MachineSpecsRequest) and kind is not V0MachineSpecsRequest:
                continue
            assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
            return msg

    def auth_request(
        self,
        *,
        timestamp: int | None = None,
        miner_hotkey: str | None = None,
        validator_hotkey: str | None = None,
        signer: Any = None,
    ) -> V0AuthenticateRequest:
        payload = AuthenticationPayload(
            validator_hotkey=validator_hotkey or self.vhk,
            miner_hotkey=miner_hotkey or self.miner.hotkey,
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
        return V0AuthenticateRequest(
            payload=payload, signature=sign(signer or self.validator, payload.blob_for_signing())
        )

    async def authenticate(self) -> V0ExecutorManifestRequest:
        await self.send(self.auth_request())
        return await self.expect(V0ExecutorManifestRequest)

    def initial_request(
        self,
        gen: WireJob,
        *,
        bad_signature: bool = False,
        executor_class: ExecutorClass = GPU,
    ) -> V0InitialJobRequest:
        job_uuid = str(gen.job_uuid)
        payload = JobStartedReceiptPayload(
            job_uuid=job_uuid,
            miner_hotkey=self.miner.hotkey,
            validator_hotkey=self.vhk,
            timestamp=datetime.now(UTC),
            executor_class=executor_class,
            max_timeout=JOB_TIMEOUT,
            is_organic=False,
            ttl=240,
        )
        signer = OTHER_VALIDATOR if bad_signature else self.validator
        return V0InitialJobRequest.model_validate(
            {
                "job_uuid": job_uuid,
                "executor_class": executor_class,
                "base_docker_image_name": IMAGE,
                "timeout_seconds": JOB_TIMEOUT,
                "volume": gen.volume if gen.volume_in_initial_request else None,
                "job_started_receipt_payload": payload,
                "job_started_receipt_signature": sign(signer, payload.blob_for_signing()),
            }
        )

    def job_request(self, gen: WireJob, *, force_volume: bool = False) -> V0JobRequest:
        return V0JobRequest.model_validate(
            {
                "job_uuid": str(gen.job_uuid),
                "executor_class": GPU,
                "docker_image_name": IMAGE,
                "raw_script": gen.raw_script,
                "docker_run_options_preset": "nvidia_all",
                "docker_run_cmd": gen.docker_run_cmd,
                "volume": gen.volume if force_volume or not gen.volume_in_initial_request else None,
            }
        )

    def accepted_receipt(self, job_uuid: str) -> V0JobAcceptedReceiptRequest:
        now = datetime.now(UTC)
        payload = JobAcceptedReceiptPayload(
            job_uuid=job_uuid,
            miner_hotkey=self.miner.hotkey,
            validator_hotkey=self.vhk,
            timestamp=now,
            time_accepted=now,
            ttl=360,
        )
        return V0JobAcceptedReceiptRequest(
            payload=payload, signature=sign(self.validator, payload.blob_for_signing())
        )

    def finished_receipt(self, job_uuid: str, score: float, took_us: int) -> V0JobFinishedReceiptRequest:
        now = datetime.now(UTC)
        payload = JobFinishedReceiptPayload(
            job_uuid=job_uuid,
            miner_hotkey=self.miner.hotkey,
            validator_hotkey=self.vhk,
            timestamp=now,
            time_started=now,
            time_took_us=took_us,
            score_str=f"{score:.6g}",
        )
        return V0JobFinishedReceiptRequest(
            payload=payload, signature=sign(self.validator, payload.blob_for_signing())
        )


@pytest.fixture
async def start_fleet() -> AsyncIterator[Callable[..., Awaitable[MinerFleet]]]:
    fleets: list[MinerFleet] = []

    async def start(count: int = 1, **kwargs: Any) -> MinerFleet:
        kwargs.setdefault("known_validators", [VALIDATOR.ss58_address])
        fleet = MinerFleet(count, 0, **kwargs)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()


async def open_client(
    miner: SimulatedMiner, validator: Any = VALIDATOR, path_hotkey: str | None = None
) -> Client:
    ws = await connect(miner.url_for(path_hotkey or validator.ss58_address), max_size=50 * 2**20)
    return Client(ws, miner, validator)


async def run_honest_job(client: Client, gen: WireJob) -> V0JobFinishedRequest:
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest)
    await client.send(client.accepted_receipt(str(gen.job_uuid)))
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.job_request(gen))
    specs = await client.expect(V0MachineSpecsRequest)
    assert specs.job_uuid == str(gen.job_uuid)
    return await client.expect(V0JobFinishedRequest)


async def expect_closed(client: Client, code: int = 1000) -> None:
    with pytest.raises(ConnectionClosed) as info:
        await client.recv_raw()
    assert info.value.rcvd is not None and info.value.rcvd.code == code


# ---------------------------------------------------------------------------------- authentication


async def test_auth_success_manifest_first(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(2, executors={GPU: 3, "always_on.llm.a6000": 1})
    assert len(set(fleet.ports)) == 2
    assert fleet.hotkeys == [keys.miner_hotkey(0), keys.miner_hotkey(1)]
    client = await open_client(fleet.miner(1))
    manifest = await client.authenticate()
    assert manifest.manifest.executor_counts() == {GPU: 3, ExecutorClass.ALWAYS_ON_LLM_A6000: 1}
    await client.ws.close()


@pytest.mark.parametrize("case", ["too_old", "miner_hotkey", "validator_hotkey", "signature"])
async def test_auth_failures(case: str, start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, known_validators=None)
    miner = fleet.miner(0)
    client = await open_client(miner)
    vhk = VALIDATOR.ss58_address
    other = OTHER_VALIDATOR.ss58_address
    if case == "too_old":
        request, reason = client.auth_request(timestamp=int(time.time()) - 12), "msg too old"
    elif case == "miner_hotkey":
        request = client.auth_request(miner_hotkey=keys.miner_hotkey(5))
        reason = f"wrong miner hotkey ({miner.hotkey}!={keys.miner_hotkey(5)})"
    elif case == "validator_hotkey":
        request = client.auth_request(validator_hotkey=other, signer=OTHER_VALIDATOR)
        reason = f"wrong validator hotkey ({vhk}!={other})"
    else:
        request, reason = client.auth_request(signer=OTHER_VALIDATOR), "Signature mismatches"
    await client.send(request)
    error = await client.expect(GenericError)
    assert error.details == f"Validator {vhk} not authenticated due to: {reason}"
    await expect_closed(client)


async def test_future_timestamp_is_accepted(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    client = await open_client(fleet.miner(0))
    await client.send(client.auth_request(timestamp=int(time.time()) + 3600))
    await client.expect(V0ExecutorManifestRequest)
    await client.ws.close()


async def test_unknown_validator(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(2, behaviours={1: "unknown_validator"})
    # Not in the miner's validator list.
    client = await open_client(fleet.miner(0), OTHER_VALIDATOR)
    error = await client.expect(GenericError)
    assert error.details == f"Unknown validator: {OTHER_VALIDATOR.ss58_address}"
    await expect_closed(client)
    # The behaviour: even a listed validator is unknown.
    client = await open_client(fleet.miner(1))
    assert (await client.expect(GenericError)).details == f"Unknown validator: {VALIDATOR.ss58_address}"
    await expect_closed(client)


async def test_malformed_messages_keep_the_connection(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    client = await open_client(fleet.miner(0))
    for frame in [
        "not json",
        '{"message_type": "Nope"}',
        '{"message_type": "V0JobRequest", "job_uuid": "x"}',
    ]:
        await client.ws.send(frame)
        error = await client.expect(GenericError)
        assert error.details is not None and error.details.startswith("Malformed message: ")
    await client.authenticate()
    await client.ws.send(b"\x00garbage")
    assert (await client.expect(GenericError)).details.startswith("Malformed message: ")  # type: ignore[union-attr]
    gen = make_job()
    finished = await run_honest_job(client, gen)
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_bad_path_is_404(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{fleet.ports[0]}/nope")
    assert response.status_code == 404


async def test_messages_before_auth_are_queued(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    gen = make_job()
    await client.send(client.initial_request(gen))
    await client.send(client.auth_request())
    await client.expect(V0ExecutorManifestRequest)
    assert (await client.expect(V0AcceptJobRequest)).job_uuid == str(gen.job_uuid)
    await client.expect(V0ExecutorReadyRequest)
    await client.ws.close()


# ------------------------------------------------------------------------------------- honest jobs


@pytest.mark.parametrize("flavour", ["hashcat", "clear", "keyed"])
async def test_honest_job_end_to_end(
    flavour: Flavour, start_fleet: Callable[..., Awaitable[MinerFleet]]
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job(flavour)
    finished = await run_honest_job(client, gen)
    assert gen.is_answer(finished.docker_process_stdout), finished
    job = miner.jobs[(VALIDATOR.ss58_address, str(gen.job_uuid))]
    assert job.state is JobState.FINISHED and job.outcome_delivered
    await client.ws.close()


async def test_many_jobs_on_one_connection(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, executors={GPU: 8}, behaviours={0: "instant"})
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gens = [make_job() for _ in range(8)]
    for gen in gens:
        await client.send(client.initial_request(gen))
    ready: set[str] = set()
    while len(ready) < len(gens):
        msg = await client.recv()
        if isinstance(msg, V0ExecutorReadyRequest):
            ready.add(msg.job_uuid)
        else:
            assert isinstance(msg, V0AcceptJobRequest)
    for gen in gens:
        await client.send(client.job_request(gen))
    answers: dict[str, str] = {}
    while len(answers) < len(gens):
        msg = await client.recv()
        if isinstance(msg, V0JobFinishedRequest):
            answers[msg.job_uuid] = msg.docker_process_stdout
    assert all(g.is_answer(answers[str(g.job_uuid)]) for g in gens)
    await client.ws.close()


async def test_worker_processes(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, cpu_workers=1)
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    finished = await run_honest_job(client, gen)
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_job_request_errors(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    stranger = make_job()
    await client.send(client.job_request(stranger))
    error = await client.expect(GenericError)
    assert error.details == f"Received JobRequest for unknown job_uuid: {stranger.job_uuid}"
    gen = make_job()  # volume in the initial request
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.job_request(gen, force_volume=True))
    assert (
        await client.expect(GenericError)
    ).details == f"Received job volume twice job_uuid: {gen.job_uuid}"
    await client.ws.close()


async def test_busy_miner_declines_after_waiting(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, executors={GPU: 1}, executor_wait=0.2)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    first, second = make_job(), make_job()
    await client.send(client.initial_request(first))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.initial_request(second))
    assert (await client.expect(V0DeclineJobRequest)).job_uuid == str(second.job_uuid)
    # Once the first job is done its executor is free again.
    await client.send(client.job_request(first))
    await client.expect(V0JobFinishedRequest, skip_invalid=True)
    third = make_job()
    await client.send(client.initial_request(third))
    assert (await client.expect(V0AcceptJobRequest)).job_uuid == str(third.job_uuid)
    await client.ws.close()


# --------------------------------------------------------------------------------------- receipts


async def test_receipts_are_verified_and_counter_signed(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    job_uuid = str(gen.job_uuid)
    await run_honest_job(client, gen)
    await client.send(client.finished_receipt(job_uuid, 1.3, 1_234_567))
    await miner.wait_for(lambda: len(miner.receipts) == 3)
    kinds = [str(r.payload.receipt_type) for r in miner.receipts]
    assert kinds == ["JobStartedReceipt", "JobAcceptedReceipt", "JobFinishedReceipt"]
    for receipt in miner.receipts:
        assert receipt.payload.job_uuid == job_uuid
        assert receipt.verify_validator_signature()
        assert receipt.verify_miner_signature()
        assert receipt.miner_signature is not None
        assert verify(miner.hotkey, receipt.payload.blob_for_signing(), receipt.miner_signature)
    job = miner.jobs[(VALIDATOR.ss58_address, job_uuid)]
    assert (job.time_took_us, job.score_str) == (1_234_567, "1.3")
    assert fleet.receipts == miner.receipts

    # The receipts file over plain HTTP on the same port.
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{miner.port}/receipts/receipts.csv")
    assert response.status_code == 200
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("type,validator_signature,miner_signature,")
    assert len(lines) == 4
    await client.ws.close()


async def test_bad_receipt_is_not_stored_but_the_job_proceeds(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await client.send(client.initial_request(gen, bad_signature=True))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest, skip_invalid=True)
    assert gen.is_answer(finished.docker_process_stdout)
    assert miner.receipts == []
    assert miner.rejected_receipts == [("JobStartedReceipt", "bad signature")]
    await client.ws.close()


# ------------------------------------------------------------------------------------- behaviours


async def _accept_and_ready(client: Client, gen: WireJob) -> None:
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest, skip_invalid=True)
    await client.expect(V0ExecutorReadyRequest, skip_invalid=True)


async def test_behaviour_decline(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: Behaviour.DECLINE})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await client.send(client.initial_request(gen))
    assert (await client.expect(V0DeclineJobRequest)).job_uuid == str(gen.job_uuid)
    await client.ws.close()


async def test_behaviour_executor_fail(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "executor_fail"})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest)
    assert (await client.expect(V0ExecutorFailedRequest)).job_uuid == str(gen.job_uuid)
    assert fleet.miner(0).pool.free(GPU) == 1
    await client.ws.close()


async def test_behaviour_job_fail(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "job_fail"})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await _accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    failed = await client.expect(V0JobFailedRequest)
    assert failed.docker_process_exit_status == 1
    await client.ws.close()


async def test_behaviour_wrong_answer(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "wrong_answer"})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await _accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest)
    assert not gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_behaviour_timeout_never_answers(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "timeout"})
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await _accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    await miner.wait_for(
        lambda: miner.jobs[(VALIDATOR.ss58_address, str(gen.job_uuid))].state is JobState.RUNNING
    )
    with pytest.raises(TimeoutError):
        await client.recv(within=0.5)
    await client.ws.close()


async def test_behaviour_slow(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "slow:0.4"})
    assert fleet.miner(0).config.behaviour == BehaviourSpec(Behaviour.SLOW, 0.4)
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await _accept_and_ready(client, gen)
    started = time.monotonic()
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest, skip_invalid=True)
    assert time.monotonic() - started >= 0.4
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_behaviour_garbage(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "garbage"})
    client = await open_client(fleet.miner(0))
    await client.send(client.auth_request())
    await client.expect(V0ExecutorManifestRequest)  # still first
    gen = make_job()
    await client.send(client.initial_request(gen))
    invalid = 0
    seen: list[str] = []
    while "V0ExecutorReadyRequest" not in seen:
        try:
            msg = await client.recv()
        except ProtocolError:
            invalid += 1
            continue
        if getattr(msg, "job_uuid", None) == str(gen.job_uuid):
            seen.append(msg.message_type)
    assert seen == ["V0AcceptJobRequest", "V0ExecutorReadyRequest"]
    await client.send(client.job_request(gen))
    finished = None
    while finished is None:
        raw = await client.recv_raw()
        try:
            msg = parse_miner_message(raw)
        except ProtocolError:
            invalid += 1
            continue
        if isinstance(msg, V0JobFinishedRequest):
            finished = msg
    assert invalid >= 5
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_behaviour_disconnect_then_redelivery(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1, behaviours={0: "disconnect"})
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await _accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    with pytest.raises(ConnectionClosed):
        await client.recv_raw()
    job = miner.jobs[(VALIDATOR.ss58_address, str(gen.job_uuid))]
    await miner.wait_for(lambda: job.outcome is not None)
    assert not job.outcome_delivered
    # Reconnect and re-authenticate: manifest first, then the undelivered outcome.
    client = await open_client(miner)
    await client.authenticate()
    finished = await client.expect(V0JobFinishedRequest)
    assert finished.job_uuid == str(gen.job_uuid)
    assert gen.is_answer(finished.docker_process_stdout)
    assert job.outcome_delivered
    await client.ws.close()


async def test_ready_is_reannounced_after_reconnect(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await _accept_and_ready(client, gen)
    await client.ws.close()
    client = await open_client(miner)
    await client.authenticate()
    assert (await client.expect(V0ExecutorReadyRequest)).job_uuid == str(gen.job_uuid)
    # The payload can still be delivered on the new connection.
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest, skip_invalid=True)
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_outcomes_go_only_to_the_owning_validator(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1, known_validators=None)
    miner = fleet.miner(0)
    mine = await open_client(miner)
    await mine.authenticate()
    other = await open_client(miner, OTHER_VALIDATOR)
    await other.authenticate()
    gen = make_job()
    await run_honest_job(mine, gen)
    with pytest.raises(TimeoutError):
        await other.recv(within=0.3)
    # The other validator does not know this job.
    await other.send(other.job_request(gen))
    assert (
        await other.expect(GenericError)
    ).details == f"Received JobRequest for unknown job_uuid: {gen.job_uuid}"
    await mine.ws.close()
    await other.ws.close()


# ------------------------------------------------------------------------------------------ fleet


def test_fleet_matches_the_localnet_metagraph() -> None:
    spec = load_spec(DEFAULT_METAGRAPH_PATH)
    fleet = MinerFleet.from_spec(spec)
    neurons = {n.hotkey: n for n in spec.build_neurons()}
    assert len(fleet.miners) == spec.miners.count - len(spec.miners.not_serving)
    for miner in fleet.miners:
        neuron = neurons[miner.hotkey]
        assert miner.hotkey == keys.miner_hotkey(miner.index)
        assert (neuron.axon_ip, neuron.axon_port) == (miner.host, miner.port)
        assert miner.config.known_validators == {keys.validator_hotkey(v.index) for v in spec.validators}
        extra = spec.miners.model_extra or {}
        assert {str(k): v for k, v in miner.config.executors.items()} == extra["executors"]


def test_behaviour_parsing() -> None:
    assert BehaviourSpec.parse("slow:2.5") == BehaviourSpec(Behaviour.SLOW, 2.5)
    assert BehaviourSpec.parse("slow").final_delay == 60.0
    assert BehaviourSpec.parse(Behaviour.DECLINE).kind is Behaviour.DECLINE
    with pytest.raises(ValueError, match="unknown miner behaviour"):
        BehaviourSpec.parse("lazy")
    with pytest.raises(ValueError, match="unknown executor class"):
        MinerFleet(1, executors={"gpu-9000": 1})


def test_cli_arguments() -> None:
    from horde_localnet.miners.__main__ import build_parser

    args = build_parser().parse_args(
        [
            "--count",
            "3",
            "--base-port",
            "0",
            "--executors",
            "spin_up-4min.gpu-24gb=2",
            "--behaviour",
            "1=slow:3",
        ]
    )
    assert args.count == 3 and args.executors == {"spin_up-4min.gpu-24gb": 2}
    assert args.behaviour == [(1, BehaviourSpec(Behaviour.SLOW, 3.0))]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--behaviour", "x=honest"])


async def test_job_uuid_is_per_validator(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    """Same job uuid from two validators: two separate jobs (job ids are per validator)."""
    fleet = await start_fleet(1, executors={GPU: 2}, known_validators=None)
    miner = fleet.miner(0)
    a = await open_client(miner)
    b = await open_client(miner, OTHER_VALIDATOR)
    await a.authenticate()
    await b.authenticate()
    gen = make_job(seed=3)
    await _accept_and_ready(a, gen)
    await _accept_and_ready(b, gen)
    assert len(miner.jobs) == 2
    assert {k[0] for k in miner.jobs} == {VALIDATOR.ss58_address, OTHER_VALIDATOR.ss58_address}
    assert uuid.UUID(next(iter(miner.jobs))[1]) == gen.job_uuid
    await a.ws.close()
    await b.ws.close()
