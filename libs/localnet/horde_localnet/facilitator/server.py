"""The facilitator simulator's server: the validators' WebSocket at `/ws/v0/` (the deployed
facilitator's path, docs/organic.md §1.2) and a small HTTP JSON API, on one port.

One port because the localnet topology gives the facilitator one (`Topology.facilitator_port`);
HTTP is FastAPI on uvicorn as in the chain simulator, and the WebSocket is served by uvicorn's
`websockets` sans-I/O implementation. Every frame the simulator sends is a text frame.

HTTP: `POST /jobs` (a `JobSpec`; answers the uuid; a uuid submitted before is refused with 409),
`POST /jobs/{uuid}/resend` (send a sent job's request again), `GET /jobs`, `GET /jobs/{uuid}`,
`GET /jobs/{uuid}/statuses?after=N&timeout=S` (long poll for status updates after the N-th),
`GET /stats`, `GET /heartbeats`, `GET /machine-specs`, `GET /healthz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from horde_localnet.chain import _bind, _EmbeddedServer  # the chain simulator's serving helpers

from .jobs import JobSpec, Signer
from .sim import DuplicateJob, FacilitatorSim

__all__ = [
    "MAX_WAIT_S",
    "VALIDATOR_PATH",
    "RunningFacilitator",
    "build_app",
    "feed_jobs",
    "running_facilitator",
]

log = logging.getLogger(__name__)

VALIDATOR_PATH: Final = "/ws/v0/"
"""Where the deployed facilitator serves validators (docs/organic.md §1.2)."""

MAX_WAIT_S: Final = 300.0
"""Longest long-poll: the validator's own organic job timeout (docs/organic.md §3.8)."""


class _WsLink:
    """A validator connection as `FacilitatorSim.Link`: text frames, one sender at a time."""

    def __init__(self, ws: WebSocket, serial: int) -> None:
        self.ws = ws
        self.serial = serial
        self.hotkey: str | None = None
        self._lock = asyncio.Lock()

    async def send_text(self, text: str) -> bool:
        try:
            async with self._lock:
                await self.ws.send_text(text)
        except Exception:  # closed, reset, or already disconnected: the frame is not delivered
            return False
        return True


async def _serve_validator(sim: FacilitatorSim, ws: WebSocket) -> None:
    await ws.accept()
    link = _WsLink(ws, sim.next_serial())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            frame: str | bytes = text if text is not None else (message.get("bytes") or b"")
            was_authenticated = link.hotkey is not None
            action = sim.receive(link, frame)
            if action.reply is not None and await link.send_text(action.reply):
                sim.sent_frame(link)
            if action.close_code is not None:
                with contextlib.suppress(Exception):
                    await ws.close(action.close_code)
                break
            if not was_authenticated and link.hotkey is not None:
                await sim.dispatch()  # jobs held while no validator was connected
    except WebSocketDisconnect:
        pass
    finally:
        sim.link_closed(link)


def _not_found(job_uuid: str) -> JSONResponse:
    return JSONResponse({"code": "not_found", "message": f"no job {job_uuid}"}, status_code=404)


