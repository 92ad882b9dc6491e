"""One simulated miner: a WebSocket server playing the miner side of spec A §1.6 and §2.5.

Per connection (`ws://host:port/v0.1/validator_interface/{validator_hotkey}`):

1. an unknown validator gets `GenericError "Unknown validator: {hotkey}"` and a close with code 1000;
2. messages that arrive before authentication are queued; an invalid frame is answered with
   `GenericError "Malformed message: ..."` and the connection stays open;
3. `V0AuthenticateRequest` is checked in the original's order (age, miner hotkey, validator hotkey,
   signature); a failure sends `"Validator {hotkey} not authenticated due to: {reason}"` and closes;
4. on success: the manifest first, then the queued messages, then undelivered outcomes of this
   validator's older jobs, then `V0ExecutorReadyRequest` for older jobs still waiting for a payload.

Jobs belong to the miner, not to the connection: they keep running when the connection drops, and
their outcomes go out on whichever authenticated connection of the owning validator exists.
Receipts are verified (hotkeys and validator signature), counter-signed and kept in `receipts`.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from horde_common.crypto import sign, verify
from horde_common.protocol.miner import (
    MAX_EXECUTOR_TIMEOUT,
    ExecutorClass,
    ExecutorClassManifest,
    ExecutorManifest,
    GenericError,
    MachineSpecs,
    ProtocolError,
    Receipt,
    V0AcceptJobRequest,
    V0AuthenticateRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFailedRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    dumps,
    parse_validator_message,
    spin_up_time,
)

from .behaviours import Behaviour, BehaviourSpec
from .solver import ExecutionResult, execute

logger = logging.getLogger(__name__)

VALIDATOR_PATH = re.compile(r"^/v0\.1/validator_interface/(?P<hotkey>[^/?#]+)/?(?:\?.*)?$")
RECEIPTS_PATH = "/receipts/receipts.csv"
AUTH_MAX_AGE = 10  # seconds
READY_RESEND_MAX_AGE = 600  # re-announce ready executors younger than 10 min after re-authentication
RECEIPTS_MAX_AGE = timedelta(hours=24)
MAX_FRAME = 50 * 2**20

SIMULATED_SPECS: dict[str, Any] = {
    "gpu": {
        "count": 1,
        "details": [
            {
                "name": "Simulated GPU (horde localnet)",
                "driver": "0",
                "capacity": "24564",
                "cuda": "8.9",
                "power_limit": "0",
                "graphics_speed": "0",
                "memory_speed": "0",
                "uuid": "GPU-localnet",
                "serial": "[N/A]",
            }
        ],
    },
    "cpu": {"count": os.cpu_count() or 1, "model": "localnet", "clocks": []},
    "ram": {"total": 0, "free": 0, "available": 0, "used": 0},
    "hard_disk": {"total": 0, "used": 0, "free": 0},
    "os": "horde localnet",
}

Runner = Callable[[Callable[[dict[str, Any]], ExecutionResult], dict[str, Any]], Awaitable[ExecutionResult]]


async def run_in_thread(
    fn: Callable[[dict[str, Any]], ExecutionResult], job: dict[str, Any]
) -> ExecutionResult:
    return await asyncio.to_thread(fn, job)


class JobState(StrEnum):
    RESERVING = "reserving"  # waiting for a free executor
    DECLINED = "declined"
    SPINNING_UP = "spinning_up"
    READY = "ready"  # executor ready, waiting for the job request
    EXECUTOR_FAILED = "executor_failed"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    ABANDONED = "abandoned"  # no job request arrived within the reservation


@dataclass(eq=False)
class MinerJob:
    """The miner's record of one job of one validator."""

    job_uuid: str
    validator_hotkey: str
    executor_class: ExecutorClass
    initial: V0InitialJobRequest
    state: JobState = JobState.RESERVING
    changed_at: float = field(default_factory=time.monotonic)
    job_request: V0JobRequest | None = None
    outcome: V0JobFinishedRequest | V0JobFailedRequest | None = None
    outcome_delivered: bool = False
    holds_executor: bool = False
    time_took_us: int | None = None
    score_str: str | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    notify: Callable[[], None] = field(default=lambda: None, repr=False)

    def set_state(self, state: JobState) -> None:
        self.state = state
        self.changed_at = time.monotonic()
        self.notify()


