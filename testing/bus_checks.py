"""Waiting on the bus in tests: settle outcomes, consumed messages, queue depths and processed-message
rows (libs/common/tests/test_bus*.py). Every wait has a timeout."""

from __future__ import annotations

import asyncio
import uuid

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker, Outcome
from horde_common.db.models.bus import ProcessedMessage

T = 15.0  # generous timeout of every wait; tests normally finish in milliseconds


def outcomes(broker: Broker) -> asyncio.Queue[tuple[str, str | None, Outcome]]:
    """Every settlement of `broker`'s deliveries, as (queue, message id, outcome)."""
    q: asyncio.Queue[tuple[str, str | None, Outcome]] = asyncio.Queue()
    broker.settle_listeners.append(lambda *a: q.put_nowait(a))
    return q


async def next_outcome(q: asyncio.Queue[tuple[str, str | None, Outcome]]) -> Outcome:
    return (await asyncio.wait_for(q.get(), T))[2]


async def collect(channel: AbstractChannel, queue: str) -> asyncio.Queue[AbstractIncomingMessage]:
    """Consume (and ack) everything `queue` gets from now on, into the returned queue."""
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        got.put_nowait(message)

    await (await channel.get_queue(queue)).consume(on_message)
    return got


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0


async def processed_rows(sf: async_sessionmaker[AsyncSession], message_id: uuid.UUID) -> int:
    async with sf() as s:
        return (
            await s.scalar(
                select(func.count())
                .select_from(ProcessedMessage)
                .where(ProcessedMessage.message_id == message_id)
            )
            or 0
        )
