"""One simulated miner: a WebSocket server playing the miner side of docs/miner-protocol.md §1.6 and §2.5.

Validators connect to `ws://host:port/v0.1/validator_interface/{validator_hotkey}`; the same port
serves the receipts CSV over plain HTTP. The parts:

* `connection`: one validator connection (unknown validators, the pre-auth queue, authentication,
  dispatch);
* `delivery`: which connection hears a job's messages across reconnects (`ReconnectMode`: `real`,
  the November 2024 miner, by default; `legacy`, only after re-authentication);
* `lifecycle`: a job from the initial request to its outcome, in the miner's `Behaviour`;
* `jobs` (states, records, executor pool), `receipts` (verification, CSV, HTTP), `config`.

Jobs belong to the miner, not to the connection: they keep running when the connection drops.
Receipts are verified (hotkeys and validator signature), counter-signed and kept in `receipts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from horde_common.crypto import verify
from horde_common.protocol.miner import (
    ExecutorClassManifest,
    ExecutorManifest,
    Receipt,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
)

from .behaviours import Behaviour
from .config import (
    AUTH_MAX_AGE,
    MAX_FRAME,
    READY_RESEND_MAX_AGE,
    RECEIPTS_MAX_AGE,
    SIMULATED_SPECS,
    MinerConfig,
    Runner,
    run_in_thread,
)
from .connection import ValidatorConnection
from .jobs import ExecutorPool, JobState, MinerJob, ValidatorLink
from .lifecycle import JobLifecycle
from .receipts import RECEIPTS_PATH, VALIDATOR_PATH, check_and_sign, http_response, receipts_csv

__all__ = [
    "AUTH_MAX_AGE",
    "MAX_FRAME",
    "READY_RESEND_MAX_AGE",
    "RECEIPTS_MAX_AGE",
    "RECEIPTS_PATH",
    "SIMULATED_SPECS",
    "VALIDATOR_PATH",
    "ExecutorPool",
    "JobState",
    "MinerConfig",
    "MinerJob",
    "Runner",
    "SimulatedMiner",
    "ValidatorConnection",
    "run_in_thread",
]

logger = logging.getLogger(__name__)

# The real miner's WebSocket keepalive: a ping every 20 s, and 20 minutes before a silent peer is
# dropped (long enough never to drop a validator busy with a batch).
PING_INTERVAL = 20
PING_TIMEOUT = 1200


class SimulatedMiner(JobLifecycle):
    """A miner on `host:port`; `start()` binds (port 0 picks a free port), `stop()` closes everything."""

    def __init__(
        self,
        index: int,
        keypair: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: MinerConfig | None = None,
        runner: Runner = run_in_thread,
    ) -> None:
        self.index = index
        self.keypair = keypair
        self.hotkey: str = str(keypair.ss58_address)
        self.host = host
        self._requested_port = port
        self.config = config or MinerConfig()
        self._runner = runner
        self.pool = ExecutorPool(self.config.executors)
        self.jobs: dict[tuple[str, str], MinerJob] = {}  # (validator hotkey, job uuid) -> job
        self.receipts: list[Receipt] = []
        self.rejected_receipts: list[tuple[str, str]] = []  # (receipt type, reason)
        self.received: list[tuple[str, str]] = []  # (validator hotkey, message type), in arrival order
        self.connection_count = 0
        self._authenticated: dict[str, ValidatorLink] = {}
        self._connections: set[ValidatorConnection] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        """Wake `wait_for` callers: a job, a connection, a receipt or a delivery changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until `predicate()` holds, re-checked on every state change (for tests and tools)."""
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    def url_for(self, validator_hotkey: str) -> str:
        return f"ws://{self.host}:{self.port}/v0.1/validator_interface/{validator_hotkey}"

    @property
    def connections(self) -> list[ValidatorConnection]:
        """The open validator connections, oldest first."""
        return sorted(self._connections, key=lambda c: c.serial)

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            max_size=MAX_FRAME,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        tasks = [t for t in self._tasks if not t.done()]
        for job in self.jobs.values():
            tasks.extend(t for t in job.tasks if not t.done())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], job: MinerJob | None = None) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        owner = self._tasks if job is None else job.tasks
        owner.add(task)
        task.add_done_callback(owner.discard)
        task.add_done_callback(_log_task_error)
        return task

    # ----------------------------------------------------------------------------------- the server

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return http_response(connection, request, self.receipts_csv)

    def receipts_csv(self) -> str:
        """The receipts of the last 24 h in the miner's CSV layout (docs/miner-protocol.md §2.4.6)."""
        return receipts_csv(self.receipts)

    async def _handle(self, ws: ServerConnection) -> None:
        match = VALIDATOR_PATH.match(ws.request.path if ws.request is not None else "")
        if match is None:  # process_request already answered 404
            return
        self.connection_count += 1
        conn = ValidatorConnection(self, ws, unquote(match.group("hotkey")), self.connection_count)
        self._connections.add(conn)
        self._notify()
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self.on_closed(conn)

    def is_known(self, validator_hotkey: str) -> bool:
        if self.behaviour is Behaviour.UNKNOWN_VALIDATOR:
            return False
        known = self.config.known_validators
        return known is None or validator_hotkey in known

    def manifest(self) -> V0ExecutorManifestRequest:
        if self.config.raw_manifest is not None:
            return V0ExecutorManifestRequest.model_validate(
                {"manifest": {"executor_classes": self.config.raw_manifest}}
            )
        entries = [
            ExecutorClassManifest(executor_class=cls, count=count)
            for cls, count in self.config.executors.items()
        ]
        return V0ExecutorManifestRequest(manifest=ExecutorManifest(executor_classes=entries))

    def check_auth(self, msg: V0AuthenticateRequest, url_hotkey: str) -> str | None:
        """The reason authentication fails (the original's texts, in its order), or None."""
        payload = msg.payload
        if payload.timestamp < self.config.clock() - AUTH_MAX_AGE:
            return "msg too old"
        if payload.miner_hotkey != self.hotkey and not self.config.trusted:  # trusted: not checked
            return f"wrong miner hotkey ({self.hotkey}!={payload.miner_hotkey})"
        if payload.validator_hotkey != url_hotkey:
            return f"wrong validator hotkey ({url_hotkey}!={payload.validator_hotkey})"
        if not verify(url_hotkey, msg.blob_for_signing(), msg.signature):
            return "Signature mismatches"
        return None

    # --------------------------------------------------------------------------------------- receipts

    def take_receipt(self, payload: Any, signature: str, validator: str) -> Receipt | None:
        """Verify a receipt the way the miner does; store it counter-signed if it passes."""
        receipt, reason = check_and_sign(
            self.keypair, payload, signature, validator, check_miner_hotkey=not self.config.trusted
        )
        if receipt is None:
            self.rejected_receipts.append((str(payload.receipt_type), reason))
            return None
        self.receipts.append(receipt)
        self._notify()
        return receipt

    def receipts_of_type(self, receipt_type: str) -> list[Receipt]:
        return [r for r in self.receipts if str(r.payload.receipt_type) == receipt_type]


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("simulated miner task failed", exc_info=task.exception())