class ExecutorPool:
    """Free executors per class; a reservation waits for one up to `wait` seconds (the miner polls 360 s)."""

    def __init__(self, counts: dict[ExecutorClass, int]) -> None:
        self.counts = dict(counts)
        self._free = {cls: asyncio.Semaphore(max(n, 0)) for cls, n in counts.items()}

    def free(self, executor_class: ExecutorClass) -> int:
        sem = self._free.get(executor_class)
        return 0 if sem is None else sem._value

    async def reserve(self, executor_class: ExecutorClass, wait: float) -> bool:
        sem = self._free.get(executor_class)
        if sem is None:
            sem = self._free[executor_class] = asyncio.Semaphore(0)
        try:
            await asyncio.wait_for(sem.acquire(), wait)
        except TimeoutError:
            return False
        return True

    def release(self, executor_class: ExecutorClass) -> None:
        self._free[executor_class].release()


@dataclass
class MinerConfig:
    """Everything one simulated miner needs besides its key and port."""

    executors: dict[ExecutorClass, int] = field(
        default_factory=lambda: {ExecutorClass.SPIN_UP_4MIN_GPU_24GB: 1}
    )
    behaviour: BehaviourSpec = field(default_factory=BehaviourSpec)
    known_validators: frozenset[str] | None = None  # None: every validator is known
    spin_up_delay: float = 0.0  # seconds from accept to executor ready (honest miners)
    executor_wait: float = float(MAX_EXECUTOR_TIMEOUT)  # how long a reservation waits for a free executor
    run_scripts: bool = False  # run the validator's raw_script in a subprocess instead of emulating it
    send_machine_specs: bool = True
    raw_manifest: list[dict[str, Any]] | None = None  # sent verbatim instead of `executors` (edge cases)
    clock: Callable[[], float] = time.time


