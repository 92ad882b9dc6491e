"""A minimal validator side for tests of the miner simulator over real sockets: hashcat-format jobs
built from the wire format (docs/miner-protocol.md §3.13, not by the job-runner's generators) and a
client that signs its messages with the protocol models."""

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import pytest
from cryptography.fernet import Fernet
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from horde_common.crypto import sign
from horde_common.protocol.miner import (
    ExecutorClass,
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    MinerMessage,
    ProtocolError,
    V0AcceptJobRequest,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    dumps,
    parse_miner_message,
)
from horde_common.protocol.miner.validator_messages import AuthenticationPayload
from horde_localnet import keys
from horde_localnet.miners import SimulatedMiner

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


def unzip_volume(volume: dict[str, Any]) -> dict[str, bytes]:
    """The files of an inline volume (the zip a job request carries), by name."""
    assert volume["volume_type"] == "inline"
    assert volume["relative_path"] is None
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(volume["contents"]))) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


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


async def accept_and_ready(client: Client, gen: WireJob) -> None:
    """Send the initial request and wait for the miner's accept and executor-ready (skipping the
    garbage a misbehaving miner may interleave)."""
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest, skip_invalid=True)
    await client.expect(V0ExecutorReadyRequest, skip_invalid=True)


async def expect_closed(client: Client, code: int = 1000) -> None:
    with pytest.raises(ConnectionClosed) as info:
        await client.recv_raw()
    assert info.value.rcvd is not None and info.value.rcvd.code == code
