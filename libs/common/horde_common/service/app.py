"""The HTTP face every service shares: probes, metrics and token-protected debug views.

`/healthz` answers while the event loop runs (liveness: restart only a wedged process).
`/readyz` answers 200 only when the broker is connected, `SELECT 1` succeeds within 2 s and every
loop runs (readiness: route no work to a replica that cannot do it); a 503 names what is missing and
why (`failing`, `reasons`), so an operator need not dig through logs. `/debug/*` exposes internal
state, so every path under it needs `Authorization: Bearer $DEBUG_TOKEN`; with no token configured
it is closed. A debug view is either whole (`/debug/<name>`, `spec.debug_views`) or keyed by one
path segment (`/debug/<name>/<key>`, `spec.debug_item_views`: None is a 404, `DebugKeyError` a 400).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import text

from horde_common.service.context import DebugItemView, DebugView, ServiceContext, ServiceSpec
from horde_common.service.startup import describe_error, url_secrets
from horde_common.telemetry import get_logger, masked, render_metrics

log = get_logger(__name__)

DB_PROBE_TIMEOUT_S = 2.0
DEBUG_PREFIX = "/debug"


# `/debug/<name>/<key>`: the item named `key` (a batch id, say); None when there is no such item.
class DebugKeyError(ValueError):
    """Raised by an item view for a key it cannot parse: the answer is a 400, not a 404 or a 500."""


def item_views_of(spec: ServiceSpec) -> dict[str, DebugItemView]:
    """The spec's keyed debug views (`ServiceSpec.debug_item_views`)."""
    return dict(spec.debug_item_views)


async def database_error(ctx: ServiceContext, timeout_s: float = DB_PROBE_TIMEOUT_S) -> str | None:
    """None when `SELECT 1` through the pool succeeds within `timeout_s`, else why not (one line)."""
    if ctx.engine is None:
        return ctx.unavailable.get("database", "not connected yet")
    try:
        async with asyncio.timeout(timeout_s):
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return ctx.unavailable.get("database") or describe_error(exc, url_secrets(ctx.settings.database_url))
    return None


async def database_ok(ctx: ServiceContext, timeout_s: float = DB_PROBE_TIMEOUT_S) -> bool:
    """`SELECT 1` through the pool within `timeout_s`."""
    return await database_error(ctx, timeout_s) is None


async def readiness_report(ctx: ServiceContext) -> tuple[dict[str, bool], dict[str, str]]:
    """Each readiness check by name (ready when all are true), and a one-line reason per failing one."""
    checks: dict[str, bool] = {"started": ctx.started and not ctx.stopping}
    reasons: dict[str, str] = {}
    if ctx.spec.needs_broker:
        checks["broker"] = ctx.broker is not None and ctx.broker.is_connected
        if not checks["broker"]:
            reasons["broker"] = ctx.unavailable.get("broker") or (
                "waiting for the database first" if ctx.broker is None else "connection lost; reconnecting"
            )
    if ctx.spec.needs_db:
        db_error = await database_error(ctx)
        checks["database"] = db_error is None
        if db_error is not None:
            reasons["database"] = db_error
    checks["loops"] = ctx.loops_running
    if not checks["loops"]:
        stopped = sorted(name for name, state in ctx.loops.items() if not state.running)
        reasons["loops"] = f"not running: {', '.join(stopped)}" if stopped else "not started yet"
    if not checks["started"]:
        reasons["started"] = (
            "stopping"
            if ctx.stopping
            else "starting: waiting for "
            + (", ".join(name for name in ("database", "broker") if name in reasons) or "start-up hooks")
        )
    return checks, reasons


async def readiness(ctx: ServiceContext) -> dict[str, Any]:
    """Each readiness check by name; the service is ready when all are true."""
    checks, _reasons = await readiness_report(ctx)
    return dict(checks)


def bearer_ok(header: str | None, token: str | None) -> bool:
    """Constant-time check of `Authorization: Bearer <token>`; no configured token means closed."""
    if not token or not header:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


