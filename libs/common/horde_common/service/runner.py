"""Service lifecycle: start (with retries), run, and stop gracefully on SIGTERM/SIGINT.

Order matters and is the same for every service:
start  — HTTP first (liveness answers while dependencies are still coming up), then the database
         and the broker with retry/backoff, then `on_start`, consumers + outbox relay, loops: ready.
stop   — readiness false, stop consuming and let in-flight handlers finish (unfinished ones are
         cancelled and their unacked messages requeued), stop loops, `on_stop`, close the broker and
         the database, and the HTTP server last so probes keep answering during the drain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

import uvicorn
import uvloop
from sqlalchemy import text

from horde_common.bus.broker import Broker
from horde_common.config import ConfigError, Settings, load_settings
from horde_common.db import create_engine, session_factory
from horde_common.service.app import build_app
from horde_common.service.context import LoopFn, LoopState, ServiceContext, ServiceSpec
from horde_common.telemetry import (
    configure_logging,
    configure_metrics,
    configure_tracing,
    get_logger,
    get_meter,
    shutdown_telemetry,
)

log = get_logger(__name__)
T = TypeVar("T")

# Backoff while a dependency is unreachable: short first retries, capped so that a dependency that
# comes back is noticed within ~2 s (the service must be ready within 10 s of both being reachable).
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 2.0
ATTEMPT_TIMEOUT_S = 5.0
LOOP_BACKOFF_MAX_S = 30.0
HTTP_DRAIN_S = 3

_loop_restarts = get_meter("horde_common.service").create_counter(
    "horde_loop_restarts",
    unit="1",
    description="Restarts of supervised service loops after a crash or early exit",
)


class _Stopped(Exception):
    """Shutdown was requested while still starting."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the runner decides when HTTP stops (last)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock.setblocking(False)
    return sock


