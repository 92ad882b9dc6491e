"""LLM jobs on the miner simulator over real sockets and the real moto_server on 127.0.0.1:9000.

The solver really downloads the series and really uploads its answers to a presigned PUT URL; the
prompt generator really uploads its series; the trusted miner serves one validator only. Each test
uses buckets of its own. Jobs are built here from the wire shapes of docs/crossval.md §8, not by the
job-runner or the cross-validator (localnet tests import no service).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from horde_common import s3
from horde_common.crossval import ExpectedPrompt, check_answers, parse_answers, solved_key, solver_cmd
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
    V0JobFailedRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    dumps,
    parse_miner_message,
)
from horde_common.protocol.miner.validator_messages import AuthenticationPayload
from horde_localnet import keys, llm
from horde_localnet.miners import BehaviourSpec, MinerConfig, SimulatedMiner, trusted_miner
from testing.s3 import public_bucket, s3_settings

LLM = ExecutorClass.ALWAYS_ON_LLM_A6000
VALIDATOR = keys.validator_keypair(0)
OTHER_VALIDATOR = keys.validator_keypair(1)
WAIT = 15.0
LLM_TIMEOUT = 48  # the LLM job's limit (docs/crossval.md §7.5)
SOLVER_IMAGE = "docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest"
GENERATOR_IMAGE = "backenddevelopersltd/compute-horde-prompt-gen-phi3:v0-latest"


@pytest.fixture()
def buckets() -> tuple[str, str]:
    """A prompts and an answers bucket of this test's own, public-read as provisioning leaves them."""
    return public_bucket("horde-llm-p"), public_bucket("horde-llm-a")


@pytest.fixture()
async def miners() -> AsyncIterator[list[SimulatedMiner]]:
    started: list[SimulatedMiner] = []
    yield started
    for miner in started:
        await miner.stop()


async def start(miners: list[SimulatedMiner], miner: SimulatedMiner) -> SimulatedMiner:
    await miner.start()
    miners.append(miner)
    return miner


def llm_miner(index: int, behaviour: str = "honest", **config: Any) -> SimulatedMiner:
    conf = MinerConfig(
        executors={LLM: 1},
        behaviour=BehaviourSpec.parse(behaviour),
        known_validators=frozenset({VALIDATOR.ss58_address}),
        **config,
    )
    return SimulatedMiner(index, keys.miner_keypair(index), config=conf)


def upload_series(bucket: str, prompts: list[str] | bytes) -> str:
    key = str(uuid.uuid4())
    body = prompts if isinstance(prompts, bytes) else llm.series_text(prompts).encode()
    s3.put_object(s3_settings(), bucket, key, body)
    return s3.public_url(s3_settings(), bucket, key)


def single_file_volume(url: str, relative_path: str) -> dict[str, Any]:
    return {
        "volume_type": "multi_volume",
        "volumes": [{"volume_type": "single_file", "url": url, "relative_path": relative_path}],
    }


