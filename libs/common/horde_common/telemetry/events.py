"""System events: the reference validator's operational telemetry rows (`system_events` table).

Every service records what the reference recorded, with the same type/subtype strings, because the
rows are later shipped unchanged to the ComputeHorde stats collector. An event is inserted in the
caller's session, so it commits (or rolls back) with the state it describes; `record_event_detached`
writes through its own transaction for events that must survive a rollback (the reference's second
DB alias). Each event is also logged and counted in a Prometheus counter.

Importing this module is cheap on purpose (the CLI and the debug command import it before their
first miner connect): SQLAlchemy, OpenTelemetry and structlog are imported on first use only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from horde_common.event_types import SystemEventSubtype, SystemEventType

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@cache
def _log() -> Any:
    from horde_common.telemetry.logs import get_logger

    return get_logger("horde.system_events")


@cache
def _events_total() -> Counter:
    # Created on first use, from the OTel API only (not the SDK and the Prometheus exporter that
    # `telemetry.metrics` imports: ~0.3 s the CLI need not pay): through the global proxy provider
    # it reports to whatever provider `configure_metrics` installs, before or after this call.
    from opentelemetry import metrics

    return metrics.get_meter("horde_common.telemetry").create_counter(
        "horde_system_events", unit="1", description="System events recorded, by type and subtype"
    )


# Routine successes are logged at DEBUG so a batch of 2,000 jobs doesn't flood the log.
_QUIET_SUBTYPES = {
    SystemEventSubtype.SUCCESS,
    SystemEventSubtype.CHECKPOINT,
    SystemEventSubtype.SYNTHETIC_JOB,
}


@dataclass(frozen=True)
class SystemEventRecord:
    """One event waiting to be written (batches collect hundreds and write them in one statement)."""

    type: SystemEventType | str
    subtype: SystemEventSubtype | str
    description: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


def _is_problem(type_: str, subtype: str) -> bool:
    return any(
        word in f"{type_}/{subtype}" for word in ("FAILURE", "ERROR", "WARNING", "GIVING_UP", "OVERSLEPT")
    )


def _row(event: SystemEventRecord, service: str) -> dict[str, Any]:
    from pydantic_core import to_jsonable_python

    data = to_jsonable_python(dict(event.data), fallback=str)
    return {
        "type": str(event.type),
        "subtype": str(event.subtype),
        "long_description": event.description,
        "data": data,
        "timestamp": event.timestamp,
        "service": service,
    }


def _model() -> Any:
    # Imported late: horde_common.db.models imports every domain model; telemetry must stay importable
    # (and cheap) for code that only logs.
    from horde_common.db.models import SystemEvent

    return SystemEvent


def _emit(row: dict[str, Any]) -> None:
    _events_total().add(1, {"type": row["type"], "subtype": row["subtype"], "service": row["service"]})
    level = logging.WARNING if _is_problem(row["type"], row["subtype"]) else logging.INFO
    if row["subtype"] in _QUIET_SUBTYPES:
        level = logging.DEBUG
    _log().log(
        level,
        "system_event",
        type=row["type"],
        subtype=row["subtype"],
        description=row["long_description"],
        data=row["data"],
    )


def _emit_summary(rows: list[dict[str, Any]]) -> None:
    """One log line per (type, subtype) with its count and first example, instead of one per event:
    a shard of 2,000 wrong answers otherwise spends most of its persist CPU formatting 2,000 lines
    (the rows themselves all stay in `system_events`). The counter still counts every event."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["type"], row["subtype"], row["service"]), []).append(row)
    for (type_, subtype, service), group in groups.items():
        _events_total().add(len(group), {"type": type_, "subtype": subtype, "service": service})
        level = logging.WARNING if _is_problem(type_, subtype) else logging.INFO
        if subtype in _QUIET_SUBTYPES:
            level = logging.DEBUG
        first = group[0]
        _log().log(
            level,
            "system_events",
            type=type_,
            subtype=subtype,
            count=len(group),
            description=first["long_description"],
            data=first["data"],
        )


def event_rows(events: Iterable[SystemEventRecord], *, service: str | None = None) -> list[dict[str, Any]]:
    """The `system_events` rows of `events` (JSON-ready `data`), for callers that write them in bulk."""
    from horde_common.telemetry.logs import current_service

    svc = service or current_service()
    return [_row(e, svc) for e in events]


def emit_events(rows: list[dict[str, Any]], *, summary: bool = False) -> None:
    """Log and count rows written by the caller: one line each, or one per (type, subtype)."""
    if summary:
        _emit_summary(rows)
    else:
        for row in rows:
            _emit(row)


async def record_events_bulk(
    session: AsyncSession,
    events: Iterable[SystemEventRecord],
    *,
    service: str | None = None,
    summary_log: bool = False,
) -> int:
    """Insert `events` in the caller's transaction with one statement; returns how many were written.

    `summary_log`: log one line per (type, subtype) instead of one per event (bulk writers)."""
    rows = event_rows(events, service=service)
    if not rows:
        return 0
    from sqlalchemy import insert

    await session.execute(insert(_model()), rows)
    emit_events(rows, summary=summary_log)
    return len(rows)


async def record_event(
    session: AsyncSession,
    type: SystemEventType | str,
    subtype: SystemEventSubtype | str,
    description: str = "",
    data: Mapping[str, Any] | None = None,
    *,
    service: str | None = None,
) -> None:
    """Insert one event in the caller's transaction (it commits with the caller's work)."""
    await record_events_bulk(
        session, [SystemEventRecord(type, subtype, description, data or {})], service=service
    )


async def record_event_detached(
    sessions: async_sessionmaker[AsyncSession],
    type: SystemEventType | str,
    subtype: SystemEventSubtype | str,
    description: str = "",
    data: Mapping[str, Any] | None = None,
    *,
    service: str | None = None,
) -> None:
    """Insert and commit one event in its own transaction, so a rollback of the caller keeps it."""
    async with sessions.begin() as session:
        await record_event(session, type, subtype, description, data, service=service)
