"""Pruning keeps what is still needed: recent rows and every unpublished outbox row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from horde_common.db import create_engine, session_factory
from horde_common.db.models import JobStartedReceipt, OutboxMessage, ProcessedMessage
from horde_common.db.retention import prune_bus_tables, prune_receipts

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _receipt(age: timedelta) -> JobStartedReceipt:
    return JobStartedReceipt(
        job_uuid=uuid.uuid4(),
        validator_hotkey="5V",
        miner_hotkey="5M",
        validator_signature="0x00",
        timestamp=NOW - age,
        max_timeout=53,
        ttl=240,
    )


async def test_prune(make_database) -> None:  # type: ignore[no-untyped-def]
    from horde_common.db.migrate import upgrade

    url = make_database()
    upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    queue = "retention-test"
    try:
        async with sessions.begin() as s:
            s.add_all(
                [
                    ProcessedMessage(
                        queue=queue, message_id=uuid.uuid4(), processed_at=NOW - timedelta(days=8)
                    ),
                    ProcessedMessage(
                        queue=queue, message_id=uuid.uuid4(), processed_at=NOW - timedelta(days=1)
                    ),
                    OutboxMessage(
                        message_id=uuid.uuid4(),
                        routing_key="k",
                        body={},
                        headers={},
                        created_at=NOW - timedelta(days=9),
                        published_at=NOW - timedelta(days=2),
                    ),
                    OutboxMessage(
                        message_id=uuid.uuid4(),
                        routing_key="k",
                        body={},
                        headers={},
                        created_at=NOW - timedelta(days=9),
                        published_at=None,
                    ),
                    _receipt(timedelta(days=3)),
                    _receipt(timedelta(hours=1)),
                ]
            )
        async with sessions.begin() as s:
            assert await prune_bus_tables(s, NOW) == {"processed_messages": 1, "outbox": 1}
            receipts = await prune_receipts(s, NOW)
            assert receipts["job_started_receipts"] == 1
        async with sessions() as s:
            assert await s.scalar(select(func.count()).select_from(ProcessedMessage)) == 1
            unpublished = (await s.execute(select(OutboxMessage))).scalars().all()
            assert [m.published_at for m in unpublished] == [None], "unpublished rows are never pruned"
            assert await s.scalar(select(func.count()).select_from(JobStartedReceipt)) == 1
    finally:
        await engine.dispose()