def put_uploads(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    uploads = [
        {"output_upload_type": "single_file_put", "url": url, "relative_path": rel, "signed_headers": None}
        for rel, url in pairs
    ]
    return {"output_upload_type": "multi_upload", "uploads": uploads, "system_output": None}


class Validator:
    """Just enough of a validator to run one LLM job per call on a miner."""

    def __init__(self, ws: ClientConnection, miner: SimulatedMiner, keypair: Any = VALIDATOR) -> None:
        self.ws, self.miner, self.keypair = ws, miner, keypair

    @classmethod
    async def connect(cls, miner: SimulatedMiner, keypair: Any = VALIDATOR) -> Validator:
        return cls(await connect(miner.url_for(keypair.ss58_address)), miner, keypair)

    async def recv(self) -> MinerMessage:
        while True:
            async with asyncio.timeout(WAIT):
                msg = parse_miner_message(await self.ws.recv())
            if not isinstance(msg, V0MachineSpecsRequest):
                return msg

    async def authenticate(self, miner_hotkey: str | None = None) -> MinerMessage:
        payload = AuthenticationPayload(
            validator_hotkey=self.keypair.ss58_address,
            miner_hotkey=self.miner.hotkey if miner_hotkey is None else miner_hotkey,
            timestamp=int(time.time()),
        )
        auth = V0AuthenticateRequest(
            payload=payload, signature=sign(self.keypair, payload.blob_for_signing())
        )
        await self.ws.send(dumps(auth))
        return await self.recv()

    async def run_job(
        self,
        *,
        cmd: list[str],
        image: str,
        output_upload: dict[str, Any],
        volume: dict[str, Any] | None = None,
        volume_in_initial: bool = True,
        receipt_miner_hotkey: str | None = None,
    ) -> V0JobFinishedRequest | V0JobFailedRequest:
        job_uuid = str(uuid.uuid4())
        payload = JobStartedReceiptPayload(
            job_uuid=job_uuid,
            miner_hotkey=receipt_miner_hotkey or self.miner.hotkey,
            validator_hotkey=self.keypair.ss58_address,
            timestamp=datetime.now(UTC),
            executor_class=LLM,
            max_timeout=LLM_TIMEOUT,
            is_organic=not volume_in_initial,
            ttl=240,
        )
        initial: dict[str, Any] = {
            "job_uuid": job_uuid,
            "executor_class": LLM,
            "base_docker_image_name": image,
            "timeout_seconds": LLM_TIMEOUT,
            "job_started_receipt_payload": payload,
            "job_started_receipt_signature": sign(self.keypair, payload.blob_for_signing()),
        }
        if volume_in_initial:
            initial["volume"] = volume
        elif volume is not None:
            initial["volume_type"] = volume["volume_type"]
        await self.ws.send(dumps(V0InitialJobRequest.model_validate(initial)))
        assert isinstance(await self.recv(), V0AcceptJobRequest)
        assert isinstance(await self.recv(), V0ExecutorReadyRequest)
        request = {
            "job_uuid": job_uuid,
            "executor_class": LLM,
            "docker_image_name": image,
            "raw_script": None,
            "docker_run_options_preset": "nvidia_all",
            "docker_run_cmd": cmd,
            "volume": None if volume_in_initial else volume,
            "output_upload": output_upload,
        }
        await self.ws.send(dumps(V0JobRequest.model_validate(request)))
        outcome = await self.recv()
        assert isinstance(outcome, V0JobFinishedRequest | V0JobFailedRequest), outcome
        assert outcome.job_uuid == job_uuid
        return outcome


async def solve_on(
    validator: Validator, series_url: str, answers_bucket: str, seed: int, **kwargs: Any
) -> tuple[V0JobFinishedRequest | V0JobFailedRequest, str]:
    """Run one solver job on the series; returns the outcome and the answers' public URL."""
    file_uuid = uuid.uuid4()
    put = s3.presigned_put_url(s3_settings(), answers_bucket, solved_key(file_uuid), expires_s=3600)
    outcome = await validator.run_job(
        cmd=solver_cmd(seed, file_uuid),
        image=SOLVER_IMAGE,
        volume=single_file_volume(series_url, f"{file_uuid}.txt"),
        output_upload=put_uploads([(f"{file_uuid}.json", put)]),
        **kwargs,
    )
    return outcome, s3.public_url(s3_settings(), answers_bucket, solved_key(file_uuid))


async def fetch_answers(url: str) -> dict[str, str]:
    return parse_answers(await s3.download_bytes(url, timeout_s=WAIT))


# ------------------------------------------------------------------------------------------- tests


async def test_the_solver_downloads_the_series_and_uploads_the_right_answers(
    buckets: tuple[str, str], miners: list[SimulatedMiner]
) -> None:
    prompts_bucket, answers_bucket = buckets
    prompts = llm.generated_prompts(uuid.uuid4(), 12)
    series_url = upload_series(prompts_bucket, prompts)
    miner = await start(miners, llm_miner(700))
    validator = await Validator.connect(miner)
    assert isinstance(await validator.authenticate(), V0ExecutorManifestRequest)
    outcome, answers_url = await solve_on(validator, series_url, answers_bucket, seed=1234567)
    assert isinstance(outcome, V0JobFinishedRequest), outcome
    answers = await fetch_answers(answers_url)
    assert answers == {p: llm.answer(1234567, p) for p in prompts}
    expected = [ExpectedPrompt(p, llm.answer(1234567, p)) for p in prompts[3:5]]
    assert check_answers(expected, answers).correct
    # Another seed, other answers: the answer depends on the seed.
    outcome, other_url = await solve_on(validator, series_url, answers_bucket, seed=7)
    assert isinstance(outcome, V0JobFinishedRequest)
    assert (await fetch_answers(other_url))[prompts[0]] != answers[prompts[0]]


async def test_wrong_llm_answers_are_uploaded_but_differ(
    buckets: tuple[str, str], miners: list[SimulatedMiner]
) -> None:
    prompts_bucket, answers_bucket = buckets
    prompts = llm.generated_prompts(uuid.uuid4(), 5)
    series_url = upload_series(prompts_bucket, prompts)
    miner = await start(miners, llm_miner(701, "wrong_llm_answers"))
    validator = await Validator.connect(miner)
    await validator.authenticate()
    outcome, answers_url = await solve_on(validator, series_url, answers_bucket, seed=42)
    assert isinstance(outcome, V0JobFinishedRequest), outcome
    answers = await fetch_answers(answers_url)
    assert set(answers) == set(prompts)
    assert all(answers[p] != llm.answer(42, p) for p in prompts)
    verdict = check_answers([ExpectedPrompt(prompts[0], llm.answer(42, prompts[0]))], answers)
    assert not verdict.correct and verdict.comment == "results does not match expected answers"


async def test_the_trusted_miner_serves_only_its_validator_and_skips_miner_hotkey_checks(
    buckets: tuple[str, str], miners: list[SimulatedMiner]
) -> None:
    _, answers_bucket = buckets
    miner = await start(miners, trusted_miner(VALIDATOR.ss58_address))
    assert miner.config.trusted and miner.manifest().manifest.executor_classes[0].executor_class == LLM

    other = await Validator.connect(miner, OTHER_VALIDATOR)
    refusal = await other.recv()
    assert isinstance(refusal, GenericError) and "Unknown validator" in refusal.details
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(WAIT):
            await other.ws.recv()

    # The validator may not know the trusted miner's key: an empty one in auth and receipts passes.
    validator = await Validator.connect(miner)
    assert isinstance(await validator.authenticate(miner_hotkey=""), V0ExecutorManifestRequest)
    # The answering job, organic style: the workload file in the job request, not the initial one.
    workload = llm.generated_prompts(uuid.uuid4(), 4)
    workload_key = str(uuid.uuid4())
    s3.put_object(s3_settings(), answers_bucket, workload_key, "\n".join(workload).encode())
    workload_url = s3.public_url(s3_settings(), answers_bucket, workload_key)
    outcome, answers_url = await solve_on(
        validator, workload_url, answers_bucket, seed=99, volume_in_initial=False, receipt_miner_hotkey=""
    )
    assert isinstance(outcome, V0JobFinishedRequest), outcome
    assert await fetch_answers(answers_url) == {p: llm.answer(99, p) for p in workload}
    assert miner.receipts and not miner.rejected_receipts  # the started receipt naming no miner


async def test_the_prompt_generator_uploads_n_series_of_p_prompts(
    buckets: tuple[str, str], miners: list[SimulatedMiner]
) -> None:
    prompts_bucket, _ = buckets
    miner = await start(miners, trusted_miner(VALIDATOR.ss58_address))
    validator = await Validator.connect(miner)
    await validator.authenticate()
    series = [uuid.uuid4() for _ in range(3)]
    puts = [
        (f"prompts_{u}.txt", s3.presigned_put_url(s3_settings(), prompts_bucket, str(u), expires_s=3600))
        for u in series
    ]
    cmd = ["--quantize", "--model_name", "phi3", "--batch_size=250", "--num_return_sequences=1"]
    cmd += [
        "--max_new_tokens=40",
        "--number_of_prompts_per_batch",
        "7",
        "--uuids",
        ",".join(map(str, series)),
    ]
    outcome = await validator.run_job(
        cmd=cmd, image=GENERATOR_IMAGE, output_upload=put_uploads(puts), volume_in_initial=False
    )
    assert isinstance(outcome, V0JobFinishedRequest), outcome
    seen: set[str] = set()
    for u in series:
        text = (await s3.download_bytes(s3.public_url(s3_settings(), prompts_bucket, str(u)))).decode()
        lines = text.splitlines()
        assert lines == llm.generated_prompts(u, 7) and text.split("\n") == lines
        assert all(line == line.strip() and line for line in lines)
        seen.update(lines)
    assert len(seen) == 21  # distinct across series too


async def test_an_oversized_series_fails_the_job_and_the_miner_goes_on(
    buckets: tuple[str, str], miners: list[SimulatedMiner]
) -> None:
    prompts_bucket, answers_bucket = buckets
    miner = await start(miners, llm_miner(702, llm_max_download_bytes=1024))
    validator = await Validator.connect(miner)
    await validator.authenticate()
    big = upload_series(prompts_bucket, b"x" * 4096)
    outcome, answers_url = await solve_on(validator, big, answers_bucket, seed=1)
    assert isinstance(outcome, V0JobFailedRequest)
    assert "more than 1024" in outcome.docker_process_stderr
    with pytest.raises(s3.S3DownloadError, match="404"):
        await s3.download_bytes(answers_url)
    small = upload_series(prompts_bucket, ["a small prompt"])
    outcome, answers_url = await solve_on(validator, small, answers_bucket, seed=1)
    assert isinstance(outcome, V0JobFinishedRequest), outcome
    assert await fetch_answers(answers_url) == {"a small prompt": llm.answer(1, "a small prompt")}


async def test_a_trickling_series_download_fails_the_job_within_its_bound(
    buckets: tuple[str, str], miners: list[SimulatedMiner]
) -> None:
    _, answers_bucket = buckets
    stop = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():  # one byte per 100 ms: never done within the miner's bound
            writer.write(b"x")
            await writer.drain()
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        miner = await start(miners, llm_miner(703, llm_download_timeout=0.5))
        validator = await Validator.connect(miner)
        await validator.authenticate()
        began = time.monotonic()
        outcome, _ = await solve_on(validator, f"http://127.0.0.1:{port}/slow", answers_bucket, seed=1)
        assert isinstance(outcome, V0JobFailedRequest)
        assert "not done within 0.5 s" in outcome.docker_process_stderr
        assert time.monotonic() - began < 5
    finally:
        stop.set()
        server.close()
        await server.wait_closed()
