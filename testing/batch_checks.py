"""What the job-runner's synthetic-batch tests read back after a shard (rows, receipts, events) and the
short timeouts they run shards with (services/job-runner/tests/test_batch_*.py; docs/synthetic-batch.md)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from horde_common.crypto import verify
from horde_common.db.models import (
    SystemEvent,
)
from horde_common.protocol.miner import Receipt
from horde_job_runner.synthetic.model import BatchTimeouts
from horde_job_runner.synthetic.persistence import BatchStore

AO = "always_on.gpu-24gb"
SPIN = "spin_up-4min.gpu-24gb"
LLM = "always_on.llm.a6000"

# Short windows, so that misbehaving miners run into every limit within seconds.
FAST = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=1.0,
    spin_up={AO: 1.0, SPIN: 1.5, LLM: 1.5},
    job_timeout=2.0,
    persist_backoff=0.01,
)


def free_port() -> int:
    """A TCP port nobody listens on right now (for a miner of the test's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def rows(store: BatchStore, model: Any, batch_id: int) -> list[Any]:
    async with store.sessions() as session:
        return list((await session.scalars(select(model).where(model.batch_id == batch_id))).all())


async def receipts(store: BatchStore, model: Any, job_uuids: Iterable[str]) -> list[Any]:
    wanted = [uuid.UUID(j) for j in job_uuids]
    async with store.sessions() as session:
        return list((await session.scalars(select(model).where(model.job_uuid.in_(wanted)))).all())


async def events(store: BatchStore, batch_id: int) -> list[SystemEvent]:
    async with store.sessions() as session:
        result = await session.scalars(
            select(SystemEvent)
            .where(SystemEvent.data["batch_id"].as_integer() == batch_id)
            .order_by(SystemEvent.id)
        )
        return list(result.all())


def kinds(evs: Iterable[SystemEvent], *, telemetry: bool = False) -> list[tuple[str, str]]:
    return [(e.type, e.subtype) for e in evs if telemetry or e.type != "VALIDATOR_TELEMETRY"]


def by_miner(jobs: Iterable[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for job in jobs:
        out.setdefault(job.miner_hotkey, []).append(job)
    return out


def miner_verifies(receipt: Receipt) -> bool:
    """What a November-2024 miner does: re-parse the JSON it received, re-serialise it with
    `json.dumps(sort_keys=True)` and check the validator's signature; plus our counter-signature."""
    wire = json.loads(receipt.payload.model_dump_json())
    blob = json.dumps(wire, sort_keys=True)
    copy = Receipt.model_validate_json(receipt.model_dump_json())
    return (
        verify(wire["validator_hotkey"], blob, receipt.validator_signature)
        and copy.verify_validator_signature()
        and copy.verify_miner_signature()
    )
