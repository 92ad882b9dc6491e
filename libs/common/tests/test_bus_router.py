"""What a handler declares it publishes, and the per-instance dependencies a bound router hands it.

No servers: the routes are called as the consumer calls them, with a hand-built `HandlerContext`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from horde_common.bus.messages import (
    BatchCompleted,
    BatchReleased,
    BatchShardCompleted,
    BusMessage,
)
from horde_common.bus.router import (
    BusRouter,
    Dependencies,
    HandlerContext,
    UndeclaredMessageError,
    check_publishes,
)
from horde_common.config import load_settings
from horde_common.service import Dependency, ServiceContext, ServiceSpec, open_dependencies

SHARD_COMPLETED = BatchShardCompleted(batch_id=1, shard_index=0, job_count=0, ok=True)


def _ctx(queue: str = "scheduler.batch.shard.completed") -> HandlerContext:
    return HandlerContext(queue=queue, message_id=uuid.uuid4(), redelivered=False, delivery_count=1)


def test_publishes_must_agree_with_the_return_annotation() -> None:
    router = BusRouter()
    with pytest.raises(TypeError, match="annotated to return no message"):

        @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,))
        async def returns_none(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
            return None

    with pytest.raises(TypeError, match="declare them"):

        @router.handler("scheduler.batch.shard.completed")
        async def undeclared(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted:
            raise NotImplementedError

    with pytest.raises(TypeError, match="admits"):

        @router.handler("scheduler.batch.shard.completed", publishes=(BatchReleased,))
        async def other_type(msg: BatchShardCompleted, ctx: HandlerContext) -> list[BatchCompleted]:
            raise NotImplementedError

    with pytest.raises(TypeError, match="does not declare"):

        @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,))
        async def half(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted | BatchReleased:
            raise NotImplementedError

    with pytest.raises(TypeError, match="annotate the return"):

        @router.handler("scheduler.batch.shard.completed")
        async def unannotated(msg: BatchShardCompleted, ctx: HandlerContext):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(TypeError, match="not a BusMessage type"):

        @router.handler("scheduler.batch.shard.completed", publishes=(BusMessage,))
        async def base_type(msg: BatchShardCompleted, ctx: HandlerContext) -> list[BusMessage]:
            raise NotImplementedError

    assert router.routes == {}


def test_accepted_declarations_are_kept_on_the_route() -> None:
    async def optional(msg: BatchShardCompleted, ctx: HandlerContext) -> BatchCompleted | None:
        return None

    async def any_message(msg: BatchShardCompleted, ctx: HandlerContext) -> list[BusMessage]:
        return []

    check_publishes(optional, (BatchCompleted,))
    check_publishes(any_message, (BatchCompleted, BatchReleased))
    router = BusRouter()
    router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,))(optional)
    route = router.routes["scheduler.batch.shard.completed"]
    assert route.publishes == (BatchCompleted,)
    assert route.handler_name.endswith("optional")


async def test_a_returned_message_that_is_not_declared_fails_the_delivery() -> None:
    router = BusRouter()
    out: list[BusMessage] = []

    @router.handler("scheduler.batch.shard.completed", publishes=(BatchCompleted,))
    async def on_shard(msg: BatchShardCompleted, ctx: HandlerContext) -> list[BusMessage]:
        return out

    route = router.routes["scheduler.batch.shard.completed"]
    out[:] = [BatchCompleted(batch_id=1, cycle_start=0, cycle_stop=1)]
    assert await route.fn(SHARD_COMPLETED, _ctx()) == out  # declared: returned as is
    out[:] = [BatchReleased(batch_id=1, released_at=SHARD_COMPLETED.sent_at)]
    with pytest.raises(UndeclaredMessageError, match=r"on_shard .* returned BatchReleased"):
        await route.fn(SHARD_COMPLETED, _ctx())
    # Called directly (as tests do), the handler is the undecorated function.
    assert await on_shard(SHARD_COMPLETED, _ctx()) == out


@dataclass
class Counter:
    """A per-instance object: each service instance counts its own deliveries."""

    seen: list[int] = field(default_factory=list)


async def test_a_bound_router_hands_each_instance_its_own_dependencies() -> None:
    router = BusRouter()

    @router.handler("scheduler.batch.shard.completed", publishes=())
    async def on_shard(msg: BatchShardCompleted, ctx: HandlerContext) -> None:
        ctx.dependency(Counter).seen.append(msg.batch_id)

    first, second = Counter(), Counter()
    bound_first, bound_second = router.bind(Dependencies(first)), router.bind(Dependencies(second))
    queue = "scheduler.batch.shard.completed"
    await bound_first.routes[queue].fn(SHARD_COMPLETED, _ctx())
    await bound_first.routes[queue].fn(SHARD_COMPLETED, _ctx())
    await bound_second.routes[queue].fn(SHARD_COMPLETED, _ctx())
    assert (first.seen, second.seen) == ([1, 1], [1])
    with pytest.raises(LookupError, match="no Counter"):  # the module-level router holds nothing
        await router.routes[queue].fn(SHARD_COMPLETED, _ctx())
    assert bound_first.routes[queue].publishes == ()


def test_dependencies_are_typed_and_unique() -> None:
    counter = Counter()
    deps = Dependencies(counter)
    assert deps.get(Counter) is counter
    assert deps.find(int) is None
    assert Counter in deps and len(deps) == 1
    with pytest.raises(ValueError, match="already"):
        deps.add(Counter, Counter())
    with pytest.raises(TypeError):
        deps.add(str, 3)  # type: ignore[arg-type]
    with pytest.raises(LookupError, match="has: Counter"):
        deps.get(str)


async def test_open_dependencies_builds_per_context_and_tears_down_in_reverse() -> None:
    log: list[str] = []

    @asynccontextmanager
    async def open_counter(ctx: ServiceContext) -> AsyncIterator[Counter]:
        log.append(f"open counter {ctx.name}")
        yield Counter()
        log.append(f"close counter {ctx.name}")

    @asynccontextmanager
    async def open_label(ctx: ServiceContext) -> AsyncIterator[str]:
        assert ctx.dependency(Counter) is not None  # the earlier one is already there
        log.append("open label")
        yield ctx.name
        log.append("close label")

    spec = ServiceSpec(
        name="weights",
        port=0,
        needs_db=False,
        needs_broker=False,
        dependencies=[Dependency(Counter, open_counter), Dependency(str, open_label)],
    )
    settings = load_settings()
    one, two = ServiceContext(spec=spec, settings=settings), ServiceContext(spec=spec, settings=settings)
    async with open_dependencies(one), open_dependencies(two):
        assert one.dependency(Counter) is not two.dependency(Counter)
        assert one.dependency(str) == "weights"
    assert len(one.dependencies) == len(two.dependencies) == 0
    assert log[-4:] == ["close label", "close counter weights", "close label", "close counter weights"]