class ServiceRunner:
    """Runs one service inside the current event loop; `run_service` wraps it for `__main__`.

    Tests drive it directly: start `run()` in a task, await `http_ready`/`ready`, read `port`,
    then `request_stop()` and await the task.
    """

    def __init__(self, spec: ServiceSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.ctx = ServiceContext(spec=spec, settings=settings)
        self.http_ready = asyncio.Event()
        self.ready = asyncio.Event()
        self.port: int | None = None
        self._loop_tasks: list[asyncio.Task[None]] = []
        self._server: _Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._signals = 0

    # --- public -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.ctx.request_stop()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        if install_signal_handlers:
            self._install_signal_handlers()
        try:
            await self._start_http()
            try:
                await self._start()
            except _Stopped:
                log.info("stop requested during startup")
            else:
                self.ctx.started = True
                self.ready.set()
                log.info("service ready", port=self.port, loops=list(self.ctx.loops))
                await self.ctx.stop_event.wait()
        finally:
            await self._shutdown()

    # --- start ------------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        sock = _bind(self.settings.SERVICE_HOST, self.spec.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            build_app(self.ctx, self.spec),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=HTTP_DRAIN_S,
        )
        self._server = _Server(config)
        self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        self.http_ready.set()
        log.info("http listening", host=self.settings.SERVICE_HOST, port=self.port)

    async def _start(self) -> None:
        ctx, spec = self.ctx, self.spec
        if spec.needs_db:
            ctx.engine = create_engine(self.settings.database_url)
            ctx.session_factory = session_factory(ctx.engine)
            engine = ctx.engine

            async def ping() -> None:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))

            await self._retry("database", ping)
        if spec.needs_broker:
            sessions = ctx.session_factory

            async def connect() -> Broker:
                # A fresh Broker per attempt: a half-open one from a failed attempt must not linger.
                broker = Broker(self.settings.amqp_url, service=spec.name, session_factory=sessions)
                try:
                    await broker.connect()  # declares the exchanges and every durable queue
                except BaseException:
                    await broker.stop(grace_s=0)
                    raise
                return broker

            ctx.broker = await self._retry("broker", connect)
        if spec.on_start is not None:
            await spec.on_start(ctx)
        if ctx.broker is not None:
            await ctx.broker.start(spec.router)  # consumers + outbox relay
        self._start_loops()

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Call `attempt` until it succeeds, backing off; abort when shutdown is requested."""
        delay, tries, since = RETRY_FIRST_S, 0, time.monotonic()
        while True:
            if self.ctx.stop_event.is_set():
                raise _Stopped
            tries += 1
            try:
                result = await asyncio.wait_for(attempt(), ATTEMPT_TIMEOUT_S)
            except Exception as exc:
                log.warning(
                    f"{what} not reachable yet",
                    attempt=tries,
                    waited_s=round(time.monotonic() - since, 1),
                    retry_in_s=delay,
                    error=f"{type(exc).__name__}: {exc}"[:500],
                )
            else:
                log.info(f"{what} connected", attempts=tries)
                return result
            if await self.ctx.wait_stop(delay):
                raise _Stopped
            delay = min(delay * 2, RETRY_MAX_S)

    def _start_loops(self) -> None:
        for i, fn in enumerate(self.spec.loops):
            name = getattr(fn, "__name__", None) or f"loop{i}"
            if name in self.ctx.loops:
                name = f"{name}#{i}"
            state = self.ctx.loops.setdefault(name, LoopState(name=name))
            state.running = True
            self._loop_tasks.append(asyncio.create_task(self._supervise(name, fn), name=f"loop:{name}"))

    async def _supervise(self, name: str, fn: LoopFn) -> None:
        """Run a loop until stop; restart it with backoff when it crashes or returns early."""
        ctx, state = self.ctx, self.ctx.loops[name]
        backoff = 1.0
        while not ctx.stop_event.is_set():
            state.running, state.started_at = True, datetime.now(UTC)
            began = time.monotonic()
            try:
                await fn(ctx)
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"[:1000]
                log.exception("loop crashed", loop=name, restart_in_s=backoff)
            else:
                if ctx.stop_event.is_set():
                    break
                log.warning("loop returned before shutdown", loop=name, restart_in_s=backoff)
            state.running = False
            state.restarts += 1
            _loop_restarts.add(1, {"service": ctx.name, "loop": name})
            if time.monotonic() - began > 60:
                backoff = 1.0
            if await ctx.wait_stop(backoff):
                break
            backoff = min(backoff * 2, LOOP_BACKOFF_MAX_S)
        state.running = False

    # --- stop -------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        ctx, grace = self.ctx, self.spec.shutdown_grace_s
        ctx.stopping = True
        ctx.stop_event.set()
        self.ready.clear()
        log.info("service stopping", grace_s=grace)
        await asyncio.gather(self._stop_broker(grace), self._stop_loops(grace))
        if ctx.started and self.spec.on_stop is not None:
            try:
                await asyncio.wait_for(self.spec.on_stop(ctx), grace)
            except Exception:
                log.exception("on_stop hook failed")
        if ctx.engine is not None:
            await ctx.engine.dispose()
        await self._stop_http()
        log.info("service stopped")

    async def _stop_broker(self, grace: float) -> None:
        if self.ctx.broker is None:
            return
        try:
            await self.ctx.broker.stop(grace_s=grace)
        except Exception:
            log.exception("broker stop failed")

    async def _stop_loops(self, grace: float) -> None:
        if not self._loop_tasks:
            return
        _done, pending = await asyncio.wait(self._loop_tasks, timeout=grace)
        for task in pending:
            log.warning("loop did not stop within grace; cancelling", loop=task.get_name())
            task.cancel()
        await asyncio.gather(*self._loop_tasks, return_exceptions=True)

    async def _stop_http(self) -> None:
        if self._server is None or self._server_task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._server_task, HTTP_DRAIN_S + 2)
        except Exception:
            self._server_task.cancel()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting immediately", signal=sig.name)
            os._exit(1)
        log.info("signal received: stopping", signal=sig.name)
        self.request_stop()


def run_service(spec: ServiceSpec) -> None:
    """Run `spec` until SIGTERM/SIGINT (blocking; the body of every service's `__main__`).

    A configuration error prints one line to stderr and exits 2, before any logging is set up.
    """
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"config error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    configure_logging(spec.name, settings.LOG_LEVEL)
    configure_tracing(spec.name, settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    configure_metrics(spec.name)
    log.info("service starting", config=settings.safe_dump())
    try:
        # uvloop: ~10% more bus throughput and cheaper socket I/O for the miner sessions (bench/bus.py).
        uvloop.run(ServiceRunner(spec, settings).run(install_signal_handlers=True))
    except ConfigError as exc:  # found at start-up, e.g. the wallet named by the settings is missing
        print(f"config error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except OSError as exc:  # typically the port is taken
        log.error("service failed to start", error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    except Exception:
        log.exception("service crashed")
        raise SystemExit(1) from None
    finally:
        shutdown_telemetry()
