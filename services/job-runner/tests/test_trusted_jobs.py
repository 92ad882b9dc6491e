"""Trusted-miner jobs in the job-runner (docs/crossval.md §9.2) against the localnet trusted miner
(docs/crossval.md §8) and the real moto_server; every way a job cannot run is a reported failure."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from horde_common import s3
from horde_common.bus.messages import TrustedJobRequested
from horde_common.crossval import solver_cmd
from horde_job_runner.organic.handler import OrganicRuntime
from horde_job_runner.synthetic.transport import TransportSettings
from horde_job_runner.trusted import TrustedMiner, run_trusted_job
from horde_localnet import keys, llm
from horde_localnet.miners import trusted_miner
from testing.s3 import MOTO, public_bucket, s3_settings

pytestmark = pytest.mark.timeout(120)

VALIDATOR = keys.validator_keypair(0)


async def no_sleep(delay: float) -> None:
    return None


@pytest.fixture()
async def miner() -> AsyncIterator[Any]:
    sim = trusted_miner(VALIDATOR.ss58_address)
    await sim.start()
    yield sim
    await sim.stop()


def organic_runtime(sessions: Any) -> OrganicRuntime:
    return OrganicRuntime(sessions=sessions, keypair=VALIDATOR, sleep=no_sleep)


def solver_request(
    url: str, put_url: str, file_uuid: uuid.UUID, seed: int, **extra: Any
) -> TrustedJobRequested:
    job = {
        "message_type": "V1JobRequest",
        "executor_class": "always_on.llm.a6000",
        "docker_image": "docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest",
        "raw_script": None,
        "args": solver_cmd(seed, file_uuid),
        "env": {},
        "use_gpu": True,
        "volume": {
            "volume_type": "multi_volume",
            "volumes": [{"volume_type": "single_file", "url": url, "relative_path": f"{file_uuid}.txt"}],
        },
        "output_upload": {
            "output_upload_type": "multi_upload",
            "uploads": [
                {
                    "output_upload_type": "single_file_put",
                    "url": put_url,
                    "relative_path": f"{file_uuid}.json",
                }
            ],
        },
    }
    request = {"kind": "prompt_answering", "job": job, "timeout_s": 20, "wait_timeout_s": 20} | extra
    return TrustedJobRequested(job_uuid=uuid.uuid4(), workload_id="w", request=request)


async def test_solver_job_runs_on_the_trusted_miner(sessions, miner) -> None:
    settings = s3_settings()
    bucket = public_bucket("horde-tj")
    await s3.put_object_async(settings, bucket, "workload", b"first prompt\nsecond prompt")
    file_uuid = uuid.uuid4()
    put_url = s3.presigned_put_url(settings, bucket, f"solved/{file_uuid}.json", expires_s=600)
    msg = solver_request(s3.public_url(settings, bucket, "workload"), put_url, file_uuid, 42)
    where = TrustedMiner("127.0.0.1", miner.port, "")  # placeholder hotkey: the trusted miner skips the check
    done = await run_trusted_job(organic_runtime(sessions), where, msg)
    assert done.success, done.comment
    assert (done.job_uuid, done.workload_id) == (msg.job_uuid, "w")
    body = await s3.download_bytes(s3.public_url(settings, bucket, f"solved/{file_uuid}.json"))
    assert json.loads(body) == {p: llm.answer(42, p) for p in ("first prompt", "second prompt")}
    assert [r.payload.is_organic for r in miner.receipts_of_type("JobStartedReceipt")] == [True]  # type: ignore[union-attr]


async def test_miner_failures_are_reported_not_raised(sessions, miner) -> None:
    file_uuid = uuid.uuid4()
    missing = f"{MOTO}/horde-tj-missing-{uuid.uuid4().hex[:6]}/workload"
    msg = solver_request(missing, f"{MOTO}/nowhere", file_uuid, 1)
    done = await run_trusted_job(organic_runtime(sessions), TrustedMiner("127.0.0.1", miner.port, ""), msg)
    assert not done.success and "job_failed" in (done.comment or "")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not_configured", "not configured"),
        ("expired", "expired"),
        ("invalid", "invalid trusted job request"),
        ("refused", "connection_failed"),
    ],
)
async def test_requests_that_cannot_run(sessions, case: str, expected: str) -> None:
    extra: dict[str, Any] = {}
    if case == "expired":
        extra = {"expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    if case == "invalid":
        extra = {"timeout_s": "soon"}
    msg = solver_request("http://127.0.0.1:1/x", "http://127.0.0.1:1/y", uuid.uuid4(), 1, **extra)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    where = None if case == "not_configured" else TrustedMiner("127.0.0.1", port, "")
    runtime = organic_runtime(sessions)
    if case == "refused":
        runtime.transport_settings = TransportSettings(connect_attempts=1)
    done = await run_trusted_job(runtime, where, msg)
    assert not done.success and expected in (done.comment or "")
