"""Service lifecycle: start (with retries), run, and stop gracefully on SIGTERM/SIGINT.

Order matters and is the same for every service:
check  — settings and keys (`startup.preflight`) before any I/O: a bad one is one line and exit 2.
start  — HTTP first (liveness answers while dependencies are still coming up), then the database
         and the broker with capped backoff (one line per attempt), then the spec's `dependencies`
         (per-instance objects), `on_start`, consumers + outbox relay, loops: ready.
stop   — readiness false, stop consuming and let in-flight handlers finish (unfinished ones are
         cancelled and their unacked messages requeued), stop loops, `on_stop`, close the
         `dependencies`, the broker and the database, and the HTTP server last so probes keep
         answering during the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn, TypeVar

import uvicorn
import uvloop
from sqlalchemy import text

from horde_common.bus.broker import Broker
from horde_common.config import ConfigError, Settings, load_settings
from horde_common.db import create_engine, session_factory
from horde_common.service.app import build_app
from horde_common.service.context import (
    LoopFn,
    LoopState,
    ServiceContext,
    ServiceSpec,
    open_dependencies,
)
from horde_common.service.startup import (
    Backoff,
    describe_error,
    preflight,
    quiet_connect_logs,
    retry_line,
    url_secrets,
)
from horde_common.telemetry import (
    configure_logging,
    configure_metrics,
    configure_tracing,
    get_logger,
    get_meter,
    shutdown_telemetry,
)

if TYPE_CHECKING:
    from bittensor_core import Keypair

log = get_logger(__name__)
T = TypeVar("T")

# One connect attempt to a dependency that does not answer (a black-holed host) gives up after this.
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

    def __init__(
        self,
        spec: ServiceSpec,
        settings: Settings,
        *,
        hotkey: Keypair | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.ctx = ServiceContext(spec=spec, settings=settings, hotkey=hotkey)
        self.backoff = backoff if backoff is not None else Backoff()
        self.http_ready = asyncio.Event()
        self.ready = asyncio.Event()
        self.port: int | None = None
        self._loop_tasks: list[asyncio.Task[None]] = []
        self._server: _Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._signals = 0
        # Holds the opened `spec.dependencies` from start to stop.
        self._dependencies = contextlib.AsyncExitStack()

    # --- public -----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.ctx.request_stop()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        if install_signal_handlers:
            self._install_signal_handlers()
        if self.ctx.hotkey is None:
            # Before the port is bound: a bad key raises ConfigError with nothing opened yet.
            self.ctx.hotkey = preflight(self.spec, self.settings)
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

            await self._retry("database", self.settings.database_url, ping)
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

            ctx.broker = await self._retry("broker", self.settings.amqp_url, connect)
        await self._dependencies.enter_async_context(open_dependencies(ctx))
        if spec.on_start is not None:
            await spec.on_start(ctx)
        if ctx.broker is not None:
            # Consumers + outbox relay; the handlers see this instance's dependencies.
            router = spec.router.bind(ctx.dependencies) if spec.router is not None else None
            await ctx.broker.start(router)
        self._start_loops()

    async def _retry(self, what: str, target: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Call `attempt` until it succeeds; abort when shutdown is requested.

        One log line per failed attempt, naming the (masked) target, the error and the next delay;
        the libraries' own connect errors are muted meanwhile. /readyz shows the same reason.
        """
        secrets = url_secrets(target)
        delays = self.backoff.delays()
        tries, since = 0, time.monotonic()
        self.ctx.unavailable[what] = "not connected yet"
        while True:
            if self.ctx.stop_event.is_set():
                raise _Stopped
            tries += 1
            try:
                with quiet_connect_logs():
                    result = await asyncio.wait_for(attempt(), ATTEMPT_TIMEOUT_S)
            except Exception as exc:
                delay = round(next(delays), 3)  # one value for the line, the field and the wait
                error = describe_error(exc, secrets)
                self.ctx.unavailable[what] = f"{error} (attempt {tries}, next in {delay:.1f} s)"
                log.warning(
                    retry_line(what, target, error, delay),
                    attempt=tries,
                    retry_in_s=delay,
                )
            else:
                self.ctx.unavailable.pop(what, None)
                log.info(f"{what} connected", attempts=tries, waited_s=round(time.monotonic() - since, 1))
                return result
            if await self.ctx.wait_stop(delay):
                raise _Stopped

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
        try:
            await asyncio.wait_for(self._dependencies.aclose(), grace)
        except Exception:
            log.exception("closing the service dependencies failed")
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


def run_service(spec: ServiceSpec, *, backoff: Backoff | None = None) -> None:
    """Run `spec` until SIGTERM/SIGINT (blocking; the body of every service's `__main__`).

    Settings and keys are checked first: a configuration error prints one line to stderr and exits 2
    before any logging is set up, any port is bound or any connection is opened.
    """
    try:
        settings = load_settings()
        hotkey = preflight(spec, settings)
    except ConfigError as exc:
        _config_error_exit(exc)
    configure_logging(spec.name, settings.LOG_LEVEL)
    configure_tracing(spec.name, settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    configure_metrics(spec.name)
    log.info("service starting", config=settings.safe_dump())
    try:
        # uvloop: ~10% more bus throughput and cheaper socket I/O for the miner sessions (bench/bus.py).
        uvloop.run(
            ServiceRunner(spec, settings, hotkey=hotkey, backoff=backoff).run(install_signal_handlers=True)
        )
    except ConfigError as exc:  # a check that needs the running service (none today); still one line
        _config_error_exit(exc)
    except OSError as exc:  # typically the port is taken
        log.error("service failed to start", error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    except Exception:
        log.exception("service crashed")
        raise SystemExit(1) from None
    finally:
        shutdown_telemetry()


def _config_error_exit(exc: ConfigError) -> NoReturn:
    print(f"config error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
