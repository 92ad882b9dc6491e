"""The `horde` command, run as operators run it (a subprocess) against the real servers."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from horde_cli.status import probe
from horde_common.config import load_settings
from horde_common.service import ServiceRunner, ServiceSpec
from horde_common.service_ports import SERVICE_PORTS

# Generous: a cold start on a loaded 2-core CI machine; the start-time goal lives in bench/startup.py.
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.1  # a probe every 100 ms: ready is noticed within that, at negligible cost
STOP_TIMEOUT_S = 30.0  # above the services' shutdown grace, so a hang fails instead of a clean stop


def horde(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unknown_service_is_a_clear_error() -> None:
    out = horde("run", "nope")
    assert out.returncode == 2
    assert "unknown service 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_error_is_one_line() -> None:
    out = horde("wait-for-database", "--timeout", "1", env={"BITTENSOR_NETUID": "twelve"})
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "BITTENSOR_NETUID" in lines[0]
    assert "Traceback" not in out.stderr


def test_wait_for_database(database_url: str) -> None:
    ok = horde("wait-for-database", "--timeout", "10", env={"DATABASE_URL": database_url})
    assert ok.returncode == 0, ok.stderr
    dead = f"postgresql://postgres@127.0.0.1:{_free_port()}/horde"
    bad = horde("wait-for-database", "--timeout", "1", env={"DATABASE_URL": dead})
    assert bad.returncode == 1
    assert "not reachable" in bad.stderr


def test_migrate_creates_the_database(make_database) -> None:  # type: ignore[no-untyped-def]
    url = make_database()
    missing = url.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1] + "_fresh"
    try:
        out = horde("migrate", env={"DATABASE_URL": missing})
        assert out.returncode == 0, out.stderr
        assert "created the database" in out.stdout
        again = horde("migrate", env={"DATABASE_URL": missing})
        assert again.returncode == 0 and "created" not in again.stdout
    finally:
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-qc",
                f'DROP DATABASE IF EXISTS "{missing.rsplit("/", 1)[1]}" WITH (FORCE)',
            ],
            check=False,
            capture_output=True,
        )


async def test_status_probe(database_url: str, amqp_url: str) -> None:
    settings = load_settings(DATABASE_URL=database_url, AMQP_URL=amqp_url)
    runner = ServiceRunner(ServiceSpec(name="probe-me", port=0), settings)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), 10)
        assert runner.port is not None
        status = await asyncio.to_thread(probe, "127.0.0.1", "probe-me", runner.port)
        assert status.ready, status.detail
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, 20)
    down = await asyncio.to_thread(probe, "127.0.0.1", "gone", _free_port())
    assert not down.ready
    assert "unreachable" in down.detail


def test_status_command_exit_code_when_nothing_runs() -> None:
    out = horde("status", "--host", "127.0.0.2")
    assert out.returncode == 1
    assert "0/5 ready" in out.stdout


def _private_loopback() -> str:
    """A loopback address of its own (all of 127/8 reaches `lo` on Linux).

    Services listen on fixed ports (8001-8005); a localnet or another test run may hold them on
    127.0.0.1, so this run's service binds the same port on an address nobody else uses.
    """
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> float:
    """Poll `/readyz` until 200; fail with the service's output if it exits or the deadline passes."""
    began = time.monotonic()
    deadline = began + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"`horde run` exited {proc.returncode} before ready:\n{log.read_text()}")
            try:
                resp = client.get(url)
                if resp.status_code == 200:
                    return time.monotonic() - began
                last = f"{resp.status_code} {resp.text}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            # The service is another process: polling its probe is the only signal it offers.
            time.sleep(READY_POLL_S)
    pytest.fail(f"not ready within {timeout:.0f} s (last /readyz: {last}):\n{log.read_text()}")


@pytest.mark.parametrize("name", ["scheduler", "job-runner"])
def test_horde_run_serves_until_sigterm(name: str, database_url: str, amqp_url: str, tmp_path: Path) -> None:
    """`horde run <service>` as an operator runs it: ready against the real servers, clean stop."""
    host = _private_loopback()
    url = f"http://{host}:{SERVICE_PORTS[name]}/readyz"
    log = tmp_path / "service.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AMQP_URL": amqp_url,
        "SERVICE_HOST": host,
        "HOTKEY_SEED": "//horde-validator-0",
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "horde_cli.main", "run", name], env=env, stdout=out, stderr=out
        )
    try:
        _wait_ready(proc, url, log, READY_TIMEOUT_S)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output, output
    with pytest.raises(httpx.TransportError):  # the port is released: nothing answers any more
        httpx.get(url, timeout=2.0)
