"""The localnet chain simulator: blocks, a metagraph from a file, and recorded weights.

Blocks are a function of time (`start_block + elapsed // block_interval`), hashes a function of
the number, so every reader agrees without any block-production task. Weights submissions are
checked the way subtensor checks them (sr25519 signature of the hotkey, registration, permit,
version key, uids, rate limit) and recorded; under commit-reveal they are recorded as commits
revealed `reveal_period_epochs * tempo` blocks later. The HTTP wire format is
`horde_common.chain.local_models`; `horde_common.chain.LocalChainClient` is the client.

Run it: `python -m horde_localnet.chain --port 9944 --metagraph FILE --block-interval 0.2`,
`serve_chain(...)` (blocking) or `await run_chain(...)` / `async with running_chain(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import bittensor_core as sp_core
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from horde_common.chain import U16_MAX, Hyperparameters, Metagraph, Neuron, SetWeightsResult
from horde_common.chain.local_models import (
    BlockInfo,
    ErrorBody,
    NeuronsUpdate,
    SetWeightsRequest,
    WeightsHistory,
    WeightsRecord,
)
from horde_localnet.chain_spec import LocalnetSpec, SpecError, load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH

log = logging.getLogger(__name__)

MAX_RECORDS = 10_000
MAX_NONCES = 100_000
MAX_WAIT_S = 300.0


class Refused(Exception):
    """The simulated chain refuses a request: becomes an `ErrorBody` answer with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ChainSim:
    """The simulated chain state. No I/O: the HTTP app and tests drive it directly."""

    def __init__(
        self,
        spec: LocalnetSpec,
        *,
        block_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.netuid = spec.netuid
        self.block_interval = float(block_interval or spec.chain.block_interval)
        if not self.block_interval > 0:
            raise SpecError(f"block interval must be > 0, got {self.block_interval}")
        self.start_block = spec.chain.start_block
        self.genesis = spec.chain.genesis
        self.hyperparameters: Hyperparameters = spec.hyperparameters()
        self._neurons: list[Neuron] = spec.build_neurons()
        self._clock = clock
        self._t0 = clock()
        self._records: deque[WeightsRecord] = deque(maxlen=MAX_RECORDS)
        self._nonces: set[str] = set()
        self._nonce_order: deque[str] = deque()

    # --- blocks ---

    def current_block(self) -> int:
        elapsed = max(0.0, self._clock() - self._t0)
        return self.start_block + int(elapsed / self.block_interval)

    def seconds_until(self, number: int) -> float:
        """Time until the head reaches `number` (<= 0 if it already has)."""
        return self._t0 + (number - self.start_block) * self.block_interval - self._clock()

    def block_hash(self, number: int) -> str:
        if number < 0:
            raise Refused(404, "not_found", f"no block {number}")
        head = self.current_block()
        if number > head:
            raise Refused(404, "not_found", f"block {number} is in the future (head is {head})")
        digest = hashlib.blake2b(f"{self.genesis}:{number}".encode(), digest_size=32).hexdigest()
        return "0x" + digest

    def block_info(self, number: int | None = None) -> BlockInfo:
        n = self.current_block() if number is None else number
        return BlockInfo(number=n, hash=self.block_hash(n))

    # --- subnet ---

    def _check_netuid(self, netuid: int) -> None:
        if netuid != self.netuid:
            raise Refused(404, "subnet_not_exists", f"subnet {netuid} does not exist")

    def metagraph(self, netuid: int, block: int | None = None) -> Metagraph:
        self._check_netuid(netuid)
        head = self.current_block()
        if block is None:
            block = head
        elif block < 0 or block > head:
            raise Refused(404, "not_found", f"block {block} is not on the chain (head is {head})")
        return Metagraph(netuid=netuid, block=block, neurons=list(self._neurons))

    def get_hyperparameters(self, netuid: int) -> Hyperparameters:
        self._check_netuid(netuid)
        return self.hyperparameters

    def replace_neurons(self, netuid: int, neurons: Sequence[Neuron]) -> Metagraph:
        self._check_netuid(netuid)
        ordered = sorted(neurons, key=lambda n: n.uid)
        if len({n.uid for n in ordered}) != len(ordered):
            raise Refused(422, "invalid_argument", "duplicate uids")
        if len({n.hotkey for n in ordered}) != len(ordered):
            raise Refused(422, "invalid_argument", "duplicate hotkeys")
        self._neurons = ordered
        return self.metagraph(netuid)

    # --- weights ---

    def set_weights(self, req: SetWeightsRequest) -> SetWeightsResult:
        """Check a submission like subtensor does; record it or raise `Refused`."""
        self._check_netuid(req.netuid)
        if not _signature_ok(req):
            raise Refused(403, "bad_signature", f"bad signature for hotkey {req.hotkey}")
        neuron = next((n for n in self._neurons if n.hotkey == req.hotkey), None)
        if neuron is None:
            raise Refused(
                403, "not_registered", f"hotkey {req.hotkey} is not registered on subnet {req.netuid}"
            )
        if req.nonce in self._nonces:
            raise Refused(409, "replayed", f"nonce {req.nonce} was already used")
        self_weight = req.uids == [neuron.uid]
        if not neuron.validator_permit and not self_weight:
            raise Refused(
                403,
                "not_authorized",
                f"hotkey {req.hotkey} (uid {neuron.uid}) has no validator permit on subnet {req.netuid}",
            )
        hp = self.hyperparameters
        if req.version_key < hp.weights_version:
            raise Refused(
                422,
                "invalid_argument",
                f"version key {req.version_key} is older than the subnet's {hp.weights_version}",
            )
        self._check_weights(req, self_weight)
        head = self.current_block()
        if hp.weights_rate_limit and neuron.last_update > 0:
            since = head - neuron.last_update
            if since < hp.weights_rate_limit:
                raise Refused(
                    429,
                    "rate_limited",
                    f"weights on subnet {req.netuid} were set {since} blocks ago by uid {neuron.uid}; "
                    f"the rate limit is {hp.weights_rate_limit} blocks: retry in "
                    f"{hp.weights_rate_limit - since} blocks",
                )
        self._remember_nonce(req.nonce)
        self._neurons = [
            n.model_copy(update={"last_update": head}) if n.uid == neuron.uid else n for n in self._neurons
        ]
        committed = hp.commit_reveal_enabled
        reveal_block = head + hp.reveal_period_epochs * hp.tempo if committed else None
        self._records.append(
            WeightsRecord(
                netuid=req.netuid,
                hotkey=req.hotkey,
                uid=neuron.uid,
                block=head,
                uids=list(req.uids),
                weights=list(req.weights),
                version_key=req.version_key,
                committed=committed,
                reveal_block=reveal_block,
            )
        )
        message = (
            f"weights committed at block {head}, revealed at block {reveal_block}"
            if committed
            else f"weights set at block {head}"
        )
        log.info("uid %s: %s (%d uids)", neuron.uid, message, len(req.uids))
        return SetWeightsResult(success=True, message=message, block=head, committed=committed)

    def _check_weights(self, req: SetWeightsRequest, self_weight: bool) -> None:
        def bad(message: str) -> Refused:
            return Refused(422, "invalid_argument", message)

        if len(req.uids) != len(req.weights):
            raise bad(f"{len(req.uids)} uids but {len(req.weights)} weights")
        if not req.uids:
            raise bad("no weights (all weights are zero)")
        if len(set(req.uids)) != len(req.uids):
            raise bad("duplicate uids")
        known = {n.uid for n in self._neurons}
        unknown = sorted(set(req.uids) - known)
        if unknown:
            raise bad(f"uids not on subnet {req.netuid}: {unknown[:10]}")
        if any(not 0 <= w <= U16_MAX for w in req.weights):
            raise bad("weights must be u16 (0..65535)")
        hp = self.hyperparameters
        if not self_weight and len(req.uids) < hp.min_allowed_weights:
            raise bad(f"subnet {req.netuid} needs at least {hp.min_allowed_weights} weights")

    def _remember_nonce(self, nonce: str) -> None:
        self._nonces.add(nonce)
        self._nonce_order.append(nonce)
        while len(self._nonce_order) > MAX_NONCES:
            self._nonces.discard(self._nonce_order.popleft())

    def weights(self, netuid: int, hotkey: str | None = None, limit: int = 100) -> list[WeightsRecord]:
        """Recorded submissions, oldest first, the last `limit` of them."""
        self._check_netuid(netuid)
        records = [r for r in self._records if hotkey is None or r.hotkey == hotkey]
        return records[-limit:] if limit > 0 else []


def _signature_ok(req: SetWeightsRequest) -> bool:
    sig = req.signature.removeprefix("0x")
    try:
        return bool(sp_core.verify(req.signing_payload(), bytes.fromhex(sig), req.hotkey))
    except ValueError:  # not hex, wrong length, not an ss58 address
        return False


# --- HTTP ---


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(ErrorBody(code=code, message=message).model_dump(), status_code=status)


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
        if req.netuid != netuid:
            raise Refused(422, "invalid_argument", f"body is for subnet {req.netuid}, path for {netuid}")
        return sim.set_weights(req)

    @app.get("/subnets/{netuid}/weights")
    async def weights(netuid: int, hotkey: str | None = None, limit: int = 100) -> WeightsHistory:
        return WeightsHistory(records=sim.weights(netuid, hotkey, limit))

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
) -> AsyncIterator[RunningChain]:
    """Serve the simulator on this event loop (port 0 = ephemeral) until the block exits."""
    sim = ChainSim(_spec(metagraph), block_interval=block_interval)
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
