"""RabbitMQ fixtures: fresh vhosts, a channel on an emptied topology, and brokers stopped at the end."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.broker import Broker

RABBITMQCTL_TIMEOUT_S = 60.0  # rabbitmqctl answers in about a second; a minute means it hangs


def add_vhost(vhost: str) -> None:
    """Create `vhost` with full permissions for the guest user."""
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run(
            ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=RABBITMQCTL_TIMEOUT_S
        )


def delete_vhost(vhost: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", "delete_vhost", vhost],
        check=False,
        capture_output=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
    )


def _vhost(amqp_url: str) -> Iterator[str]:
    base = amqp_url.rsplit("/", 1)[0]
    vhost = f"horde_test_{uuid.uuid4().hex[:8]}"
    add_vhost(vhost)
    yield f"{base}/{vhost}"
    delete_vhost(vhost)


@pytest.fixture()
def vhost_url(amqp_url: str) -> Iterator[str]:
    """A vhost of this test alone (on the session's server): no other test's messages in its queues."""
    yield from _vhost(amqp_url)


@pytest.fixture(scope="module")
def module_vhost_url(amqp_url: str) -> Iterator[str]:
    """A vhost shared by this module's tests only (creating one takes rabbitmqctl a second or two)."""
    yield from _vhost(amqp_url)


@pytest.fixture()
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain channel for inspecting queues; every queue (and the dead letters) starts empty."""
    import aio_pika

    from horde_common.bus.topology import DEAD_LETTER_QUEUE, declare_topology

    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    for queue in (await declare_topology(ch)).values():
        await queue.purge()
    await (await ch.get_queue(DEAD_LETTER_QUEUE)).purge()
    yield ch
    await conn.close()


@pytest.fixture()
async def make_broker(
    amqp_url: str, sf: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Callable[..., Broker]]:
    """Factory of brokers on the session's vhost (with the outbox on `sf` unless `db=False`), all
    stopped at the end of the test."""
    made: list[Broker] = []

    def make(service: str = "test", *, db: bool = True, **kwargs: Any) -> Broker:
        kwargs.setdefault("retry_delay_s", 0.005)
        broker = Broker(amqp_url, service=service, session_factory=sf if db else None, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.stop(grace_s=0)