async def config_view(ctx: ServiceContext) -> dict[str, Any]:
    return ctx.settings.safe_dump()


async def bus_view(ctx: ServiceContext) -> dict[str, Any]:
    broker = ctx.broker
    router = ctx.spec.router
    out: dict[str, Any] = {
        "connected": broker is not None and broker.is_connected,
        "handled_queues": sorted(router.routes) if router is not None else [],
    }
    if broker is not None:
        state = getattr(broker, "debug_state", None)
        if callable(state):
            out.update(state())
        else:
            out["consumer_queues"] = [q.name for q, _tag in getattr(broker, "_consumers", [])]
            out["in_flight"] = len(getattr(broker, "_inflight", ()))
    return out


async def loops_view(ctx: ServiceContext) -> dict[str, Any]:
    return {
        "service": ctx.name,
        "started": ctx.started,
        "stopping": ctx.stopping,
        "created_at": ctx.created_at.isoformat(),
        "loops": {name: state.as_dict() for name, state in ctx.loops.items()},
    }


DEFAULT_DEBUG_VIEWS: dict[str, DebugView] = {"config": config_view, "bus": bus_view, "loops": loops_view}


def build_app(ctx: ServiceContext, spec: ServiceSpec) -> FastAPI:
    """The FastAPI app of a service (probes, metrics, debug views, plus `spec.http_routes`)."""
    app = FastAPI(title=f"horde {spec.name}", docs_url=None, redoc_url=None, openapi_url=None)
    views: dict[str, DebugView] = {**DEFAULT_DEBUG_VIEWS, **spec.debug_views}
    item_views = item_views_of(spec)
    token_secret = ctx.settings.DEBUG_TOKEN
    token = token_secret.get_secret_value() if token_secret is not None else None

    @app.middleware("http")
    async def guard_debug(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # A middleware, not a route dependency, so that every path under /debug (including unknown
        # ones and the bare prefix) is closed before routing can reveal anything.
        path = request.url.path
        if (path == DEBUG_PREFIX or path.startswith(DEBUG_PREFIX + "/")) and not bearer_ok(
            request.headers.get("authorization"), token
        ):
            return JSONResponse(
                {"detail": "missing or invalid bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks, reasons = await readiness_report(ctx)
        failing = [name for name, ok in checks.items() if not ok]
        if failing:
            body = {
                "status": "not ready",
                "ready": False,
                "failing": failing,
                "reasons": masked(reasons),
                "checks": checks,
            }
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "ready": True, "checks": checks})

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = render_metrics()
        return Response(content=body, media_type=content_type)

    @app.get(DEBUG_PREFIX)
    @app.get(DEBUG_PREFIX + "/")
    async def debug_index() -> dict[str, Any]:
        return {"service": spec.name, "views": sorted(views), "item_views": sorted(item_views)}

    @app.get(DEBUG_PREFIX + "/{view}")
    async def debug_view(view: str) -> JSONResponse:
        fn = views.get(view)
        if fn is None:
            return JSONResponse(
                {"detail": f"no debug view {view!r}", "views": sorted(views)}, status_code=404
            )
        try:
            data = await fn(ctx)
        except Exception as exc:
            log.exception("debug view failed", view=view)
            return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)
        return JSONResponse(jsonable_encoder(masked(data)))

    @app.get(DEBUG_PREFIX + "/{view}/{key}")
    async def debug_item_view(view: str, key: str) -> JSONResponse:
        fn = item_views.get(view)
        if fn is None:
            return JSONResponse(
                {"detail": f"no debug item view {view!r}", "item_views": sorted(item_views)}, status_code=404
            )
        try:
            data = await fn(ctx, key)
        except DebugKeyError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        except Exception as exc:
            log.exception("debug view failed", view=view, key=key)
            return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)
        if data is None:
            return JSONResponse({"detail": f"{view}/{key}: not found"}, status_code=404)
        return JSONResponse(jsonable_encoder(masked(data)))

    for router in spec.http_routes:
        app.include_router(router)
    return app
