"""The `horde` command, run as operators run it (a subprocess) against the real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys

import pytest

from horde_cli.status import probe
from horde_common.config import load_settings
from horde_common.service import ServiceRunner, ServiceSpec


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


@pytest.mark.parametrize("name", ["scheduler", "weights"])
def test_python_m_and_horde_run_start_the_same_service(name: str) -> None:
    """`horde run` resolves the same module `python -m` runs (import check, not a full start)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import horde_common.service_ports as p, importlib; "
            f"m = importlib.import_module(p.service_module({name!r}) + '.__main__'); print(m.__name__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert dataclasses.is_dataclass(ServiceSpec)
