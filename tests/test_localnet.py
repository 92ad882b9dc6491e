"""Acceptance: `horde localnet up` leaves all five services ready; down/Ctrl-C stops everything.

Runs the real command in a subprocess (its own working directory for `.horde/` state) against the
test database and vhost. Uses the localnet's fixed ports, so these tests run one after the other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from horde_common.service_ports import SERVICE_PORTS
from horde_localnet.config import DEFAULT_TOPOLOGY

ALL_PORTS = [
    *SERVICE_PORTS.values(),
    DEFAULT_TOPOLOGY.chain_port,
    DEFAULT_TOPOLOGY.miner_base_port,
    DEFAULT_TOPOLOGY.facilitator_port,
]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture()
def localnet_env(make_database, amqp_url: str, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    busy = [p for p in ALL_PORTS if _listening(p)]
    if busy:
        pytest.fail(f"localnet ports already in use (a localnet running?): {busy}")
    return {**os.environ, "DATABASE_URL": make_database(), "AMQP_URL": amqp_url, "COLUMNS": "200"}


def horde(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_up_detach_status_down(localnet_env: dict[str, str], tmp_path: Path) -> None:
    up = horde(["localnet", "up", "--detach"], localnet_env, tmp_path, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "localnet is up" in up.stdout
        status = horde(["status"], localnet_env, tmp_path, timeout=30)
        assert status.returncode == 0, status.stdout
        assert "5/5 ready" in status.stdout
        pids = json.loads((tmp_path / ".horde" / "localnet.json").read_text())
        assert set(pids) == {*SERVICE_PORTS, "s3", "chain", "miners", "facilitator"}
    finally:
        down = horde(["localnet", "down"], localnet_env, tmp_path, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "killed" not in down.stdout, "every child stops on SIGTERM within the grace period"
    assert not [p for p in ALL_PORTS if _listening(p)]
    assert not (tmp_path / ".horde" / "localnet.json").exists()


def test_foreground_stops_cleanly_on_sigint(localnet_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "horde_cli.main", "localnet", "up"],
        env=localnet_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # blocks until the command prints; pytest-timeout bounds it
            seen.append(line)
            if "press Ctrl-C to stop" in line:
                break
        else:
            pytest.fail("localnet up exited early:\n" + "".join(seen))
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "killed" not in rest
    assert not [p for p in ALL_PORTS if _listening(p)]
