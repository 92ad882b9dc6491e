"""Shared by the organic localnet tests: jobs the simulated miners can solve, the facilitator
simulator's JSON, dynamic config seeding, and killing / restarting one service of a localnet.

Built on `localnet_harness` (the `Localnet` wrapper, `poll`, `sql`). Every wait is a bounded poll
(`poll`), never a fixed sleep. The simulated miners crack hashcat jobs for real (their `solver`) and
only describe other jobs (docs/organic.md §9), so a job whose answer the test checks carries an
inline volume with a salted hash and a hashcat command line over it (`hashcat_job`); its answer
(the password) is known to the test.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harness beside this file

from localnet_harness import AMQP_BASE, PORTS, Localnet, listening, poll, sql

from horde_common.service_ports import SERVICE_PORTS, service_module
from horde_localnet.config import DEFAULT_TOPOLOGY
from horde_localnet.keys import miner_hotkey

FACILITATOR_HTTP = f"http://{DEFAULT_TOPOLOGY.host}:{DEFAULT_TOPOLOGY.facilitator_port}"
FINAL = frozenset({"completed", "failed", "rejected"})  # docs/organic.md §1.4
# A restarted service: imports, then the database and broker connect (seconds on a loaded box).
READY_TIMEOUT_S = 60.0
# A service gets this long after SIGTERM at teardown, as `horde localnet down` gives it.
STOP_GRACE_S = 15.0
# Two characters of `?l?d`: 260 candidates, a millisecond of brute force in the simulated executor.
MASK = "?l?d"


def hashcat_job(miner_index: int | None, *, version: str = "V1") -> tuple[dict[str, Any], str]:
    """A job spec for the simulator's `POST /jobs` that a simulated miner completes, and the stdout
    it must answer. V1 names miner `miner_index`; V2 (index None) leaves the choice to the validator."""
    password = secrets.choice("abcdefghijklmnopqrstuvwxyz") + secrets.choice("0123456789")
    salt = secrets.token_bytes(8)
    line = f"{hashlib.sha256(password.encode() + salt).hexdigest()}:{salt.hex()}\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", line)
    spec: dict[str, Any] = {
        "version": version,
        "uuid": str(uuid.uuid4()),
        "executor_class": "spin_up-4min.gpu-24gb",
        "docker_image": "backenddevelopersltd/compute-horde-job:v0-latest",
        "args": [
            "--hash-type",
            "1410",
            "--attack-mode",
            "3",
            "--outfile-format",
            "2",
            "/volume/payload.txt",
            MASK,
        ],
        "volume": {"volume_type": "inline", "contents": base64.b64encode(buf.getvalue()).decode()},
    }
    if miner_index is not None:
        spec["miner_hotkey"] = str(miner_hotkey(miner_index))
    return spec, password + "\n"


def submit(spec: dict[str, Any]) -> str:
    """Post one job to the simulator; its uuid."""
    answer = httpx.post(f"{FACILITATOR_HTTP}/jobs", json=spec, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["uuid"])


def sim_jobs() -> dict[str, dict[str, Any]]:
    """The simulator's summary of every job (`state`, `statuses` in arrival order), by uuid."""
    body = httpx.get(f"{FACILITATOR_HTTP}/jobs", timeout=10).json()
    return {j["uuid"]: j for j in body["jobs"]}


def sim_job(job_uuid: str) -> dict[str, Any]:
    """The simulator's full record of one job (`status_updates` with their metadata)."""
    answer = httpx.get(f"{FACILITATOR_HTTP}/jobs/{job_uuid}", timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def finals(statuses: list[str]) -> list[str]:
    return [s for s in statuses if s in FINAL]


def seed_dynamic_config(db_url: str, values: dict[str, Any]) -> None:
    """Migrate the database and store DYNAMIC_* `values` (one item each) before any service starts,
    so every reader's first load sees them (readers cache for minutes)."""
    from horde_common.db.migrate import upgrade

    upgrade(db_url)
    for key, value in values.items():
        sql(
            db_url,
            "INSERT INTO dynamic_config (key, items, description, source) VALUES ($1, $2::jsonb, '', 'test')"
            " ON CONFLICT (key) DO UPDATE SET items = EXCLUDED.items RETURNING key",
            key,
            json.dumps([{"value": value}]),
        )


def rabbitmqctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)


