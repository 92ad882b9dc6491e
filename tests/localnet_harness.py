"""Shared by the localnet batch tests: run `horde localnet up/down`, poll the database, read miners.

A localnet uses fixed ports, so these tests run one after the other. Every wait is a bounded poll of
the database (or of a miner's HTTP receipts), never a fixed sleep: `poll` re-checks a condition until
it holds or its deadline passes, pausing `POLL_S` between checks.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import yaml

from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_common.service_ports import SERVICE_PORTS
from horde_localnet.config import DEFAULT_METAGRAPH_PATH, DEFAULT_TOPOLOGY
from horde_localnet.keys import miner_hotkey

T = TypeVar("T")

# Between two checks of a poll: a database round trip is milliseconds, a batch phase seconds.
POLL_S = 0.5
# `horde localnet up --detach` waits up to 90 s for readiness itself; a cold import cache adds more.
UP_TIMEOUT_S = 150.0
# Services 15 s each after SIGTERM, then the simulators: well inside a minute.
DOWN_TIMEOUT_S = 90.0
AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")  # as conftest.py
PORTS = [
    *SERVICE_PORTS.values(),
    DEFAULT_TOPOLOGY.chain_port,
    *(DEFAULT_TOPOLOGY.miner_port(i) for i in range(DEFAULT_TOPOLOGY.miner_count)),
]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def poll(check: Callable[[], T | None], *, within: float, what: str) -> T:
    """`check()` until it returns something other than None (or False), at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f} s: {what}")
        time.sleep(POLL_S)  # the pause between two checks of a bounded poll


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


def write_metagraph(path: Path, behaviours: dict[int, str]) -> Path:
    """The packaged localnet metagraph with `miners.behaviours` set (index -> behaviour)."""
    spec = yaml.safe_load(DEFAULT_METAGRAPH_PATH.read_text())
    spec["miners"]["behaviours"] = behaviours
    path.write_text(yaml.safe_dump(spec))
    return path


def sql(db_url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one read (asyncpg, bounded at 10 s) as dicts."""

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(query, *args, timeout=10)]
        finally:
            await conn.close()

    return asyncio.run(run())


def completed_batches(db_url: str) -> list[dict[str, Any]] | None:
    """The completed batches that tested miners, oldest first (a batch dispatched before the first
    metagraph snapshot has no shard and completes at once, docs/scheduling.md §8.1)."""
    rows = sql(
        db_url,
        "SELECT b.id FROM synthetic_job_batches b WHERE b.completed_at IS NOT NULL"
        " AND EXISTS (SELECT 1 FROM batch_shards s WHERE s.batch_id = b.id) ORDER BY b.id",
    )
    return rows or None


def job_statuses(db_url: str, batch_id: int, *, with_llm: bool = False) -> dict[str, dict[str, list[str]]]:
    """Per miner hotkey, per executor class: the sorted statuses of its jobs in the batch.

    LLM jobs are left out unless `with_llm`: whether a batch has them depends on when the localnet's
    cross-validation pool first holds enough samples (a race with the batch), not on what the batch
    tests check; `tests/test_localnet_crossval.py` checks them."""
    out: dict[str, dict[str, list[str]]] = {}
    for row in sql(
        db_url,
        "SELECT miner_hotkey, executor_class, status FROM synthetic_jobs WHERE batch_id = $1"
        " AND ($2 OR executor_class <> $3)",
        batch_id,
        with_llm,
        str(LLM_EXECUTOR_CLASS),
    ):
        out.setdefault(row["miner_hotkey"], {}).setdefault(row["executor_class"], []).append(row["status"])
    for classes in out.values():
        for statuses in classes.values():
            statuses.sort()
    return out


def started_receipts(index: int) -> list[dict[str, str]]:
    """The JobStarted receipts miner `index` holds: one per initial job request it received."""
    url = f"http://127.0.0.1:{DEFAULT_TOPOLOGY.miner_port(index)}/receipts/receipts.csv"
    body = httpx.get(url, timeout=10).text
    return [r for r in csv.DictReader(io.StringIO(body)) if r["type"] == "JobStartedReceipt"]


def hotkey_of(index: int) -> str:
    return str(miner_hotkey(index))


class Localnet:
    """`horde localnet up --detach` in `cwd` with `env`; `down()` (idempotent) stops it."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.up_output = ""

    def up(self, *args: str) -> None:
        proc = horde(["localnet", "up", "--detach", *args], self.env, self.cwd, timeout=UP_TIMEOUT_S)
        self.up_output = proc.stdout + proc.stderr
        assert proc.returncode == 0, self.up_output

    def down(self) -> subprocess.CompletedProcess[str]:
        return horde(["localnet", "down"], self.env, self.cwd, timeout=DOWN_TIMEOUT_S)


@pytest.fixture(name="localnets")
def localnets_fixture(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Callable[[], Localnet]]:
    """Factory: a `Localnet` with its own database, vhost and directory (one up at a time: the
    ports are fixed). Every one is stopped at the end whatever happened, and its vhost deleted."""
    busy = [p for p in PORTS if listening(p)]
    if busy:
        pytest.fail(f"localnet ports already in use (a localnet running?): {busy}")
    made: list[tuple[Localnet, str]] = []

    def make() -> Localnet:
        vhost = f"horde_localnet_{uuid.uuid4().hex[:8]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        cwd = tmp_path / f"localnet-{len(made)}"
        cwd.mkdir()
        env = {
            **os.environ,
            "DATABASE_URL": make_database(),
            "AMQP_URL": f"{AMQP_BASE}/{vhost}",
            "COLUMNS": "200",
        }
        made.append((Localnet(env, cwd), vhost))
        return made[-1][0]

    try:
        yield make
    finally:
        failures = []
        for net, vhost in made:
            down = net.down()
            if down.returncode != 0:
                failures.append(down.stdout + down.stderr)
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)
        assert not failures, failures
        assert not [p for p in PORTS if listening(p)]


@pytest.fixture(name="localnet")
def localnet_fixture(localnets: Callable[[], Localnet]) -> Localnet:
    """One localnet (see `localnets`)."""
    return localnets()
