"""One miner of a shard: its transport, its sans-I/O `MinerSession`, and the reader that feeds it.

The link turns frames into job-state changes and tells the shard run about them (`LinkListener`).
It never decides anything about scoring; it records what happened and when, on the validator's
clock: every frame is stamped the moment the reader takes it from the socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from horde_common.bus.messages import MinerEndpoint
from horde_common.protocol.miner.events import (
    ExecutorFailed,
    ExecutorReady,
    IgnoredMessage,
    IgnoreReason,
    JobAccepted,
    JobDeclined,
    JobFailed,
    JobFinished,
    MachineSpecsReceived,
    MalformedFlood,
    ManifestReceived,
    ManifestRejected,
    MinerError,
    SessionEvent,
    Unauthorized,
)
from horde_common.protocol.miner.miner_messages import ExecutorManifest
from horde_common.protocol.miner.parsing import dumps
from horde_common.protocol.miner.session import MinerSession
from horde_job_runner.synthetic.model import Clock, JobState
from horde_job_runner.synthetic.transport import (
    MinerConnectionError,
    MinerTransport,
    Sleep,
    TransportFactory,
    TransportSettings,
)

__all__ = ["LinkListener", "MinerLink"]

# (frame, timeout_s, on_failure, on_sent)
_Outgoing = tuple[str | bytes, float, Callable[[BaseException], None] | None, Callable[[], None] | None]


class LinkListener(Protocol):
    """What the shard run hears from a link (all called on the event loop, never awaited)."""

    def on_manifest(self, link: MinerLink) -> None: ...

    def on_accepted(self, link: MinerLink, job: JobState, at: datetime) -> None: ...

    def on_spin_up_resolved(self, link: MinerLink, job: JobState) -> None: ...

    def on_final(self, link: MinerLink, job: JobState) -> None: ...

    def on_miner_event(
        self, link: MinerLink, subtype: str, description: str, data: dict[str, Any]
    ) -> None: ...

    def on_link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None: ...


class MinerLink:
    def __init__(
        self,
        endpoint: MinerEndpoint,
        session: MinerSession,
        *,
        clock: Clock,
        listener: LinkListener,
        transport_factory: TransportFactory,
        transport_settings: TransportSettings,
        sleep: Sleep,
        rng: Callable[[], float],
    ) -> None:
        self.endpoint = endpoint
        self.session = session
        self.hotkey = endpoint.hotkey
        self.address = endpoint.address
        self.port = endpoint.port
        self.name = session.name
        self._clock = clock
        self._listener = listener
        self.jobs: dict[str, JobState] = {}
        self.manifest: ExecutorManifest | None = None
        self.manifest_event = asyncio.Event()
        self.closed_by_us = False
        # Why we closed on the miner's account (UNAUTHORIZED, a malformed-frame flood); None otherwise.
        self.close_reason: str | None = None
        self.connection_error: str | None = None
        self.reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self.transport: MinerTransport = transport_factory(
            session.url(),
            name=self.name,
            hello=self._hello,
            on_reconnect=self._on_reconnect,
            on_error=self._on_transport_error,
            settings=transport_settings,
            sleep=sleep,
            rng=rng,
        )

    @property
    def ip_version(self) -> int:
        try:
            return ipaddress.ip_address(self.address).version
        except ValueError:
            return 4

    # --- transport callbacks --------------------------------------------------------------------

    def _hello(self) -> str:
        (auth,) = self.session.connected(self._clock.now())
        return dumps(auth)

    def _on_reconnect(self) -> None:
        self.session.disconnected(self._clock.now())

    def _on_transport_error(self, func: str, exc: BaseException) -> None:
        if self.closed_by_us:
            return
        subtype = "MINER_SEND_ERROR" if func == "send" else "MINER_CONNECTION_ERROR"
        self._listener.on_miner_event(
            self, subtype, f"{func} failed: {type(exc).__name__}: {exc}", {"func": func}
        )

    # --- life cycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (authenticating) and start reading. Raises `MinerConnectionError`."""
        await self.transport.connect()
        self.reader = asyncio.get_running_loop().create_task(self._read_loop(), name=f"read {self.hotkey}")

    async def close(self, grace_s: float) -> None:
        self.closed_by_us = True
        for task in list(self._tasks):
            task.cancel()
        if self.reader is not None:
            self.reader.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.transport.close(), grace_s)
        pending = [t for t in (*self._tasks, self.reader) if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)

    def spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def send(self, frame: str | bytes) -> None:
        await self.transport.send(frame)

    def post(
        self,
        frame: str | bytes,
        *,
        timeout_s: float = 5.0,
        on_failure: Callable[[BaseException], None] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Send a frame (receipts, error replies) in order, each within `timeout_s`; a failure is
        reported to `on_failure`.

        With nothing queued or in flight and the connection open, the frame is written at once as a
        pre-built frame, like the initial requests: no task, no timer, no await. Otherwise it is
        queued for this miner's writer, started on demand (one per link, not one task per frame).
        """
        if self._idle() and self._write_now(frame):
            if on_sent is not None:
                on_sent()
            return
        self._outbox.append((frame, timeout_s, on_failure, on_sent))
        if self._writer is None or self._writer.done():
            self._writer = self.spawn(self._write_loop())

    def post_many(
        self,
        frames: list[tuple[str | bytes, Callable[[BaseException], None] | None]],
        *,
        timeout_s: float = 5.0,
    ) -> None:
        """`post` for several frames (frame, on_failure), in order: with the link idle and open they
        go out in one write (one system call for a miner's receipts, not one each)."""
        if self._idle() and self._write_now(*(frame for frame, _ in frames)):
            return
        for frame, on_failure in frames:
            self.post(frame, timeout_s=timeout_s, on_failure=on_failure)

    def _idle(self) -> bool:
        """Nothing queued or in flight on the writer, and not closed: a direct write keeps the order."""
        return not self._outbox and (self._writer is None or self._writer.done()) and not self.closed_by_us

    def _write_now(self, *frames: str | bytes) -> bool:
        """Write whole frames to the open connection without yielding; False (nothing written) if
        they cannot be."""
        transport = self.transport
        try:
            wires = [transport.prebuild(frame) for frame in frames]
            if not wires or any(wire is None for wire in wires):
                return False
            return transport.write_prebuilt(b"".join(wires))  # type: ignore[arg-type]
        except Exception:  # the writer will try again, and report what fails there
            return False

    async def _write_loop(self) -> None:
        while self._outbox and not self.closed_by_us:
            frame, timeout_s, on_failure, on_sent = self._outbox.popleft()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.transport.send(frame)
                if on_sent is not None:
                    on_sent()
            except (TimeoutError, MinerConnectionError, OSError) as exc:
                if on_failure is not None:
                    on_failure(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug on our side
                self._listener.on_link_failure(self, exc, "write")
                return
        while self._outbox:  # closed: whatever is left was not sent
            _, _, on_failure, _ = self._outbox.popleft()
            if on_failure is not None:
                on_failure(MinerConnectionError(f"{self.name}: connection closed"))

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until the queued frames are sent or failed."""
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait([writer], timeout=timeout_s)

    # --- reading --------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while not self.closed_by_us:
                frame = await self.transport.recv()
                self._on_frame(frame)
        except MinerConnectionError as exc:
            if not self.closed_by_us:
                self.connection_error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug on our side: never the miner's fault
            if not self.closed_by_us:
                self._listener.on_link_failure(self, exc, "read")

    def _on_frame(self, frame: str | bytes) -> None:
        now = self._clock.now()
        mono = self._clock.monotonic()
        received = self.session.receive(frame, now)
        for event in received.events:
            self._on_event(event, mono)
        for message in received.outgoing:
            self.post(dumps(message))
        if received.close and not self.closed_by_us:
            self.closed_by_us = True  # no reconnects, no error events, no more frames read
            if self.close_reason is None:
                self.close_reason = "connection closed by the validator"
            self.spawn(self._close_requested())

    async def _close_requested(self) -> None:
        """The session asked to close, for the miner's fault (it said we are unknown/inactive,
        docs/miner-protocol.md §1.8, or it flooded us with malformed frames): close our side, no reconnects.

        The manifest wait is woken (there will be no manifest): a miner closed on before its
        manifest ends as MANIFEST_ERROR with `close_reason`, the miner's fault, instead of waiting
        out the window as a MANIFEST_TIMEOUT. Nothing else is woken: the jobs of a closed link get
        no further answers and are judged at their own deadlines like any silent miner's.
        """
        self.manifest_event.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.transport.close(), 1.0)

    def _on_event(self, event: SessionEvent, mono: float) -> None:
        listener = self._listener
        if isinstance(event, ManifestReceived):
            self.manifest = event.manifest
            self.manifest_event.set()
            listener.on_manifest(self)
            return
        if isinstance(event, MinerError):
            if event.close:
                self.close_reason = f"connection closed by the validator after an {event.subtype} error"
            listener.on_miner_event(self, str(event.subtype), event.details or "", {})
            return
        if isinstance(event, MalformedFlood):
            self.close_reason = (
                f"connection closed by the validator: {event.malformed_frames} malformed frames "
                f"within {event.window_s:g} s"
            )
            data = {
                "reason": "malformed frame flood",
                "malformed_frames": event.malformed_frames,
                "window_s": event.window_s,
                "bytes_received": event.bytes_received,
                "bytes_replied": event.bytes_replied,
            }
            listener.on_miner_event(self, "UNEXPECTED_MESSAGE", f"{self.close_reason} from {self.name}", data)
            return
        if isinstance(event, ManifestRejected):
            # Recorded by the manifest phase as MANIFEST_ERROR with this reason.
            self.close_reason = f"manifest rejected: {event.error[:500]}"
            return
        if isinstance(event, Unauthorized):
            listener.on_miner_event(self, "UNAUTHORIZED", f"{event.code}: {event.details or ''}", {})
            return
        if isinstance(event, IgnoredMessage):
            if event.reason is IgnoreReason.INTERNAL_ERROR:
                listener.on_link_failure(self, RuntimeError("MinerSession internal error"), "session")
            return
        job_uuid = getattr(event, "job_uuid", None)
        job = self.jobs.get(job_uuid) if job_uuid is not None else None
        if job is None:
            return
        if isinstance(event, JobAccepted):
            job.accepted = True
            job.accept_mono = mono
            listener.on_accepted(self, job, event.at)
        elif isinstance(event, JobDeclined):
            job.declined = True
            job.accept_mono = mono
            listener.on_spin_up_resolved(self, job)
        elif isinstance(event, ExecutorReady):
            job.executor_ready = True
            job.executor_mono = mono
            listener.on_spin_up_resolved(self, job)
        elif isinstance(event, ExecutorFailed):
            job.executor_failed = True
            job.executor_mono = mono
            listener.on_spin_up_resolved(self, job)
        elif isinstance(event, JobFinished | JobFailed):
            job.final_kind = "finished" if isinstance(event, JobFinished) else "failed"
            job.final_mono = mono
            job.final_at = event.at
            job.final_before_job_request = job.job_before_sent_mono is None
            msg = event.message
            job.stdout = msg.docker_process_stdout
            job.stderr = msg.docker_process_stderr
            if isinstance(event, JobFailed):
                job.exit_status = event.message.docker_process_exit_status
            listener.on_final(self, job)
        elif isinstance(event, MachineSpecsReceived):
            job.machine_specs = event.message.specs  # dumped only for the telemetry row
