"""The facilitator simulator's state: validator links, the job queue and what validators reported.

No sockets here: `server` owns them and calls in. A validator link goes through the real
facilitator's authentication (docs/organic.md §1.3): the first frame must be a
`V0AuthenticationRequest` whose `0x` signature over the raw public key verifies; the answer is a
`Response` — `{"status":"success","errors":[]}`, or an error naming `auth.signature_invalid`
(then close code 3000) or `auth.validator_not_found` for a hotkey outside the allowed set (then
close code 3001). Anything else before authentication gets `auth.not_authenticated`, a second
authentication `auth.already_authenticated`; the connection stays open in both cases.

After authentication every `V0JobStatusUpdate`, `V0Heartbeat` and `V0MachineSpecsUpdate` is
recorded with its receive time and never answered; any other frame (binary frames included: the
facilitator reads text frames only, §1.2) is counted as invalid and ignored, as an invalid frame
never ends the link.

Jobs go to an authenticated validator (round robin, or the one the spec names). With none
connected they wait in a FIFO and go out when one authenticates (`hold_when_disconnected=True`,
the default), or are recorded as dropped (`False`). A job already sent is never sent again unless
asked (`resend`), and a job uuid is accepted once: submitting it again is refused, also after its
record was evicted. Jobs are keyed by the canonical form of their uuid (`records.job_key`), the form
validators answer with. A final status for a job that already had one is counted
(`duplicate_finals`; `identical_finals` when it repeats an earlier one exactly).
docs/organic.md §9 describes the simulator as a whole.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from bittensor_core import Keypair
from pydantic import ValidationError

from horde_common.protocol.facilitator import (
    ErrorDetail,
    Response,
    V0AuthenticationRequest,
    V0Heartbeat,
    V0JobStatusUpdate,
    V0MachineSpecsUpdate,
)

from .jobs import JobSpec, Signer, build_request
from .records import FINAL_STATUSES, Action, JobRecord, Link, ValidatorStats, job_key

__all__ = [
    "CLOSE_SIGNATURE_INVALID",
    "CLOSE_VALIDATOR_NOT_FOUND",
    "MAX_JOBS",
    "MAX_RECORDED_FRAMES",
    "MAX_SUBMITTED_UUIDS",
    "Action",
    "DuplicateJob",
    "FacilitatorSim",
    "JobRecord",
    "Link",
]

log = logging.getLogger(__name__)

CLOSE_SIGNATURE_INVALID: Final = 3000
"""Close code after a refused signature, as the deployed facilitator (docs/organic.md §1.3)."""

CLOSE_VALIDATOR_NOT_FOUND: Final = 3001
"""Close code after an unknown validator hotkey, as the deployed facilitator."""

MAX_JOBS: Final = 10_000
"""Job records kept (oldest evicted first): hours of localnet traffic at a few jobs a second, and
a bound on memory for a simulator left running."""

MAX_RECORDED_FRAMES: Final = 10_000
"""Heartbeats and machine-specs frames kept, for the same reason."""

MAX_SUBMITTED_UUIDS: Final = 200_000
"""Job uuids remembered to refuse a second submission after their record was evicted: far more than
any localnet run submits, at a few megabytes."""


class DuplicateJob(ValueError):
    """A job uuid submitted before: refused, so no uuid goes out twice unless `resend` asks."""


def _error(msg: str, type_: str) -> str:
    return Response(status="error", errors=[ErrorDetail(msg=msg, type=type_)]).model_dump_json()


def _message_type(frame: str | bytes) -> str | None:
    """The frame's `message_type`, or None for anything that is not a JSON object with one."""
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    value = data.get("message_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


class FacilitatorSim:
    """The simulator's state. `allowed_validators=None` accepts every validator that signs right."""

    def __init__(
        self,
        signer: Signer | None,
        *,
        allowed_validators: frozenset[str] | None = None,
        hold_when_disconnected: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.allowed_validators = allowed_validators
        self.hold_when_disconnected = hold_when_disconnected
        self._clock = clock
        self.jobs: dict[str, JobRecord] = {}
        self.queue: deque[str] = deque()
        self.links: dict[int, Link] = {}  # authenticated links by serial, in connection order
        self.validators: dict[int, ValidatorStats] = {}
        self.heartbeats: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_FRAMES)
        self.machine_specs: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_FRAMES)
        self.counters: dict[str, int] = dict.fromkeys(
            ("connections", "auth_ok", "auth_failed", "frames_in", "frames_out", "frames_invalid",
             "heartbeats", "status_updates", "machine_specs", "jobs_submitted", "jobs_sent",
             "jobs_dropped", "jobs_refused", "jobs_resent", "duplicate_finals", "identical_finals"),
            0,
        )  # fmt: skip
        self._submitted: dict[str, None] = {}  # job keys ever submitted, oldest first
        self._serials = itertools.count(1)
        self._round_robin = 0
        self._changed = asyncio.Event()
        # One dispatch at a time: a job held by one pass must be visible to the next, and jobs
        # leave in submission order.
        self._dispatching = asyncio.Lock()

    # ------------------------------------------------------------------ notification for waiters

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], within: float) -> bool:
        """Wait until `predicate()` holds (re-checked on every change); False after `within` seconds.
        What tests and the HTTP long-poll synchronise on, instead of sleeping."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return predicate()
        return True

    # -------------------------------------------------------------------------------- links

    def next_serial(self) -> int:
        self.counters["connections"] += 1
        return next(self._serials)

    def receive(self, link: Link, frame: str | bytes) -> Action:
        """Record one inbound frame and say how to answer it. Never raises."""
        self.counters["frames_in"] += 1
        stats = self.validators.get(link.serial)
        if stats is not None:
            stats.frames_in += 1
        try:
            if isinstance(frame, bytes):  # the facilitator's JSON consumer reads text frames only
                self._invalid(stats)
                return Action(None if link.hotkey else _error("Not authenticated", "auth.not_authenticated"))
            if link.hotkey is None:
                return self._authenticate(link, frame)
            return self._record(link, frame, stats)
        except Exception:  # a simulator bug must not end the validator's link: count and go on
            log.exception("facilitator: frame not handled")
            self._invalid(stats)
            return Action()
        finally:
            self._notify()

    def _invalid(self, stats: ValidatorStats | None) -> None:
        self.counters["frames_invalid"] += 1
        if stats is not None:
            stats.frames_invalid += 1

    def _authenticate(self, link: Link, frame: str | bytes) -> Action:
        try:
            auth = V0AuthenticationRequest.model_validate_json(frame)
        except (ValidationError, ValueError):
            self._invalid(None)
            return Action(_error("Not authenticated", "auth.not_authenticated"))
        if not auth.verify_signature():
            self.counters["auth_failed"] += 1
            return Action(_error("Invalid signature", "auth.signature_invalid"), CLOSE_SIGNATURE_INVALID)
        hotkey = str(Keypair(public_key=bytes.fromhex(auth.public_key)).ss58_address)
        if self.allowed_validators is not None and hotkey not in self.allowed_validators:
            self.counters["auth_failed"] += 1
            return Action(
                _error("Validator not found", "auth.validator_not_found"), CLOSE_VALIDATOR_NOT_FOUND
            )
        self.counters["auth_ok"] += 1
        link.hotkey = hotkey
        self.links[link.serial] = link
        self.validators[link.serial] = ValidatorStats(hotkey, link.serial, self._clock())
        log.info("facilitator: validator %s authenticated (connection %d)", hotkey, link.serial)
        return Action(Response(status="success").model_dump_json())

    def _record(self, link: Link, frame: str | bytes, stats: ValidatorStats | None) -> Action:
        now = self._clock()
        message_type = _message_type(frame)
        try:
            if message_type == "V0Heartbeat":
                V0Heartbeat.model_validate_json(frame)
                self.counters["heartbeats"] += 1
                self.heartbeats.append({"validator": link.hotkey, "received_at": now})
                if stats is not None:
                    stats.heartbeats += 1
                    stats.last_heartbeat = now
            elif message_type == "V0JobStatusUpdate":
                update = V0JobStatusUpdate.model_validate_json(frame)
                self.counters["status_updates"] += 1
                self._job_status(update, link.hotkey, now)
            elif message_type == "V0MachineSpecsUpdate":
                specs = V0MachineSpecsUpdate.model_validate_json(frame)
                self.counters["machine_specs"] += 1
                self.machine_specs.append(
                    {"validator": link.hotkey, "received_at": now, **specs.model_dump(mode="json")}
                )
            elif message_type == "V0AuthenticationRequest":
                return Action(_error("Already authenticated", "auth.already_authenticated"))
            else:
                self._invalid(stats)
        except (ValidationError, ValueError):
            self._invalid(stats)
        return Action()

    def _job_status(self, update: V0JobStatusUpdate, validator: str | None, now: float) -> None:
        record = self.job(update.uuid)
        if record is None:
            record = self._store(JobRecord(job_key(update.uuid), None, None, now, "unknown"))
        entry = {"status": update.status.value, "received_at": now, "validator": validator}
        entry["metadata"] = update.metadata.model_dump(mode="json") if update.metadata else None
        repeated, identical = record.add_status(entry)
        if repeated:  # expected once per failed V2 attempt; identical ones are what a redelivery makes
            self.counters["duplicate_finals"] += 1
            self.counters["identical_finals"] += identical
            log.warning(
                "facilitator: job %s got another final status %s (identical: %s)",
                record.uuid,
                entry["status"],
                identical,
            )

    def job(self, job_uuid: str) -> JobRecord | None:
        """The record of a job, by its uuid in any spelling of the same UUID."""
        return self.jobs.get(job_key(job_uuid))

    def link_closed(self, link: Link) -> None:
        """The connection ended: later jobs go to other validators or wait."""
        self.links.pop(link.serial, None)
        self.validators.pop(link.serial, None)
        self._notify()

    # --------------------------------------------------------------------------------- jobs

    def _store(self, record: JobRecord) -> JobRecord:
        self.jobs[record.uuid] = record
        while len(self.jobs) > MAX_JOBS:
            oldest = next(iter(self.jobs))
            del self.jobs[oldest]
        return record

    def add_job(self, spec: JobSpec) -> JobRecord:
        """Record a job as queued. Raises ValueError for a spec that makes no valid request or
        reuses a submitted uuid (`resend` sends a job again on purpose). `dispatch` then sends it.
        Status updates that came for the uuid before it was submitted stay on its record."""
        request = build_request(spec, self.signer)
        key = job_key(request.uuid)
        if key in self._submitted:
            self.counters["jobs_refused"] += 1
            raise DuplicateJob(
                f"job {request.uuid} was already submitted (POST /jobs/{{uuid}}/resend sends it again)"
            )
        early = self.jobs.get(key)
        record = JobRecord(
            uuid=key,
            version=spec.version.value,
            request=json.loads(request.model_dump_json()),
            submitted_at=self._clock(),
            state="queued",
            target=spec.validator_hotkey,
            timeout=spec.timeout,
        )
        for entry in early.statuses if early is not None else ():
            record.add_status(entry)
        self.counters["jobs_submitted"] += 1
        self._submitted[key] = None
        while len(self._submitted) > MAX_SUBMITTED_UUIDS:
            del self._submitted[next(iter(self._submitted))]
        self._store(record)
        self.queue.append(key)
        self._notify()
        return record

    def resend(self, job_uuid: str) -> JobRecord:
        """Queue a sent (or dropped) job to go out again with the very same request, as a
        facilitator repeating itself would; `dispatch` then sends it. KeyError for an unknown job,
        ValueError for one never submitted here or still queued."""
        record = self.job(job_uuid)
        if record is None:
            raise KeyError(job_uuid)
        if record.request is None or record.state not in ("sent", "dropped"):
            raise ValueError(f"job {job_uuid} is {record.state}: only a sent or dropped job is resent")
        record.state = "queued"
        self.counters["jobs_resent"] += 1
        self.queue.append(record.uuid)
        self._notify()
        return record

    def _pick(self, record: JobRecord) -> Link | None:
        links = [link for link in self.links.values() if record.target in (None, link.hotkey)]
        if not links:
            return None
        self._round_robin += 1
        return links[self._round_robin % len(links)]

    async def dispatch(self) -> None:
        """Send every queued job that has a validator to go to, in submission order; drop the
        others unless holding them."""
        async with self._dispatching:
            await self._dispatch_queued()

    async def _dispatch_queued(self) -> None:
        kept: deque[str] = deque()
        while self.queue:
            job_uuid = self.queue.popleft()
            record = self.jobs.get(job_uuid)
            if record is None or record.state != "queued":
                continue
            link = self._pick(record)
            if link is None:
                if self.hold_when_disconnected:
                    kept.append(job_uuid)
                else:
                    record.state = "dropped"
                    self.counters["jobs_dropped"] += 1
                continue
            assert record.request is not None
            if await link.send_text(json.dumps(record.request, separators=(",", ":"))):
                record.state, record.sent_at, record.sent_to = "sent", self._clock(), link.hotkey
                record.sends += 1
                self.counters["jobs_sent"] += 1
                self.sent_frame(link)
            else:
                kept.append(job_uuid)  # the link died under us: retry on the next dispatch
        self.queue.extendleft(reversed(kept))
        self._notify()

    def sent_frame(self, link: Link) -> None:
        self.counters["frames_out"] += 1
        stats = self.validators.get(link.serial)
        if stats is not None:
            stats.frames_out += 1

    # ------------------------------------------------------------------------------- reports

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "queued": len(self.queue),
            "connected_validators": [
                {
                    "hotkey": v.hotkey,
                    "connection": v.serial,
                    "connected_at": v.connected_at,
                    "frames_in": v.frames_in,
                    "frames_out": v.frames_out,
                    "frames_invalid": v.frames_invalid,
                    "heartbeats": v.heartbeats,
                    "last_heartbeat": v.last_heartbeat,
                }
                for v in self.validators.values()
            ],
        }

    def statuses_after(self, job_uuid: str, after: int) -> tuple[list[dict[str, Any]], bool] | None:
        """Status updates of a job from index `after` on, and whether a final one was received;
        None for an unknown job."""
        record = self.job(job_uuid)
        if record is None:
            return None
        final = any(s["status"] in FINAL_STATUSES for s in record.statuses)
        return record.statuses[after:], final