class SimulatedMiner:
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
        self._authenticated: dict[str, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        """Wake `wait_for` callers: a job, a receipt or a delivery changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until `predicate()` holds, re-checked on every state change (for tests and tools)."""
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    @property
    def behaviour(self) -> Behaviour:
        return self.config.behaviour.kind

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    def url_for(self, validator_hotkey: str) -> str:
        return f"ws://{self.host}:{self.port}/v0.1/validator_interface/{validator_hotkey}"

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            max_size=MAX_FRAME,
            ping_interval=20,
            ping_timeout=1200,
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

    # ------------------------------------------------------------------------------------- HTTP side

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path
        if path.split("?", 1)[0] == RECEIPTS_PATH:
            body = self.receipts_csv().encode("utf-8")
            headers = Headers([("Content-Type", "text/csv"), ("Content-Length", str(len(body)))])
            return Response(200, "OK", headers, body)
        if VALIDATOR_PATH.match(path) is None:
            return connection.respond(404, "Not Found\n")
        return None

    def receipts_csv(self) -> str:
        """The receipts of the last 24 h in the miner's CSV layout (spec A §2.4.6)."""
        cutoff = datetime.now(UTC) - RECEIPTS_MAX_AGE
        rows: list[dict[str, Any]] = []
        columns: list[str] = []
        for receipt in self.receipts:
            if receipt.payload.timestamp < cutoff:
                continue
            payload = receipt.payload.model_dump(mode="json")
            for key in payload:
                if key not in columns:
                    columns.append(key)
            rows.append(
                {
                    "type": payload["receipt_type"],
                    "validator_signature": receipt.validator_signature,
                    "miner_signature": receipt.miner_signature or "",
                    **payload,
                }
            )
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["type", "validator_signature", "miner_signature", *columns])
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    # ------------------------------------------------------------------------------- WebSocket side

    async def _handle(self, ws: ServerConnection) -> None:
        match = VALIDATOR_PATH.match(ws.request.path if ws.request is not None else "")
        if match is None:  # process_request already answered 404
            return
        validator = unquote(match.group("hotkey"))
        conn = _Connection(self, ws, validator)
        self.connection_count += 1
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            if self._authenticated.get(validator) is conn:
                del self._authenticated[validator]

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
        if payload.miner_hotkey != self.hotkey:
            return f"wrong miner hotkey ({self.hotkey}!={payload.miner_hotkey})"
        if payload.validator_hotkey != url_hotkey:
            return f"wrong validator hotkey ({url_hotkey}!={payload.validator_hotkey})"
        if not verify(url_hotkey, msg.blob_for_signing(), msg.signature):
            return "Signature mismatches"
        return None

    def register(self, conn: _Connection) -> None:
        """From now on, job messages of `conn.validator` go out on `conn` (sent after the manifest)."""
        self._authenticated[conn.validator] = conn

    async def on_authenticated(self, conn: _Connection) -> None:
        """After the manifest and the queued messages: re-deliver what this validator missed."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.validator_hotkey != conn.validator:
                continue
            if job.outcome is not None and not job.outcome_delivered:
                await self.deliver_outcome(job)
            elif job.state is JobState.READY and job.job_request is None:
                if now - job.changed_at < READY_RESEND_MAX_AGE:
                    await conn.send(V0ExecutorReadyRequest(job_uuid=job.job_uuid))
                else:
                    self._finish_without_outcome(job, JobState.FAILED)

    async def send_to(self, validator: str, message: Any) -> bool:
        conn = self._authenticated.get(validator)
        if conn is None:
            return False
        return await conn.send(message)

    # --------------------------------------------------------------------------------------- receipts

    def take_receipt(self, payload: Any, signature: str, validator: str) -> Receipt | None:
        """Verify a receipt the way the miner does; store it counter-signed if it passes."""
        kind = str(payload.receipt_type)
        if payload.miner_hotkey != self.hotkey:
            self.rejected_receipts.append((kind, "wrong miner hotkey"))
            return None
        if payload.validator_hotkey != validator:
            self.rejected_receipts.append((kind, "wrong validator hotkey"))
            return None
        blob = payload.blob_for_signing()
        if not verify(validator, blob, signature):
            self.rejected_receipts.append((kind, "bad signature"))
            return None
        receipt = Receipt(
            payload=payload, validator_signature=signature, miner_signature=sign(self.keypair, blob)
        )
        self.receipts.append(receipt)
        self._notify()
        return receipt

    # ------------------------------------------------------------------------------------------- jobs

    def on_initial_job_request(self, conn: _Connection, msg: V0InitialJobRequest) -> None:
        key = (conn.validator, msg.job_uuid)
        self.take_receipt(msg.job_started_receipt_payload, msg.job_started_receipt_signature, conn.validator)
        if key in self.jobs:
            logger.warning("miner %d: duplicate initial request for %s", self.index, msg.job_uuid)
            return
        executor_class = msg.executor_class or ExecutorClass.SPIN_UP_4MIN_GPU_24GB
        job = MinerJob(msg.job_uuid, conn.validator, executor_class, msg, notify=self._notify)
        self.jobs[key] = job
        self._notify()
        self._spawn(self._prepare(job), job)

    async def _prepare(self, job: MinerJob) -> None:
        behaviour = self.behaviour
        if behaviour is Behaviour.DECLINE or not await self.pool.reserve(
            job.executor_class, self.config.executor_wait
        ):
            job.set_state(JobState.DECLINED)
            await self._send_job_message(job, V0DeclineJobRequest(job_uuid=job.job_uuid))
            return
        job.holds_executor = True
        job.set_state(JobState.SPINNING_UP)
        await self._send_job_message(job, V0AcceptJobRequest(job_uuid=job.job_uuid))
        self._spawn(self._reservation_watchdog(job), job)
        if behaviour is not Behaviour.INSTANT and self.config.spin_up_delay > 0:
            await asyncio.sleep(self.config.spin_up_delay)
        if behaviour is Behaviour.EXECUTOR_FAIL:
            self._finish_without_outcome(job, JobState.EXECUTOR_FAILED)
            await self._send_job_message(job, V0ExecutorFailedRequest(job_uuid=job.job_uuid))
            return
        if job.state is not JobState.SPINNING_UP:
            return
        job.set_state(JobState.READY)
        await self._send_job_message(job, V0ExecutorReadyRequest(job_uuid=job.job_uuid))

    async def _reservation_watchdog(self, job: MinerJob) -> None:
        """Free the executor of a job whose request never came: `min(360, spin_up + timeout + 30)`."""
        timeout = job.initial.timeout_seconds or 0
        await asyncio.sleep(min(MAX_EXECUTOR_TIMEOUT, spin_up_time(job.executor_class) + timeout + 30))
        if job.state in (JobState.SPINNING_UP, JobState.READY):
            self._finish_without_outcome(job, JobState.ABANDONED)

    def _finish_without_outcome(self, job: MinerJob, state: JobState) -> None:
        job.set_state(state)
        self._release(job)

    def _release(self, job: MinerJob) -> None:
        if job.holds_executor:
            job.holds_executor = False
            self.pool.release(job.executor_class)

    async def on_job_request(self, conn: _Connection, msg: V0JobRequest) -> None:
        job = self.jobs.get((conn.validator, msg.job_uuid))
        if job is None:
            await conn.send(GenericError(details=f"Received JobRequest for unknown job_uuid: {msg.job_uuid}"))
            return
        if job.initial.volume is not None and msg.volume is not None:
            await conn.send(GenericError(details=f"Received job volume twice job_uuid: {msg.job_uuid}"))
            return
        if job.job_request is not None or job.state is not JobState.READY:
            logger.warning("miner %d: job request for %s in state %s", self.index, job.job_uuid, job.state)
            return
        job.job_request = msg
        job.set_state(JobState.RUNNING)
        self._spawn(self._run(job), job)
        if self.behaviour is Behaviour.DISCONNECT:
            conn.abort()

    async def _run(self, job: MinerJob) -> None:
        request = job.job_request
        assert request is not None
        behaviour = self.behaviour
        if behaviour is Behaviour.TIMEOUT:
            return  # never answers; the watchdog frees the executor
        try:
            if behaviour is Behaviour.JOB_FAIL:
                result = ExecutionResult(1, "", "simulated job failure")
            elif behaviour is Behaviour.WRONG_ANSWER:
                result = ExecutionResult(0, base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n", "")
            else:
                try:
                    result = await self._execute(job, request)
                except Exception as exc:  # e.g. a broken worker pool: the executor fails the job
                    logger.exception("miner %d: execution of %s failed", self.index, job.job_uuid)
                    result = ExecutionResult(1, "", f"executor error: {type(exc).__name__}: {exc}")
            if self.config.behaviour.final_delay > 0:
                await asyncio.sleep(self.config.behaviour.final_delay)
            outcome: V0JobFinishedRequest | V0JobFailedRequest
            if result.ok:
                outcome = V0JobFinishedRequest(
                    job_uuid=job.job_uuid,
                    docker_process_stdout=result.stdout,
                    docker_process_stderr=result.stderr,
                )
                job.set_state(JobState.FINISHED)
            else:
                outcome = V0JobFailedRequest(
                    job_uuid=job.job_uuid,
                    docker_process_exit_status=result.exit_status,
                    docker_process_stdout=result.stdout,
                    docker_process_stderr=result.stderr,
                )
                job.set_state(JobState.FAILED)
        finally:
            self._release(job)
        job.outcome = outcome
        self._notify()
        if result.ok and self.config.send_machine_specs:
            await self.send_to(
                job.validator_hotkey,
                V0MachineSpecsRequest(job_uuid=job.job_uuid, specs=MachineSpecs(specs=SIMULATED_SPECS)),
            )
        await self.deliver_outcome(job)

    async def _execute(self, job: MinerJob, request: V0JobRequest) -> ExecutionResult:
        volume = job.initial.volume if job.initial.volume is not None else request.volume
        spec = {
            "volume": None if volume is None else volume.model_dump(mode="json"),
            "raw_script": request.raw_script,
            "docker_run_cmd": list(request.docker_run_cmd),
            "docker_image_name": request.docker_image_name,
            "run_scripts": self.config.run_scripts,
        }
        limit = job.initial.timeout_seconds
        try:
            return await asyncio.wait_for(self._runner(execute, spec), limit)
        except TimeoutError:
            return ExecutionResult(None, "", f"job timed out after {limit} s")

    async def deliver_outcome(self, job: MinerJob) -> None:
        if job.outcome is None or job.outcome_delivered:
            return
        job.outcome_delivered = True  # claimed before the await: never sent twice concurrently
        if not await self._send_job_message(job, job.outcome):
            job.outcome_delivered = False
        self._notify()

    async def _send_job_message(self, job: MinerJob, message: Any) -> bool:
        if self.behaviour is Behaviour.GARBAGE:
            conn = self._authenticated.get(job.validator_hotkey)
            if conn is not None:
                await conn.send_garbage(job.job_uuid)
        return await self.send_to(job.validator_hotkey, message)

    def on_accepted_receipt(self, conn: _Connection, msg: V0JobAcceptedReceiptRequest) -> None:
        self.take_receipt(msg.payload, msg.signature, conn.validator)

    def on_finished_receipt(self, conn: _Connection, msg: V0JobFinishedReceiptRequest) -> None:
        if self.take_receipt(msg.payload, msg.signature, conn.validator) is None:
            return
        job = self.jobs.get((conn.validator, msg.payload.job_uuid))
        if job is None:
            logger.warning("miner %d: finished receipt for unknown job %s", self.index, msg.payload.job_uuid)
            return
        job.time_took_us = msg.payload.time_took_us
        job.score_str = msg.payload.score_str
        self._notify()

    # --------------------------------------------------------------------------------------- queries

    def jobs_of(self, validator_hotkey: str) -> list[MinerJob]:
        return [j for j in self.jobs.values() if j.validator_hotkey == validator_hotkey]

    def receipts_of_type(self, receipt_type: str) -> list[Receipt]:
        return [r for r in self.receipts if str(r.payload.receipt_type) == receipt_type]


def _garbage_frames(job_uuid: str | None) -> Iterable[str | bytes]:
    yield "this is not json"
    yield '{"message_type": "V0NoSuchMessage", "job_uuid": "x"}'
    yield '{"message_type": "V0AcceptJobRequest"}'
    yield b"\x00\xff\xfe garbage"
    yield "[1, 2, 3]"
    if job_uuid is not None:
        yield json.dumps({"message_type": "V0JobFinishedRequest", "job_uuid": job_uuid})  # no stdout
    yield '{"message_type": "V0AcceptJobRequest", "job_uuid": "00000000-0000-4000-8000-000000000000"}'


class _Connection:
    """One validator connection: authentication, the pre-auth queue, message dispatch."""

    def __init__(self, miner: SimulatedMiner, ws: ServerConnection, validator: str) -> None:
        self.miner = miner
        self.ws = ws
        self.validator = validator
        self.authenticated = False
        self._queue: list[Any] = []
        self._send_lock = asyncio.Lock()

    async def send(self, message: Any) -> bool:
        return await self._send_raw(dumps(message))

    async def _send_raw(self, frame: str | bytes) -> bool:
        try:
            async with self._send_lock:
                await self.ws.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def send_garbage(self, job_uuid: str | None) -> None:
        for frame in _garbage_frames(job_uuid):
            await self._send_raw(frame)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (behaviour `disconnect`)."""
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code)

    async def run(self) -> None:
        miner = self.miner
        if not miner.is_known(self.validator):
            await self.send(GenericError(details=f"Unknown validator: {self.validator}"))
            await self.close(1000)
            return
        try:
            async for frame in self.ws:
                try:
                    msg = parse_validator_message(frame)
                except ProtocolError as exc:
                    await self.send(GenericError(details=f"Malformed message: {exc.text}"))
                    continue
                miner.received.append((self.validator, msg.message_type))
                if isinstance(msg, V0AuthenticateRequest):
                    if not await self._authenticate(msg):
                        return
                elif not self.authenticated:
                    self._queue.append(msg)
                else:
                    await self._dispatch(msg)
        except ConnectionClosed:
            pass

    async def _authenticate(self, msg: V0AuthenticateRequest) -> bool:
        reason = self.miner.check_auth(msg, self.validator)
        if reason is not None:
            await self.send(
                GenericError(details=f"Validator {self.validator} not authenticated due to: {reason}")
            )
            await self.close(1000)
            return False
        self.authenticated = True
        await self.send(self.miner.manifest())
        self.miner.register(self)
        if self.miner.behaviour is Behaviour.GARBAGE:
            await self.send_garbage(None)
        queued, self._queue = self._queue, []
        for queued_msg in queued:
            await self._dispatch(queued_msg)
        await self.miner.on_authenticated(self)
        return True

    async def _dispatch(self, msg: Any) -> None:
        miner = self.miner
        if isinstance(msg, V0InitialJobRequest):
            miner.on_initial_job_request(self, msg)
        elif isinstance(msg, V0JobRequest):
            await miner.on_job_request(self, msg)
        elif isinstance(msg, V0JobAcceptedReceiptRequest):
            miner.on_accepted_receipt(self, msg)
        elif isinstance(msg, V0JobFinishedReceiptRequest):
            miner.on_finished_receipt(self, msg)
        elif isinstance(msg, GenericError):
            logger.info("miner %d: GenericError from %s: %s", miner.index, self.validator, msg.details)
        else:  # V0MachineSpecsRequest from a validator: never sent by the original, ignored
            logger.debug("miner %d: ignoring %s", miner.index, msg.message_type)


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("simulated miner task failed", exc_info=task.exception())
