"""Hostile input on the job-runner's side of trusted-miner jobs (docs/crossval.md, "Hostile
input"): what the trusted miner says back and what a request carries never leaks a presigned URL's
secret, never grows without bound, and a malformed request is a reported failure."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from horde_common import s3
from horde_common.bus.messages import TrustedJobRequested
from horde_job_runner.organic.handler import OrganicRuntime
from horde_job_runner.trusted import MAX_COMMENT_CHARS, TrustedMiner, run_trusted_job
from horde_localnet import keys
from horde_localnet.miners import trusted_miner
from testing.s3 import public_bucket, s3_settings

pytestmark = pytest.mark.timeout(120)

VALIDATOR = keys.validator_keypair(0)
SIGNATURE = "deadbeefcafe0123456789"  # what a presigned URL's signature looks like to a reader


async def no_sleep(delay: float) -> None:
    return None


@pytest.fixture()
async def miner() -> AsyncIterator[Any]:
    sim = trusted_miner(VALIDATOR.ss58_address)
    await sim.start()
    yield sim
    await sim.stop()


def runtime(sessions: Any) -> OrganicRuntime:
    return OrganicRuntime(sessions=sessions, keypair=VALIDATOR, sleep=no_sleep)


def request(job: dict[str, Any], **extra: Any) -> TrustedJobRequested:
    body = {"kind": "prompt_answering", "job": job, "timeout_s": 20, "wait_timeout_s": 20} | extra
    return TrustedJobRequested(job_uuid=uuid.uuid4(), workload_id="w", request=body)


def solver_job(url: str, put_url: str, last_arg: str) -> dict[str, Any]:
    return {
        "message_type": "V1JobRequest",
        "executor_class": "always_on.llm.a6000",
        "docker_image": "docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest",
        "raw_script": None,
        "args": ["--seed", "1", last_arg],
        "env": {},
        "use_gpu": True,
        "volume": {
            "volume_type": "multi_volume",
            "volumes": [{"volume_type": "single_file", "url": url, "relative_path": "w.txt"}],
        },
        "output_upload": {
            "output_upload_type": "multi_upload",
            "uploads": [{"output_upload_type": "single_file_put", "url": put_url, "relative_path": "w.json"}],
        },
    }


def free_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_miner_failure_echoing_a_signature_is_masked_and_bounded(sessions, miner) -> None:
    """The miner's failure message (here: the solver echoing its argument, a URL with a signature,
    100 000 characters long) reaches the comment and the log only masked and cut."""
    settings = s3_settings()
    bucket = public_bucket("horde-th")
    await s3.put_object_async(settings, bucket, "workload", b"a prompt")
    put_url = s3.presigned_put_url(settings, bucket, "solved/w.json", expires_s=600)
    echoed = f"/volume/w.txt?X-Amz-Signature={SIGNATURE}&pad={'p' * 100_000}"
    msg = request(solver_job(s3.public_url(settings, bucket, "workload"), put_url, echoed))
    with capture_logs() as logs:
        done = await run_trusted_job(runtime(sessions), TrustedMiner("127.0.0.1", miner.port, ""), msg)
    assert not done.success and "job_failed" in (done.comment or "")
    assert "X-Amz-Signature=" in (done.comment or "")  # the echo is there, its value is not
    assert SIGNATURE not in (done.comment or "") and len(done.comment or "") <= MAX_COMMENT_CHARS
    all_logs = json.dumps(logs, default=str)
    assert "trusted.job" in all_logs and SIGNATURE not in all_logs


async def test_a_request_echoed_in_a_validation_error_is_masked_and_bounded(sessions) -> None:
    """An invalid job's error names what was wrong with it; a signature in there is masked."""
    job = {"message_type": f"V9?X-Amz-Signature={SIGNATURE}" + "v" * 100_000}
    done = await run_trusted_job(runtime(sessions), TrustedMiner("127.0.0.1", free_port(), ""), request(job))
    assert not done.success and "invalid trusted job request" in (done.comment or "")
    assert SIGNATURE not in (done.comment or "") and len(done.comment or "") <= MAX_COMMENT_CHARS


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 0, True, "20", None, [20]])
async def test_timeouts_that_are_not_positive_finite_numbers_are_refused(sessions, value: Any) -> None:
    """Anything but a positive finite number (NaN, which compares false with everything, and inf
    included) is refused before dialling; the miner is a port nothing listens on, so a dial would
    end in `connection_failed` instead."""
    job = solver_job("http://127.0.0.1:1/x", "http://127.0.0.1:1/y", "/volume/w.txt")
    done = await run_trusted_job(
        runtime(sessions), TrustedMiner("127.0.0.1", free_port(), ""), request(job, timeout_s=value)
    )
    assert not done.success and "invalid trusted job request" in (done.comment or ""), done.comment


@pytest.mark.parametrize(
    "text",
    [
        f"PUT https://s3.example/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SIGNATURE}&x=1",
        f'{{"stderr": "curl: (22) https://b.s3.amazonaws.com/k?Signature={SIGNATURE}\\n"}}',
        f"x-amz-security-token={SIGNATURE} AWSAccessKeyId={SIGNATURE}",
        f"'X-Amz-Credential={SIGNATURE}%2F20261202%2Fus-east-1%2Fs3%2Faws4_request'",
    ],
    ids=["sigv4_url", "json_escaped_sigv2", "bare_params", "quoted_credential"],
)
def test_scrub_text_masks_presigned_secrets_wherever_they_appear(text: str) -> None:
    scrubbed = s3.scrub_text(text)
    assert SIGNATURE not in scrubbed and "**********" in scrubbed
    assert (
        s3.scrub_text("nothing secret: https://s3.example/b/k?x=1")
        == "nothing secret: https://s3.example/b/k?x=1"
    )
