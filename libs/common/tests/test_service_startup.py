"""Start-up as an operator sees it: configuration checked before any I/O, dependencies retried quietly.

The subprocess tests run the real job-runner (`python -m horde_job_runner`, `horde run job-runner`)
and a minimal service through `run_service`, against real sockets: stand-in TCP servers that record
every connection for the "no I/O before the config is known good" rule, the real Postgres, and a
closed port for an unreachable broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from horde_common.config import ConfigError, Settings, load_settings
from horde_common.service import ServiceRunner, ServiceSpec
from horde_common.service.startup import Backoff, preflight

# Service start under a loaded CI machine (cold imports of the job-runner take seconds of CPU).
PROCESS_TIMEOUT_S = 120.0
SECRET = "s3cret-pw"


def _env(**values: str) -> dict[str, str]:
    """The test process's environment without any horde setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(values, PYTHONUNBUFFERED="1")
    return env


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP server on a free port that records (and closes) every connection it gets."""
    seen: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> socket.socket:
    """A bound socket that never listens: connecting to its port is refused for as long as it lives."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# --- configuration errors: one line, exit 2, nothing opened --------------------------------------


def _horde_command() -> list[str]:
    horde = Path(sys.executable).with_name("horde")
    assert horde.is_file(), f"the `horde` console script is installed next to {sys.executable}"
    return [str(horde), "run", "job-runner"]


@pytest.mark.parametrize(
    ("command", "bad"),
    [
        pytest.param(
            [sys.executable, "-m", "horde_job_runner"], {"HOTKEY_SEED": "not a seed"}, id="module-bad-seed"
        ),
        pytest.param(_horde_command(), {"HOTKEY_SEED": "0x1234"}, id="horde-run-bad-seed"),
        pytest.param([sys.executable, "-m", "horde_job_runner"], {"wallet": "empty"}, id="module-no-wallet"),
        pytest.param(_horde_command(), {"wallet": "empty"}, id="horde-run-no-wallet"),
    ],
)
async def test_bad_key_is_one_line_and_exit_2_before_any_io(
    command: list[str], bad: dict[str, str], tmp_path: Path
) -> None:
    env_bad = dict(bad)
    if env_bad.pop("wallet", None) is not None:
        wallets = tmp_path / "wallets"
        wallets.mkdir()
        env_bad["BITTENSOR_WALLET_DIRECTORY"] = str(wallets)  # exists, holds no wallet; no HOTKEY_SEED
    async with recording_server() as (db_port, db_seen), recording_server() as (mq_port, mq_seen):
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=tmp_path,  # no .env here
            env=_env(
                DATABASE_URL=f"postgresql://horde:{SECRET}@127.0.0.1:{db_port}/horde",
                AMQP_URL=f"amqp://horde:{SECRET}@127.0.0.1:{mq_port}/",
                SERVICE_HOST="127.0.0.1",
                **env_bad,
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT_S)
    err = stderr.decode()
    assert proc.returncode == 2, err
    assert stdout == b"", "no JSON log line: logging is not even set up"
    assert err.count("\n") == 1 and err.startswith("config error: "), err
    expected = "HOTKEY_SEED" if "HOTKEY_SEED" in bad else "BITTENSOR_WALLET_DIRECTORY"
    assert expected in err
    assert SECRET not in err and "not a seed" not in err
    assert db_seen == [] and mq_seen == [], "no connection to the database or the broker"


async def test_runner_checks_the_key_before_binding_its_port(tmp_path: Path) -> None:
    async with recording_server() as (db_port, db_seen), recording_server() as (mq_port, mq_seen):
        settings = load_settings(
            DATABASE_URL=f"postgresql://horde@127.0.0.1:{db_port}/horde",
            AMQP_URL=f"amqp://horde@127.0.0.1:{mq_port}/",
            BITTENSOR_WALLET_DIRECTORY=str(tmp_path),
            HOTKEY_SEED=None,
        )
        runner = ServiceRunner(ServiceSpec(name="signer", port=0, needs_hotkey=True), settings)
        with pytest.raises(ConfigError, match="BITTENSOR_WALLET_DIRECTORY"):
            await asyncio.wait_for(runner.run(), PROCESS_TIMEOUT_S)
    assert runner.port is None and not runner.http_ready.is_set()
    assert db_seen == [] and mq_seen == []


def test_preflight_checks_a_set_seed_everywhere_and_the_wallet_only_where_needed(tmp_path: Path) -> None:
    no_wallet = {"BITTENSOR_WALLET_DIRECTORY": str(tmp_path), "HOTKEY_SEED": None}
    assert preflight(ServiceSpec(name="reader", port=0), load_settings(**no_wallet)) is None
    with pytest.raises(ConfigError, match="BITTENSOR_WALLET_DIRECTORY"):
        preflight(ServiceSpec(name="signer", port=0, needs_hotkey=True), load_settings(**no_wallet))
    with pytest.raises(ConfigError, match="HOTKEY_SEED"):
        preflight(ServiceSpec(name="reader", port=0), load_settings(HOTKEY_SEED="not a seed"))
    key = preflight(
        ServiceSpec(name="signer", port=0, needs_hotkey=True), load_settings(HOTKEY_SEED="//Alice")
    )
    assert key is not None and key.ss58_address.startswith("5")


def test_blank_seed_means_the_wallet() -> None:
    assert load_settings(HOTKEY_SEED="").HOTKEY_SEED is None
    assert load_settings(HOTKEY_SEED="  ").HOTKEY_SEED is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", f"postgresql://u:{SECRET}@h:notaport/db"), ("AMQP_URL", f"amqp://u:{SECRET}@h:99999/")],
)
def test_url_with_a_bad_port_is_a_config_error_without_the_password(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{name: value})
    assert name in str(info.value) and SECRET not in str(info.value)


