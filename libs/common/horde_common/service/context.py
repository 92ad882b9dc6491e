"""What a service is (`ServiceSpec`) and what its code gets at run time (`ServiceContext`).

A service's `app.py` only declares: its bus handlers (a `BusRouter`), its periodic loops, its debug
views, its per-instance objects (`Dependency`) and hooks. The runner owns everything around them —
connections, retries, readiness, signals, HTTP — so the five services start, report and stop
identically.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from horde_common.bus.router import Dependencies
from horde_common.config import Settings

if TYPE_CHECKING:
    from bittensor_core import Keypair

    from horde_common.bus.broker import Broker
    from horde_common.bus.messages import BusMessage
    from horde_common.bus.router import BusRouter

LoopFn = Callable[["ServiceContext"], Awaitable[None]]
DebugView = Callable[["ServiceContext"], Awaitable[dict[str, Any]]]
# A view with one path parameter, served at /debug/<name>/<key>; None is a 404.
DebugItemView = Callable[["ServiceContext", str], Awaitable[dict[str, Any] | None]]
Hook = Callable[["ServiceContext"], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class Dependency(Generic[T]):
    """A typed object each service instance builds at start and tears down at stop.

    `open(ctx)` is an async context manager (typically an `@asynccontextmanager` function): the code
    before its `yield` runs once the database and broker are reachable (so it may use `ctx.sessions`,
    `ctx.broker`, `ctx.hotkey`), the code after it runs at stop, after consumers and loops stopped.
    Handlers get the object as `ctx.dependency(T)`, loops and debug views as `ctx.dependency(T)` on
    the `ServiceContext`: never through a module global, so instances in one process stay apart.
    """

    type: type[T]
    open: Callable[[ServiceContext], AbstractAsyncContextManager[T]]


@dataclass
class ServiceSpec:
    """The declaration of one service; `run_service(spec)` does the rest.

    `loops` run concurrently until `ctx.stop_event` is set (use `await ctx.wait_stop(seconds)` as
    the loop's sleep); a loop that crashes is restarted with backoff and makes /readyz fail meanwhile.
    `on_start` runs after DB and broker are reachable and before consumers/loops start; `on_stop`
    after they stopped and before connections close. `dependencies` are opened before `on_start` and
    closed after `on_stop`, in reverse order. `needs_hotkey`: the service signs, so a missing or
    unreadable wallet is a configuration error found before any I/O (the key is then `ctx.hotkey`).
    `publishes_outside_handlers`: the messages the service publishes other than as a handler's return
    (a loop, a direct `Broker.publish`), each with where it happens — the bus table in
    `docs/architecture.md` is generated from it and the handlers' `publishes=`.
    """

    name: str
    port: int
    router: BusRouter | None = None
    loops: list[LoopFn] = field(default_factory=list)
    debug_views: dict[str, DebugView] = field(default_factory=dict)
    debug_item_views: dict[str, DebugItemView] = field(default_factory=dict)
    dependencies: list[Dependency[Any]] = field(default_factory=list)
    publishes_outside_handlers: Mapping[type[BusMessage], str] = field(default_factory=dict)
    on_start: Hook | None = None
    on_stop: Hook | None = None
    needs_db: bool = True
    needs_broker: bool = True
    needs_hotkey: bool = False
    http_routes: list[APIRouter] = field(default_factory=list)
    # How long in-flight handlers and loops get to finish after SIGTERM before being cancelled.
    shutdown_grace_s: float = 10.0


@dataclass
class LoopState:
    """Readiness and history of one supervised loop (shown in /readyz and /debug/loops)."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    started_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }


@dataclass
class ServiceContext:
    """Everything a handler-independent piece of service code needs at run time."""

    spec: ServiceSpec
    settings: Settings
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    engine: AsyncEngine | None = None
    session_factory: async_sessionmaker[AsyncSession] | None = None
    broker: Broker | None = None
    # The validator's hotkey, loaded before any I/O when the spec needs it or HOTKEY_SEED is set.
    hotkey: Keypair | None = None
    # Why a dependency is not there yet (name -> one line: last error, attempt, next retry), for /readyz.
    unavailable: dict[str, str] = field(default_factory=dict)
    # Free-form state a service shares between its loops, handlers and debug views.
    state: dict[str, Any] = field(default_factory=dict)
    # The spec's `dependencies`, opened (typed access: `dependency(T)`); empty before start and after stop.
    dependencies: Dependencies = field(default_factory=Dependencies)
    loops: dict[str, LoopState] = field(default_factory=dict)
    started: bool = False  # connections made, consumers and loops started
    stopping: bool = False  # shutdown began: readiness is false from here on
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory; only valid once the database is connected."""
        if self.session_factory is None:
            raise RuntimeError(f"service {self.name!r} has no database session factory (yet)")
        return self.session_factory

    def dependency(self, kind: type[T]) -> T:
        """This instance's `kind` object, opened from `spec.dependencies` (`LookupError` if none)."""
        return self.dependencies.get(kind)

    @property
    def loops_running(self) -> bool:
        return all(state.running for state in self.loops.values())

    async def wait_stop(self, seconds: float | None = None) -> bool:
        """Sleep up to `seconds`, waking early on shutdown; True when the service is stopping.

        The idiom for periodic loops: `while not await ctx.wait_stop(interval): do_work()`.
        """
        if self.stop_event.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        return self.stop_event.is_set()

    def request_stop(self) -> None:
        self.stop_event.set()


@contextlib.asynccontextmanager
async def open_dependencies(ctx: ServiceContext) -> AsyncIterator[Dependencies]:
    """Open `ctx.spec.dependencies` into `ctx.dependencies`; close them (in reverse) on exit.

    The runner's start/stop use it; a test builds two instances of a service with it, no servers.
    """
    try:
        async with contextlib.AsyncExitStack() as stack:
            for dep in ctx.spec.dependencies:
                ctx.dependencies.add(dep.type, await stack.enter_async_context(dep.open(ctx)))
            yield ctx.dependencies
    finally:
        ctx.dependencies.clear()