def queue_depths(vhost: str) -> dict[str, int]:
    """Messages ready plus unacknowledged per queue of `vhost`."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged")
    assert out.returncode == 0, out.stderr
    depths = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            depths[parts[0]] = int(parts[1]) + int(parts[2])
    return depths


@dataclass
class OrganicNet:
    """A running localnet (`net`) and its vhost; `kill` / `restart` one service of it."""

    net: Localnet
    vhost: str
    restarted: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def db(self) -> str:
        return self.net.env["DATABASE_URL"]

    @property
    def state_file(self) -> Path:
        return self.net.cwd / ".horde" / "localnet.json"

    def pids(self) -> dict[str, int]:
        data: dict[str, int] = json.loads(self.state_file.read_text())
        return data

    def kill(self, name: str) -> None:
        """SIGKILL service `name` (its whole process group: a pool's workers die with it) and wait
        until its port is free."""
        pid = self.pids()[name]
        os.killpg(pid, signal.SIGKILL)
        old = self.restarted.pop(name, None)
        if old is not None:
            old.wait(timeout=10)
        poll(lambda: not listening(SERVICE_PORTS[name]), within=10, what=f"{name}'s port freed")

    def restart(self, name: str) -> None:
        """Start service `name` again as `horde localnet up` does (same settings, same log), record
        its pid for `horde localnet down`, and wait until it is ready."""
        from horde_cli.localnet import localnet_env

        env = {**self.net.env, **localnet_env(DEFAULT_TOPOLOGY)}
        log = open(self.net.cwd / ".horde" / "logs" / f"{name}.log", "ab")  # the child writes to it
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", service_module(name)],
                env=env,
                cwd=self.net.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.restarted[name] = proc
        self.state_file.write_text(json.dumps({**self.pids(), name: proc.pid}))
        url = f"http://127.0.0.1:{SERVICE_PORTS[name]}/readyz"

        def ready() -> bool:
            assert proc.poll() is None, f"{name} exited with {proc.returncode} after the restart"
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, within=READY_TIMEOUT_S, what=f"{name} ready after the restart")

    def stop_restarted(self) -> None:
        """Stop (and reap) what `restart` started; `horde localnet down` then finds them gone."""
        for proc in self.restarted.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.restarted.values():
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.restarted.clear()

    def settled(self, uuids: list[str]) -> bool:
        """Nothing more can happen to these jobs: no row PENDING, no outbox row unpublished, no
        message ready or unacknowledged on the organic queues."""
        pending = sql(
            self.db,
            "SELECT count(*) AS n FROM organic_jobs WHERE job_uuid = ANY($1::uuid[]) AND status = 'PENDING'",
            uuids,
        )[0]["n"]
        unpublished = sql(self.db, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")[0]["n"]
        if pending or unpublished:
            return False
        depths = queue_depths(self.vhost)
        return not any(n for name, n in depths.items() if "organic" in name)


@contextlib.contextmanager
def make_organic_net(
    make_database: Callable[[], str], cwd: Path, dynamic: dict[str, Any]
) -> Iterator[OrganicNet]:
    """A fresh database (seeded with `dynamic`), vhost and directory for a localnet (`.net.up()`).
    At the end everything is stopped whatever happened, the vhost deleted and the ports checked."""
    ports = [*PORTS, DEFAULT_TOPOLOGY.facilitator_port]
    busy = [p for p in ports if listening(p)]
    if busy:
        pytest.fail(f"localnet ports already in use (a localnet running?): {busy}")
    vhost = f"horde_organic_{uuid.uuid4().hex[:8]}"
    assert rabbitmqctl("add_vhost", vhost).returncode == 0
    assert rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*").returncode == 0
    db = make_database()
    seed_dynamic_config(db, dynamic)
    env = {**os.environ, "DATABASE_URL": db, "AMQP_URL": f"{AMQP_BASE}/{vhost}", "COLUMNS": "200"}
    onet = OrganicNet(Localnet(env, cwd), vhost)
    try:
        yield onet
    finally:
        onet.stop_restarted()
        down = onet.net.down()
        rabbitmqctl("delete_vhost", vhost)
        assert down.returncode == 0, down.stdout + down.stderr
        deadline = time.monotonic() + 10  # sockets of killed children may linger an instant
        while (left := [p for p in ports if listening(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)  # the pause between two checks of a bounded poll
        assert not left, f"ports still in use after down: {left}"
