"""The localnet chain simulator: blocks, a metagraph from a file, and recorded weights.

Blocks are a function of time (`start_block + elapsed // block_interval`), hashes a function of
the number, so every reader agrees without any block-production task. Weights submissions are
checked the way subtensor checks them (sr25519 signature of the hotkey, registration, permit,
version key, uids, min allowed weights, max weight, rate limit) and recorded; under commit-reveal
they are recorded as commits revealed `reveal_period_epochs * tempo` blocks later. The legacy
salted path is there too: `commit_weights` stores a hash, `reveal_weights` re-hashes the
cleartext and sets the weights if it matches, within the interval after the commit's
(`docs/weights.md` §8). The HTTP wire format is
`horde_common.chain.local_models`; `horde_common.chain.LocalChainClient` is the client.

Run it: `python -m horde_localnet.chain --port 9944 --metagraph FILE --block-interval 0.2`,
`serve_chain(...)` (blocking) or `await run_chain(...)` / `async with running_chain(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from horde_common.chain import Hyperparameters, Metagraph, SetWeightsResult
from horde_common.chain.local_models import (
    BlockInfo,
    CommitWeightsRequest,
    ErrorBody,
    NeuronsUpdate,
    PendingCommits,
    RevealWeightsRequest,
    SetWeightsRequest,
    WeightsHistory,
)
from horde_common.chain.models import CommitResult, RevealResult
from horde_localnet.chain_sim import MAX_NONCES as MAX_NONCES  # re-exported: public import path
from horde_localnet.chain_sim import MAX_RECORDS as MAX_RECORDS
from horde_localnet.chain_sim import ChainSim as ChainSim
from horde_localnet.chain_sim import Refused as Refused
from horde_localnet.chain_spec import LocalnetSpec, SpecError, load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH

log = logging.getLogger(__name__)

MAX_WAIT_S = 300.0


# --- HTTP ---


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(code=code, message=message).model_dump(), status_code=status)


def _same_subnet(path_netuid: int, body_netuid: int) -> None:
    if body_netuid != path_netuid:
        raise Refused(422, "invalid_argument", f"body is for subnet {body_netuid}, path for {path_netuid}")


def build_app(sim: ChainSim, *, on_startup: Callable[[], None] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield

    app = FastAPI(title="horde localnet chain", lifespan=lifespan)
    app.state.sim = sim

    @app.exception_handler(Refused)
    async def refused(_req: Request, exc: Refused) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '?'}: {e.get('msg', '')}" for e in exc.errors()
        )
        return _error(422, "invalid_argument", f"invalid request: {problems}"[:1000])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "error", str(exc.detail))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "block": sim.current_block()}

    @app.get("/block")
    async def head() -> BlockInfo:
        return sim.block_info()

    @app.get("/block/wait")
    async def wait_for_block(number: int, max_wait: float = Query(30.0, alias="timeout")) -> BlockInfo:
        deadline = time.monotonic() + min(max(max_wait, 0.0), MAX_WAIT_S)
        while sim.current_block() < number:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Refused(
                    408,
                    "timeout",
                    f"block {number} not reached in {max_wait:g}s (head is {sim.current_block()})",
                )
            await asyncio.sleep(min(remaining, max(sim.seconds_until(number), 0.0) + 0.001))
        return sim.block_info()

    @app.get("/blocks/{number}")
    async def block(number: int) -> BlockInfo:
        return sim.block_info(number)

    @app.get("/subnets/{netuid}/metagraph")
    async def metagraph(netuid: int, block: int | None = None) -> Metagraph:
        return sim.metagraph(netuid, block)

    @app.get("/subnets/{netuid}/hyperparameters")
    async def hyperparameters(netuid: int) -> Hyperparameters:
        return sim.get_hyperparameters(netuid)

    @app.post("/subnets/{netuid}/weights")
    async def set_weights(netuid: int, req: SetWeightsRequest) -> SetWeightsResult:
        _same_subnet(netuid, req.netuid)
        return sim.set_weights(req)

    @app.get("/subnets/{netuid}/weights")
    async def weights(netuid: int, hotkey: str | None = None, limit: int = 100) -> WeightsHistory:
        return WeightsHistory(records=sim.weights(netuid, hotkey, limit))

    @app.post("/subnets/{netuid}/commits")
    async def commit_weights(netuid: int, req: CommitWeightsRequest) -> CommitResult:
        _same_subnet(netuid, req.netuid)
        return sim.commit_weights(req)

    @app.get("/subnets/{netuid}/commits")
    async def pending_commits(netuid: int, hotkey: str | None = None) -> PendingCommits:
        return PendingCommits(commits=sim.pending_commits(netuid, hotkey))

    @app.post("/subnets/{netuid}/reveals")
    async def reveal_weights(netuid: int, req: RevealWeightsRequest) -> RevealResult:
        _same_subnet(netuid, req.netuid)
        return sim.reveal_weights(req)

    @app.put("/admin/subnets/{netuid}/neurons")
    async def replace_neurons(netuid: int, body: NeuronsUpdate) -> Metagraph:
        return sim.replace_neurons(netuid, body.neurons)

    return app


@dataclass
class RunningChain:
    sim: ChainSim
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process (stopped by cancelling)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


def _spec(metagraph: str | Path | LocalnetSpec | None) -> LocalnetSpec:
    if isinstance(metagraph, LocalnetSpec):
        return metagraph
    return load_spec(metagraph or DEFAULT_METAGRAPH_PATH)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SpecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def running_chain(
    metagraph: str | Path | LocalnetSpec | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    block_interval: float | None = None,
    startup_timeout: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[RunningChain]:
    """Serve the simulator on this event loop (port 0 = ephemeral) until the block exits.

    `clock` drives the head block (tests pass a clock they move by hand, so block numbers are
    exact and nothing waits on real time)."""
    sim = ChainSim(_spec(metagraph), block_interval=block_interval, clock=clock)
    started = asyncio.Event()
    app = build_app(sim, on_startup=started.set)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1
    )
    server = _EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="localnet-chain")
    waiting = asyncio.create_task(started.wait())
    try:
        done, _ = await asyncio.wait(
            {serving, waiting}, timeout=startup_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in done:
            if serving in done:
                serving.result()  # re-raise the startup failure
            raise TimeoutError(f"localnet chain did not start within {startup_timeout:g}s")
        yield RunningChain(sim=sim, host=host, port=bound_port)
    finally:
        waiting.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await serving
        sock.close()


async def run_chain(
    host: str = "127.0.0.1",
    port: int = 9944,
    metagraph_path: str | Path | None = None,
    block_interval: float | None = None,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve the simulator until cancelled; `ready` is set once it answers requests."""
    async with running_chain(metagraph_path, host=host, port=port, block_interval=block_interval) as rc:
        log.info("localnet chain on %s, head block %s", rc.url, rc.sim.current_block())
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()


def serve_chain(
    host: str = "127.0.0.1",
    port: int = 9944,
    metagraph_path: str | Path | None = None,
    block_interval: float | None = None,
) -> None:
    """Serve the simulator in the foreground until SIGINT/SIGTERM (blocking)."""
    sim = ChainSim(_spec(metagraph_path), block_interval=block_interval)
    sock = _bind(host, port)
    bound = RunningChain(sim=sim, host=host, port=sock.getsockname()[1])
    config = uvicorn.Config(
        build_app(sim), log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )
    # The socket already listens: a client may connect as soon as this line is out.
    log.info("localnet chain on %s, subnet %s, head block %s", bound.url, sim.netuid, sim.current_block())
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m horde_localnet.chain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9944)
    parser.add_argument("--metagraph", type=Path, default=DEFAULT_METAGRAPH_PATH, help="metagraph YAML file")
    parser.add_argument(
        "--block-interval", type=float, default=None, help="seconds per block (default: file's)"
    )
    args = parser.parse_args(argv)
    if args.block_interval is not None and not (
        args.block_interval > 0 and math.isfinite(args.block_interval)
    ):
        parser.error("--block-interval must be a positive number")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: end quietly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve_chain(args.host, args.port, args.metagraph, args.block_interval)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
