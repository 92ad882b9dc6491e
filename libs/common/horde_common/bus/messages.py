"""The messages on the bus: one pydantic model per routing key (see docs/architecture.md, "Messages on the
bus").

Every model shares the `BusMessage` envelope (`type`, `version`, `message_id`, `sent_at`) so that
consumers can deduplicate on `message_id` and measure latency from `sent_at` without knowing the
payload. Models are frozen (a received message is a fact, not a mutable object) and ignore unknown
fields, so a producer can add an optional field before every consumer is upgraded.

Serialisation uses pydantic's own (Rust) JSON encoder/decoder: it is faster than both `json` and
`orjson` round trips through dicts, and orjson is not a dependency of this workspace.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UnknownMessageType(ValueError):
    """A routing key with no model in `REGISTRY` (a producer newer than this consumer, or a typo)."""


REGISTRY: dict[str, type[BusMessage]] = {}


class BusMessage(BaseModel):
    """Envelope shared by every message. Subclasses set `ROUTING_KEY`; `type` defaults to it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ROUTING_KEY: ClassVar[str] = ""

    type: str = ""
    version: int = 1
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    sent_at: AwareDatetime = Field(default_factory=_utcnow)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        key = cls.__dict__.get("ROUTING_KEY")
        if key:
            if key in REGISTRY:
                raise TypeError(f"routing key {key!r} already registered by {REGISTRY[key].__name__}")
            REGISTRY[key] = cls

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        # `type` is redundant with the routing key on purpose: a message in the dead-letter queue or
        # in a log line still says what it is. Default it, and refuse a body of another type.
        if isinstance(data, dict) and cls.ROUTING_KEY:
            declared = data.get("type") or cls.ROUTING_KEY
            if declared != cls.ROUTING_KEY:
                raise ValueError(f"type {declared!r} does not match {cls.__name__} ({cls.ROUTING_KEY!r})")
            data = {**data, "type": declared}
        return data

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def parse_message(routing_key: str, body: bytes) -> BusMessage:
    """Decode `body` as the model of `routing_key`; raises `UnknownMessageType` or `ValidationError`."""
    try:
        model = REGISTRY[routing_key]
    except KeyError:
        raise UnknownMessageType(routing_key) from None
    return model.model_validate_json(body)


# --- batch flow: scheduler <-> job-runner ---------------------------------------------------------


class MinerEndpoint(BaseModel):
    """Where to reach one miner of a shard (a snapshot of the metagraph row at scheduling time)."""

    model_config = ConfigDict(frozen=True)

    hotkey: str
    uid: int
    address: str
    port: int


class ShardDeadlines(BaseModel):
    """Phase deadlines of a batch; absolute so every shard (and replica) agrees on them."""

    model_config = ConfigDict(frozen=True)

    accept_deadline: AwareDatetime
    release_deadline: AwareDatetime


class BatchShardRequested(BusMessage):
    """scheduler -> job-runner (work queue): run this shard of a batch for these miners."""

    ROUTING_KEY: ClassVar[str] = "batch.shard.requested"

    batch_id: int
    shard_index: int
    shard_count: int
    cycle_start: int
    cycle_stop: int
    miners: list[MinerEndpoint]
    deadlines: ShardDeadlines
    weights_version: int


class BatchShardReady(BusMessage):
    """job-runner -> scheduler: how many executors of the shard are ready (the cross-shard barrier)."""

    ROUTING_KEY: ClassVar[str] = "batch.shard.ready"

    batch_id: int
    shard_index: int
    ready_executor_count: int
    ready_by_class: dict[str, int] = Field(default_factory=dict)


class BatchReleased(BusMessage):
    """scheduler -> every job-runner replica (broadcast): send all job requests of the batch now."""

    ROUTING_KEY: ClassVar[str] = "batch.released"

    batch_id: int
    released_at: AwareDatetime


class BatchShardCompleted(BusMessage):
    """job-runner -> scheduler: the shard's results are persisted (or the shard failed: `ok=False`)."""

    ROUTING_KEY: ClassVar[str] = "batch.shard.completed"

    batch_id: int
    shard_index: int
    job_count: int
    ok: bool
    error: str | None = None


class BatchCompleted(BusMessage):
    """scheduler -> weights: the batch is done; it may be scored once its cycle has ended."""

    ROUTING_KEY: ClassVar[str] = "batch.completed"

    batch_id: int
    cycle_start: int
    cycle_stop: int


# --- organic jobs: facilitator-gateway <-> job-runner ---------------------------------------------


class OrganicJobRequested(BusMessage):
    """gateway -> job-runner: a facilitator job, already persisted by the gateway, to run."""

    ROUTING_KEY: ClassVar[str] = "organic.job.requested"

    job_uuid: uuid.UUID
    miner_hotkey: str
    executor_class: str
    request: dict[str, Any]  # the raw facilitator request, passed through unchanged


OrganicJobStatusValue = Literal["accepted", "rejected", "failed", "completed"]


class OrganicJobStatus(BusMessage):
    """job-runner -> gateway: a status update of an organic job (+ the miner's output when completed)."""

    ROUTING_KEY: ClassVar[str] = "organic.job.status"

    job_uuid: uuid.UUID
    status: OrganicJobStatusValue
    comment: str | None = None
    miner_response: dict[str, Any] | None = None
    seq: int = Field(default=0, ge=0)
    """The update's place among its job's updates, stamped by the job-runner (docs/organic.md,
    "Facilitator gateway"): strictly increasing in the order the job's updates were made, so the
    gateway can restore that order whatever order the bus delivers them in. 0: unknown (a sender
    from before the field); the gateway then orders by `sent_at`. Bus only, never on the
    facilitator wire."""


# --- trusted-miner jobs: cross-validator <-> job-runner -------------------------------------------


class TrustedJobRequested(BusMessage):
    """cross-validator -> job-runner: run this job on the trusted miner."""

    ROUTING_KEY: ClassVar[str] = "trusted.job.requested"

    job_uuid: uuid.UUID
    workload_id: str
    request: dict[str, Any]


class TrustedJobCompleted(BusMessage):
    """job-runner -> cross-validator: the outcome of a trusted-miner job."""

    ROUTING_KEY: ClassVar[str] = "trusted.job.completed"

    job_uuid: uuid.UUID
    workload_id: str
    success: bool
    comment: str | None = None


# --- chain ----------------------------------------------------------------------------------------


class ChainMetagraphSynced(BusMessage):
    """scheduler -> anyone: a new metagraph snapshot (at `block`) is in the database."""

    ROUTING_KEY: ClassVar[str] = "chain.metagraph.synced"

    block: int
    neuron_count: int