def build_app(sim: FacilitatorSim, *, on_startup: Any = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield

    app = FastAPI(title="horde localnet facilitator", lifespan=lifespan)

    @app.websocket(VALIDATOR_PATH)
    async def validator(ws: WebSocket) -> None:
        await _serve_validator(sim, ws)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "connected": len(sim.links)}

    @app.post("/jobs", response_model=None)
    async def submit(spec: JobSpec) -> dict[str, Any] | JSONResponse:
        try:
            record = sim.add_job(spec)
        except DuplicateJob as exc:
            return JSONResponse({"code": "already_exists", "message": str(exc)[:1000]}, status_code=409)
        except ValueError as exc:
            return JSONResponse({"code": "invalid_argument", "message": str(exc)[:1000]}, status_code=422)
        await sim.dispatch()
        return {"uuid": record.uuid, "state": record.state}

    @app.post("/jobs/{job_uuid}/resend", response_model=None)
    async def resend(job_uuid: str) -> dict[str, Any] | JSONResponse:
        try:
            record = sim.resend(job_uuid)
        except KeyError:
            return _not_found(job_uuid)
        except ValueError as exc:
            return JSONResponse({"code": "failed_precondition", "message": str(exc)[:1000]}, status_code=409)
        await sim.dispatch()
        return {"uuid": record.uuid, "state": record.state, "sends": record.sends}

    @app.get("/jobs")
    async def jobs() -> dict[str, Any]:
        return {"jobs": [record.summary() for record in sim.jobs.values()]}

    @app.get("/jobs/{job_uuid}", response_model=None)
    async def job(job_uuid: str) -> dict[str, Any] | JSONResponse:
        record = sim.job(job_uuid)
        return _not_found(job_uuid) if record is None else record.detail()

    @app.get("/jobs/{job_uuid}/statuses", response_model=None)
    async def statuses(
        job_uuid: str, after: int = Query(0, ge=0), wait_s: float = Query(30.0, ge=0, alias="timeout")
    ) -> dict[str, Any] | JSONResponse:
        def ready() -> bool:
            found = sim.statuses_after(job_uuid, after)
            return found is None or bool(found[0]) or found[1]

        await sim.wait_until(ready, min(wait_s, MAX_WAIT_S))
        found = sim.statuses_after(job_uuid, after)
        if found is None:
            return _not_found(job_uuid)
        new, final = found
        return {"statuses": new, "final": final, "next": after + len(new)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return sim.stats()

    @app.get("/heartbeats")
    async def heartbeats() -> dict[str, Any]:
        return {"heartbeats": list(sim.heartbeats)}

    @app.get("/machine-specs")
    async def machine_specs() -> dict[str, Any]:
        return {"machine_specs": list(sim.machine_specs)}

    return app


async def feed_jobs(sim: FacilitatorSim, specs: Iterable[JobSpec], rate: float | None) -> None:
    """Submit `specs` in order, `rate` a second (None: all at once). A spec that makes no valid
    request is logged and skipped, so one bad template line does not stop the feed."""
    interval = None if not rate else 1.0 / rate
    for spec in specs:
        try:
            record = sim.add_job(spec)
            await sim.dispatch()
            log.info("facilitator: job %s (%s) %s", record.uuid, record.version, record.state)
        except ValueError as exc:
            log.warning("facilitator: job not submitted: %s", exc)
        if interval is not None:
            await asyncio.sleep(interval)  # pacing real traffic, not synchronisation


@dataclass
class RunningFacilitator:
    sim: FacilitatorSim
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """What a validator sets as `FACILITATOR_URI`."""
        return f"ws://{self.host}:{self.port}{VALIDATOR_PATH}"


@asynccontextmanager
async def running_facilitator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    signer: Signer | None = None,
    allowed_validators: Iterable[str] | None = None,
    hold_when_disconnected: bool = True,
    jobs: Iterable[JobSpec] | None = None,
    rate: float | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[RunningFacilitator]:
    """Serve the simulator on this event loop (port 0 = ephemeral) until the block exits.

    `signer` signs V2 jobs (default: the localnet facilitator dev key). `jobs`, if given, are fed
    at `rate` a second from start-up (held until a validator authenticates)."""
    if signer is None:
        from horde_localnet.keys import facilitator_keypair

        signer = facilitator_keypair()
    allowed = None if allowed_validators is None else frozenset(allowed_validators)
    sim = FacilitatorSim(signer, allowed_validators=allowed, hold_when_disconnected=hold_when_disconnected)
    started = asyncio.Event()
    sock = _bind(host, port)
    config = uvicorn.Config(
        build_app(sim, on_startup=started.set),
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
        timeout_graceful_shutdown=1,
    )
    server = _EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="localnet-facilitator")
    waiting = asyncio.create_task(started.wait())
    feeding: asyncio.Task[None] | None = None
    try:
        done, _ = await asyncio.wait(
            {serving, waiting}, timeout=startup_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            if serving in done:
                serving.result()  # re-raise the startup failure
            raise TimeoutError(f"localnet facilitator did not start within {startup_timeout:g}s")
        if jobs is not None:
            feeding = asyncio.create_task(feed_jobs(sim, jobs, rate), name="localnet-facilitator-feed")
        yield RunningFacilitator(sim=sim, host=host, port=sock.getsockname()[1])
    finally:
        waiting.cancel()
        if feeding is not None:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await serving
        sock.close()