# --- unreachable broker: capped backoff, one line per attempt, /readyz says why -------------------


def test_backoff_is_exponential_jittered_and_capped() -> None:
    backoff = Backoff(first_s=1.0, max_s=8.0, factor=2.0, jitter=0.5)

    def take(rand: float, n: int) -> list[float]:
        gen = backoff.delays(lambda: rand)
        return [next(gen) for _ in range(n)]

    assert take(0.0, 6) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert take(1.0, 6) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_default_backoff_writes_few_lines_while_the_broker_stays_down() -> None:
    """The issue saw 50 lines in 45 s; count attempts in 45 s with the shortest jittered delays."""
    gen, elapsed, attempts = Backoff().delays(lambda: 1.0), 0.0, 0
    while elapsed < 45.0:
        attempts += 1
        elapsed += next(gen)
    assert attempts <= 20
    assert max(next(gen) for _ in range(20)) <= 6.0, "capped: a returning broker is noticed within 6 s"


BACKOFF_SERVICE = """
from horde_common.service import ServiceSpec, run_service
from horde_common.service.startup import Backoff

run_service(ServiceSpec(name="backoff-test", port=0), backoff=Backoff(first_s=0.05, max_s=0.4))
"""
FIRST_S, MAX_S, ATTEMPTS = 0.05, 0.4, 6


class _Lines:
    """Every output line of a process, parsed as JSON where possible, with a condition to wait on."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.items: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            try:
                item = json.loads(raw)
            except ValueError:
                item = {"raw": raw.decode(errors="replace")}
            async with self.changed:
                self.items.append(item)
                self.changed.notify_all()
        async with self.changed:
            self.items.append({"eof": True})
            self.changed.notify_all()

    async def wait_for(self, pred: Any) -> None:
        """Until `pred(lines)` holds, the output ends, or PROCESS_TIMEOUT_S passes."""
        async with asyncio.timeout(PROCESS_TIMEOUT_S), self.changed:
            await self.changed.wait_for(lambda: pred(self.items) or any("eof" in i for i in self.items))
        assert pred(self.items), f"process output ended early: {self.items[-5:]}"


def _retries(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if str(i.get("event", "")).startswith("broker unreachable")]


async def test_unreachable_broker_backs_off_with_one_line_per_attempt(
    database_url: str, tmp_path: Path
) -> None:
    closed = _closed_port()
    broker_port = closed.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BACKOFF_SERVICE,
        cwd=tmp_path,
        env=_env(
            DATABASE_URL=database_url,
            AMQP_URL=f"amqp://guest:{SECRET}@127.0.0.1:{broker_port}/",
            SERVICE_HOST="127.0.0.1",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines = _Lines(proc.stdout)
    try:
        await lines.wait_for(lambda items: any(i.get("event") == "http listening" for i in items))
        port = next(i["port"] for i in lines.items if i.get("event") == "http listening")

        # /readyz: 503, naming the broker and why, polled after each new attempt line (no fixed sleeps).
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for seen in range(1, ATTEMPTS + 1):
                await lines.wait_for(lambda items, n=seen: len(_retries(items)) >= n)  # type: ignore[misc]
                resp = await client.get("/readyz")
                body = resp.json()
                if "refused" in body.get("reasons", {}).get("broker", "").lower():
                    break
            assert resp.status_code == 503, resp.text
            assert body["ready"] is False and "broker" in body["failing"]
            assert body["checks"]["database"] is True and "database" not in body["reasons"]
            assert SECRET not in resp.text

        await lines.wait_for(lambda items: len(_retries(items)) >= ATTEMPTS)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), PROCESS_TIMEOUT_S)
        await asyncio.wait_for(lines.task, PROCESS_TIMEOUT_S)
        closed.close()
    assert rc == 0

    items = lines.items
    retries = _retries(items)[:ATTEMPTS]
    first, last = items.index(retries[0]), items.index(retries[-1])
    between = [i for i in items[first : last + 1] if not str(i.get("logger", "")).startswith("uvicorn")]
    assert between == retries, "exactly one line per attempt: no library noise in between"
    assert [r["attempt"] for r in retries] == list(range(1, ATTEMPTS + 1))

    delays = [float(r["retry_in_s"]) for r in retries]
    nominal = [min(FIRST_S * 2**k, MAX_S) for k in range(ATTEMPTS)]
    for delay, top in zip(delays, nominal, strict=True):
        assert top / 2 - 1e-3 <= delay <= top + 1e-3, (delays, nominal)
    assert delays[:4] == sorted(delays[:4]) and delays[3] > delays[0], delays

    stamps = [datetime.fromisoformat(r["timestamp"]) for r in retries]
    for k in range(ATTEMPTS - 1):
        waited = (stamps[k + 1] - stamps[k]).total_seconds()
        assert waited >= delays[k] - 5e-3, f"attempt {k + 2} came {waited:.3f} s after a {delays[k]} s delay"

    prefix = f"broker unreachable (amqp://guest:**********@127.0.0.1:{broker_port}/): "
    for r in retries:
        assert r["event"].startswith(prefix), r["event"]
        assert r["event"].endswith(f"; retrying in {r['retry_in_s']:.1f} s"), r["event"]
        assert "refused" in r["event"].lower()
    assert all(SECRET not in json.dumps(i) for i in items)
