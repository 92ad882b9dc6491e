"""The service runner against the real RabbitMQ and Postgres: probes, debug auth, lifecycle, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from horde_common.bus.messages import BatchCompleted
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.config import Settings, load_settings
from horde_common.service import Dependency, ServiceContext, ServiceRunner, ServiceSpec
from horde_common.service.app import bearer_ok
from horde_common.telemetry import configure_metrics, record_event

TOKEN = "test-debug-token"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 20.0


def _settings(database_url: str, amqp_url: str, **extra: object) -> Settings:
    return load_settings(
        DATABASE_URL=database_url, AMQP_URL=amqp_url, DEBUG_TOKEN=TOKEN, SERVICE_HOST="127.0.0.1", **extra
    )


async def idle_loop(ctx: ServiceContext) -> None:
    ctx.state["loop_started"] = True
    await ctx.stop_event.wait()


async def echo_view(ctx: ServiceContext) -> dict[str, object]:
    return {"service": ctx.name, "loop_started": ctx.state.get("loop_started", False)}


@asynccontextmanager
async def running(spec: ServiceSpec, settings: Settings) -> AsyncIterator[ServiceRunner]:
    runner = ServiceRunner(spec, settings)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.http_ready.wait(), START_TIMEOUT_S)
        yield runner
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, STOP_TIMEOUT_S)


def _client(runner: ServiceRunner, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.port}", headers=headers, timeout=5.0)


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, from a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


async def test_ready_service_serves_probes_metrics_and_guarded_debug(
    database_url: str, amqp_url: str
) -> None:
    configure_metrics("probe-test")  # as run_service does before the runner starts
    recorded = asyncio.Event()

    async def record_one_event(ctx: ServiceContext) -> None:
        """A service loop doing what real ones do: record a system event (and so count it)."""
        assert ctx.session_factory is not None
        async with ctx.session_factory.begin() as session:
            await record_event(session, "VALIDATOR_TELEMETRY", "CHECKPOINT", "probe", service=ctx.name)
        recorded.set()
        await ctx.stop_event.wait()

    spec = ServiceSpec(
        name="probe-test", port=0, loops=[idle_loop, record_one_event], debug_views={"echo": echo_view}
    )
    async with running(spec, _settings(database_url, amqp_url)) as runner:
        await asyncio.wait_for(runner.ready.wait(), START_TIMEOUT_S)
        await asyncio.wait_for(recorded.wait(), START_TIMEOUT_S)
        async with (
            _client(runner) as anon,
            _client(runner, "wrong-token") as wrong,
            _client(runner, TOKEN) as ok,
        ):
            assert (await anon.get("/healthz")).json() == {"status": "ok"}

            ready = await anon.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "started": True,
                "broker": True,
                "database": True,
                "loops": True,
            }

            metrics = await anon.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            # A horde counter by name and value (the default collectors alone print `# HELP` too).
            labels = {"service": "probe-test", "type": "VALIDATOR_TELEMETRY", "subtype": "CHECKPOINT"}
            assert _sample(metrics.text, "horde_system_events_total", **labels) == 1.0, metrics.text

            for path in ("/debug", "/debug/", "/debug/config", "/debug/echo", "/debug/nope", "/debug/a/b"):
                assert (await anon.get(path)).status_code == 401, path
                assert (await wrong.get(path)).status_code == 401, path

            index = await ok.get("/debug/")
            assert index.status_code == 200
            assert {"config", "bus", "loops", "echo"} <= set(index.json()["views"])

            config = (await ok.get("/debug/config")).json()
            assert config["DEBUG_TOKEN"] == "**********"
            assert "guest:guest@" not in config["AMQP_URL"]

            bus = (await ok.get("/debug/bus")).json()
            assert bus["connected"] is True and bus["in_flight"] == 0

            assert (await ok.get("/debug/echo")).json() == {"service": "probe-test", "loop_started": True}
            assert (await ok.get("/debug/loops")).json()["loops"]["idle_loop"]["running"] is True
            assert (await ok.get("/debug/nope")).status_code == 404


async def test_readyz_is_503_while_the_database_is_unreachable(
    make_database: object, database_url: str, amqp_url: str
) -> None:
    missing = database_url.rsplit("/", 1)[0] + "/horde_test_does_not_exist"
    spec = ServiceSpec(name="no-db-test", port=0, loops=[idle_loop])
    async with running(spec, _settings(missing, amqp_url)) as runner:
        async with _client(runner) as anon:
            assert (await anon.get("/healthz")).status_code == 200
            resp = await anon.get("/readyz")
            assert resp.status_code == 503
            body = resp.json()
            assert "database" in body["failing"]
            assert body["checks"]["database"] is False
        assert not runner.ready.is_set()


async def test_becomes_ready_within_10s_of_the_database_appearing(database_url: str, amqp_url: str) -> None:
    name = f"horde_test_late_{uuid.uuid4().hex[:8]}"
    admin = database_url.replace("postgresql+asyncpg://", "postgresql://", 1).rsplit("/", 1)[0] + "/postgres"
    spec = ServiceSpec(name="late-db-test", port=0, loops=[idle_loop])
    try:
        async with running(spec, _settings(database_url.rsplit("/", 1)[0] + "/" + name, amqp_url)) as runner:
            async with _client(runner) as anon:
                assert (await anon.get("/readyz")).status_code == 503
                conn = await asyncpg.connect(admin)
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()
                await asyncio.wait_for(runner.ready.wait(), 10)
                assert (await anon.get("/readyz")).status_code == 200
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class SeenBatches:
    """A per-instance object of the test service (a `ServiceSpec` dependency)."""

    queue: asyncio.Queue[BatchCompleted] = field(default_factory=asyncio.Queue)


async def test_router_handlers_consume_from_the_bus(database_url: str, amqp_url: str) -> None:
    router = BusRouter()
    lifecycle: list[str] = []

    @asynccontextmanager
    async def open_seen(ctx: ServiceContext) -> AsyncIterator[SeenBatches]:
        assert ctx.broker is not None and ctx.session_factory is not None  # opened once connected
        lifecycle.append("open")
        yield SeenBatches()
        lifecycle.append("close")

    async def on_start(ctx: ServiceContext) -> None:
        assert isinstance(ctx.dependency(SeenBatches), SeenBatches)
        lifecycle.append("on_start")

    async def on_stop(ctx: ServiceContext) -> None:
        lifecycle.append("on_stop")

    @router.handler("weights.batch.completed", publishes=())
    async def on_batch_completed(msg: BatchCompleted, ctx: HandlerContext) -> None:
        assert ctx.session is not None  # runs inside the handler's DB transaction
        await ctx.dependency(SeenBatches).queue.put(msg)

    spec = ServiceSpec(
        name="weights",
        port=0,
        router=router,
        dependencies=[Dependency(SeenBatches, open_seen)],
        on_start=on_start,
        on_stop=on_stop,
    )
    async with running(spec, _settings(database_url, amqp_url)) as runner:
        await asyncio.wait_for(runner.ready.wait(), START_TIMEOUT_S)
        assert runner.ctx.broker is not None
        seen = runner.ctx.dependency(SeenBatches).queue
        sent = BatchCompleted(batch_id=42, cycle_start=0, cycle_stop=722)
        await runner.ctx.broker.publish(sent)
        while True:  # the queue may still hold messages of other tests of this session
            got = await asyncio.wait_for(seen.get(), START_TIMEOUT_S)
            if got.message_id == sent.message_id:
                break
        assert got.batch_id == 42
    assert lifecycle == ["open", "on_start", "on_stop", "close"]
    assert len(runner.ctx.dependencies) == 0


async def test_a_crashing_loop_is_restarted(database_url: str, amqp_url: str) -> None:
    calls: list[int] = []
    second_run = asyncio.Event()

    async def flaky_loop(ctx: ServiceContext) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        second_run.set()
        await ctx.stop_event.wait()

    spec = ServiceSpec(name="flaky-test", port=0, loops=[flaky_loop], needs_broker=False)
    async with running(spec, _settings(database_url, amqp_url)) as runner:
        await asyncio.wait_for(second_run.wait(), START_TIMEOUT_S)
        state = runner.ctx.loops["flaky_loop"]
        assert state.restarts == 1 and state.running
        assert state.last_error == "RuntimeError: boom"


def test_bearer_check() -> None:
    assert bearer_ok("Bearer abc", "abc")
    assert bearer_ok("bearer abc", "abc")
    assert not bearer_ok("Bearer abd", "abc")
    assert not bearer_ok("Basic abc", "abc")
    assert not bearer_ok(None, "abc")
    assert not bearer_ok("Bearer ", "")
    assert not bearer_ok("Bearer abc", None)


# --- subprocess: what an operator sees -------------------------------------------------------------

SERVICE_SCRIPT = """
import asyncio
from horde_common.service import ServiceSpec, run_service
from horde_common.telemetry import get_logger

