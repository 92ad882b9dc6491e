"""Jobs the simulated executors cannot run (neither hashcat nor an LLM image): described, never executed,
and subject to the miner's behaviours like any other job (docs/organic.md §9)."""

from __future__ import annotations

import base64
import io
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from horde_common.protocol.miner import (
    V0DeclineJobRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
    V0JobRequest,
)
from horde_localnet.miners import MinerFleet, execute
from horde_localnet.miners.generic import is_hashcat_command
from testing.miner_client import IMAGE, WireJob, accept_and_ready, open_client, run_honest_job

PRINT_CMD = ["python", "-c", "print(1)"]
PRINT_STDOUT = f"simulated: {IMAGE} python -c 'print(1)'\n"


def inline_volume(files: dict[str, bytes]) -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return {
        "volume_type": "inline",
        "contents": base64.b64encode(buf.getvalue()).decode(),
        "relative_path": None,
    }


def generic_job(cmd: list[str] | None = None) -> WireJob:
    """A job with a command the simulator does not run; `answer` is the stdout it must print."""
    return WireJob(
        job_uuid=uuid.uuid4(),
        volume=inline_volume({"readme.txt": b"hello"}),
        raw_script=None,
        docker_run_cmd=PRINT_CMD if cmd is None else cmd,
        volume_in_initial_request=True,
        answer=PRINT_STDOUT.strip(),
    )


# ------------------------------------------------------------------------------------------ execute


def test_a_generic_job_is_described_deterministically() -> None:
    job = {"docker_image_name": IMAGE, "docker_run_cmd": PRINT_CMD, "raw_script": None, "volume": None}
    first, second = execute(job), execute(dict(job))
    assert (first.exit_status, first.stdout, first.stderr) == (0, PRINT_STDOUT, "")
    assert second == first


def test_nothing_is_run_fetched_or_uploaded(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = f"open({str(marker)!r}, 'w').write('x')\n"
    job = {
        "docker_image_name": "python:3.11-slim",
        "docker_run_cmd": ["python", "/script.py"],
        "raw_script": script,
        "run_scripts": True,  # only the validator's hashcat script (`/script.py` first) ever runs
        "volume": {"volume_type": "zip_url", "contents": "http://example.invalid/in.zip"},
        "output_upload": {"output_upload_type": "zip_and_http_put", "url": "http://example.invalid/out"},
    }
    result = execute(job)
    assert result.exit_status == 0, result
    assert result.stdout == (
        "simulated: python:3.11-slim python /script.py\n"
        f"raw_script: {len(script)} bytes, not run\n"
        "volume: zip_url, not fetched\n"
        "output_upload: zip_and_http_put, skipped (nothing produced)\n"
    )
    assert not marker.exists()


def test_an_inline_volume_is_unpacked_and_a_broken_one_fails_the_job() -> None:
    volume = inline_volume({"a.txt": b"A", "b/c.txt": b"C"})
    result = execute({"docker_image_name": "img", "docker_run_cmd": ["run"], "volume": volume})
    assert result.stdout == "simulated: img run\nvolume: inline, 2 file(s), not mounted\n"
    broken = execute(
        {
            "docker_image_name": "img",
            "docker_run_cmd": ["run"],
            "volume": {"volume_type": "inline", "contents": "!!!"},
        }
    )
    assert broken.exit_status == 1 and "inline volume" in broken.stderr


@pytest.mark.parametrize(
    ("cmd", "hashcat"),
    [
        (["--hash-type", "1410", "/volume/payload.txt", "?l?d"], True),
        (["-m", "1410", "/volume/payload.txt", "?l?d"], True),
        (["hashcat", "-m", "1410", "/volume/payload.txt", "?l?d"], True),
        (["python", "-m", "http.server"], False),
        (["--quiet"], False),
        ([], False),
    ],
)
def test_which_commands_are_hashcat(cmd: list[str], hashcat: bool) -> None:
    assert is_hashcat_command(cmd) is hashcat


def test_a_hashcat_command_still_fails_like_hashcat() -> None:
    result = execute({"docker_run_cmd": ["--hash-type", "9999", "/volume/payload.txt", "?l"], "volume": None})
    assert result.exit_status == 1 and "no such file" in result.stderr


# --------------------------------------------------------------------------- over sockets, behaviours


async def test_an_honest_miner_completes_a_generic_job(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = generic_job()
    finished = await run_honest_job(client, gen)
    assert finished.docker_process_stdout == PRINT_STDOUT + "volume: inline, 1 file(s), not mounted\n"
    await client.ws.close()


async def test_an_output_upload_is_skipped_with_a_note(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = generic_job(["run"])
    await accept_and_ready(client, gen)
    upload = {
        "output_upload_type": "single_file_put",
        "relative_path": "out.txt",
        "url": "http://example.invalid/o",
    }
    request = client.job_request(gen).model_dump(mode="json")
    await client.send(V0JobRequest.model_validate({**request, "output_upload": upload}))
    finished = await client.expect(V0JobFinishedRequest)
    assert (
        finished.docker_process_stdout.splitlines()[-1]
        == "output_upload: single_file_put, skipped (nothing produced)"
    )
    await client.ws.close()


async def test_behaviours_apply_to_generic_jobs(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(4, behaviours={0: "wrong_answer", 1: "job_fail", 2: "slow:0.4", 3: "decline"})
    wrong = await open_client(fleet.miner(0))
    await wrong.authenticate()
    gen = generic_job()
    await accept_and_ready(wrong, gen)
    await wrong.send(wrong.job_request(gen))
    assert not (await wrong.expect(V0JobFinishedRequest)).docker_process_stdout.startswith("simulated:")

    failing = await open_client(fleet.miner(1))
    await failing.authenticate()
    gen = generic_job()
    await accept_and_ready(failing, gen)
    await failing.send(failing.job_request(gen))
    assert (await failing.expect(V0JobFailedRequest)).docker_process_exit_status == 1

    slow = await open_client(fleet.miner(2))
    await slow.authenticate()
    gen = generic_job()
    await accept_and_ready(slow, gen)
    started = time.monotonic()
    await slow.send(slow.job_request(gen))
    finished = await slow.expect(V0JobFinishedRequest, skip_invalid=True)
    assert time.monotonic() - started >= 0.4
    assert finished.docker_process_stdout.startswith(PRINT_STDOUT)

    declining = await open_client(fleet.miner(3))
    await declining.authenticate()
    gen = generic_job()
    await declining.send(declining.initial_request(gen))
    assert (await declining.expect(V0DeclineJobRequest)).job_uuid == str(gen.job_uuid)
    for client in (wrong, failing, slow, declining):
        await client.ws.close()
