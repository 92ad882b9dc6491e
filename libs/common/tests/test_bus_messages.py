"""Unit tests of the bus's pure parts: message models, the registry, the queue table, the router."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from horde_common.bus.messages import (
    REGISTRY,
    BatchCompleted,
    BatchShardRequested,
    BusMessage,
    ChainMetagraphSynced,
    MinerEndpoint,
    OrganicJobStatus,
    ShardDeadlines,
    UnknownMessageType,
    parse_message,
)
from horde_common.bus.router import BusRouter, HandlerContext
from horde_common.bus.topology import (
    BROADCAST_ROUTING_KEYS,
    MAX_DELIVERIES,
    QUEUES,
    queue_arguments,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def shard_requested() -> BatchShardRequested:
    return BatchShardRequested(
        batch_id=7,
        shard_index=0,
        shard_count=1,
        cycle_start=100,
        cycle_stop=822,
        miners=[MinerEndpoint(hotkey="5F...", uid=3, address="10.0.0.1", port=8000)],
        deadlines=ShardDeadlines(accept_deadline=NOW, release_deadline=NOW + timedelta(seconds=30)),
        weights_version=2,
    )


def test_envelope_defaults_and_round_trip() -> None:
    msg = shard_requested()
    assert msg.type == "batch.shard.requested"
    assert msg.version == 1
    assert msg.sent_at.tzinfo is not None
    again = parse_message(msg.ROUTING_KEY, msg.to_bytes())
    assert again == msg
    assert isinstance(again, BatchShardRequested)


def test_every_queue_routing_key_has_a_model_and_back() -> None:
    routed = {key for spec in QUEUES.values() for key in spec.routing_keys}
    assert routed == set(REGISTRY)
    assert BROADCAST_ROUTING_KEYS == {"batch.released"}


def test_type_must_match_the_model() -> None:
    body = ChainMetagraphSynced(block=1, neuron_count=2).to_bytes()
    with pytest.raises(ValidationError):
        parse_message("batch.completed", body)
    with pytest.raises(UnknownMessageType):
        parse_message("no.such.key", body)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError):
        ChainMetagraphSynced(block=1, neuron_count=2, sent_at=datetime(2025, 1, 1))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    body = b'{"batch_id": 1, "cycle_start": 0, "cycle_stop": 10, "new_field": "x"}'
    msg = parse_message("batch.completed", body)
    assert isinstance(msg, BatchCompleted)
    assert msg.type == "batch.completed"


def test_status_is_a_closed_set() -> None:
    OrganicJobStatus(job_uuid=uuid.uuid4(), status="completed", miner_response={"stdout": ""})
    with pytest.raises(ValidationError):
        OrganicJobStatus(job_uuid=uuid.uuid4(), status="exploded")  # type: ignore[arg-type]


def test_routing_keys_are_unique() -> None:
    with pytest.raises(TypeError):

        class Again(BusMessage):
            ROUTING_KEY = "batch.completed"


def test_queue_table() -> None:
    for name, spec in QUEUES.items():
        assert name == f"{spec.service}.{spec.routing_keys[0]}"
    released = QUEUES["job-runner.batch.released"]
    assert released.broadcast
    assert released.declared_name("pod-1") == "job-runner.batch.released.pod-1"
    work = queue_arguments(QUEUES["job-runner.batch.shard.requested"])
    assert work["x-queue-type"] == "quorum"
    assert work["x-delivery-limit"] == MAX_DELIVERIES - 1  # the broker counts returns, not deliveries
    assert work["x-dead-letter-exchange"] == "horde.dead"
    assert queue_arguments(released)["x-queue-type"] == "classic"


def test_router_takes_the_model_from_the_annotation() -> None:
    router = BusRouter()

    @router.handler("weights.batch.completed")
    async def on_batch(msg: BatchCompleted, ctx: HandlerContext) -> None:
        return None

    assert router.routes["weights.batch.completed"].model is BatchCompleted


def test_router_refuses_mistakes() -> None:
    router = BusRouter()
    with pytest.raises(ValueError, match="unknown queue"):
        router.handler("weights.nothing")
    with pytest.raises(TypeError, match="not routed"):

        @router.handler("weights.batch.completed")
        async def wrong_model(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
            return None

    with pytest.raises(TypeError, match="async"):

        @router.handler("weights.batch.completed")
        def not_async(msg: BatchCompleted, ctx: HandlerContext) -> None:
            return None

    with pytest.raises(TypeError, match="annotate"):

        @router.handler("weights.batch.completed")
        async def no_annotation(msg, ctx: HandlerContext) -> None:  # type: ignore[no-untyped-def]
            return None


def test_handler_context_without_database() -> None:
    ctx = HandlerContext(queue="q", message_id=uuid.uuid4(), redelivered=False, delivery_count=1)
    with pytest.raises(RuntimeError):
        _ = ctx.session