async def worker(ctx):
    await ctx.stop_event.wait()
    get_logger("worker").info("worker saw stop")

run_service(ServiceSpec(name="sigterm-test", port=0, loops=[worker]))
"""


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.update(values)
    return env


async def test_config_error_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVICE_SCRIPT,
        cwd=tmp_path,
        env=_env(BITTENSOR_NETUID="abc"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    err = stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("config error: ") and "BITTENSOR_NETUID" in err
    assert "Traceback" not in err
    assert stdout == b""


async def test_sigterm_stops_gracefully_with_exit_code_0(
    tmp_path: Path, database_url: str, amqp_url: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVICE_SCRIPT,
        cwd=tmp_path,
        env=_env(DATABASE_URL=database_url, AMQP_URL=amqp_url, SERVICE_HOST="127.0.0.1", DEBUG_TOKEN=TOKEN),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[dict[str, object]] = []

    async def read_until(event: str) -> dict[str, object]:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"process ended before {event!r}: {lines}")
            try:
                line = json.loads(raw)
            except ValueError:
                lines.append({"raw": raw.decode()})
                continue
            lines.append(line)
            if line.get("event") == event:
                return line

    try:
        ready = await asyncio.wait_for(read_until("service ready"), 60)
        assert ready["service"] == "sigterm-test"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ready['port']}") as client:
            assert (await client.get("/readyz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stdout.read(), STOP_TIMEOUT_S)).decode().splitlines()
        rc = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = [json.loads(line).get("event") for line in rest if line.startswith("{")]
    assert rc == 0, rest
    assert "worker saw stop" in events and events[-1] == "service stopped", events
    assert not any("Traceback" in line for line in rest)


async def test_readyz_names_the_missing_database_and_why(database_url: str, amqp_url: str) -> None:
    missing = database_url.rsplit("/", 1)[0] + "/horde_test_does_not_exist"
    spec = ServiceSpec(name="no-db-reason-test", port=0, loops=[idle_loop])
    async with running(spec, _settings(missing, amqp_url)) as runner, _client(runner) as anon:
        resp = await anon.get("/readyz")
        assert resp.status_code == 503
        body = resp.json()
        assert body["ready"] is False
        assert "does not exist" in body["reasons"]["database"], body
        assert body["reasons"]["broker"] == "waiting for the database first"
        assert body["reasons"]["started"] == "starting: waiting for database, broker"
