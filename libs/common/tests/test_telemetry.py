"""Telemetry: JSON logs with masked secrets and trace ids, Prometheus metrics, system event rows."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.db import create_engine, session_factory
from horde_common.db.models import SystemEvent
from horde_common.db.models import SystemEventSubtype as DbSubtype
from horde_common.db.models import SystemEventType as DbType
from horde_common.telemetry import (
    SystemEventRecord,
    SystemEventSubtype,
    SystemEventType,
    configure_logging,
    configure_metrics,
    configure_tracing,
    get_logger,
    get_tracer,
    record_event,
    record_event_detached,
    record_events_bulk,
    render_metrics,
)
from horde_common.telemetry.tracing import _traces_url

SECRETS = ["hunter2", "s3cr3t-pw", "tok-123456", "//Alice-seed", "word1 word2 word3", "amqp-pw"]


@pytest.fixture()
def log_buffer() -> Iterator[io.StringIO]:
    """Route all logging into a buffer for one test, then restore the previous configuration."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging("telemetry-test", "DEBUG", stream=buf)
    yield buf
    structlog.reset_defaults()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_logs_are_json_with_service_level_timestamp_and_trace_ids(log_buffer: io.StringIO) -> None:
    configure_tracing("telemetry-test")
    log = get_logger("t")
    log.info("outside span", answer=42)
    with get_tracer("t").start_as_current_span("work") as span:
        log.warning("inside span")
        ctx = span.get_span_context()
    logging.getLogger("third.party").error("stdlib %s", "line")

    outside, inside, stdlib = _lines(log_buffer)
    for line in (outside, inside, stdlib):
        assert line["service"] == "telemetry-test"
        assert isinstance(line["timestamp"], str) and line["timestamp"].endswith("Z")
    assert outside == outside | {"event": "outside span", "level": "info", "answer": 42}
    assert "trace_id" not in outside
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert (
        stdlib["event"] == "stdlib line" and stdlib["level"] == "error" and stdlib["logger"] == "third.party"
    )


def test_secrets_never_reach_the_logs(log_buffer: io.StringIO) -> None:
    log = get_logger("t")
    log.info(
        "connecting",
        password="hunter2",
        DATABASE_URL="postgresql://horde:s3cr3t-pw@db:5432/horde",
        headers={"Authorization": "Bearer tok-123456", "Accept": "json"},
        HOTKEY_SEED="//Alice-seed",
        nested=[{"wallet_mnemonic": "word1 word2 word3"}],
    )
    log.error("failed to reach amqp://guest:amqp-pw@rabbit:5672/ with Bearer tok-123456")
    logging.getLogger("aio_pika").warning("url=%s", "amqp://guest:amqp-pw@rabbit/")
    try:
        raise ConnectionError("cannot connect to postgresql://horde:s3cr3t-pw@db/horde")
    except ConnectionError:
        log.exception("db down")

    out = log_buffer.getvalue()
    for secret in SECRETS:
        assert secret not in out, secret
    first = _lines(log_buffer)[0]
    assert first["DATABASE_URL"] == "postgresql://horde:**********@db:5432/horde"
    assert first["headers"] == {"Authorization": "**********", "Accept": "json"}
    assert first["password"] == first["HOTKEY_SEED"] == "**********"
    assert "rabbit:5672" in out  # masking keeps the useful part of a URL


def test_presigned_url_signatures_never_reach_the_logs(log_buffer: io.StringIO) -> None:
    """A peer may echo the presigned URL it was given (a miner's error text, an S3 error body)."""
    url = (
        "http://127.0.0.1:9000/horde-answers/solved/x.json?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAFAKE%2F20261202%2Fus-east-1&X-Amz-Signature=deadbeefcafe0123"
    )
    log = get_logger("t")
    log.warning("miner failed", stderr=f"curl: (22) PUT {url} returned 403", data={"url": url})
    log.error(f"upload to {url} refused")
    out = log_buffer.getvalue()
    for secret in ("deadbeefcafe0123", "AKIAFAKE"):
        assert secret not in out, secret
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out  # the harmless parts stay readable


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, from a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


async def test_metrics_render_a_horde_counter_with_its_value(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Not just the default collectors' `# HELP` lines: a horde counter, by name, with its count."""
    configure_metrics("telemetry-test")
    service = f"metrics-test-{uuid.uuid4().hex[:8]}"  # a label no other test touches: exact counts
    labels = {"service": service, "type": "VALIDATOR_TELEMETRY", "subtype": "CHECKPOINT"}
    assert _sample(render_metrics()[0].decode(), "horde_system_events_total", **labels) is None
    events = [SystemEventRecord(SystemEventType.VALIDATOR_TELEMETRY, SystemEventSubtype.CHECKPOINT)] * 2
    async with sessions.begin() as s:
        await record_events_bulk(s, events, service=service)
    body, content_type = render_metrics()
    assert content_type.startswith("text/plain")
    assert _sample(body.decode(), "horde_system_events_total", **labels) == 2.0
    async with sessions.begin() as s:
        await record_event(
            s, SystemEventType.VALIDATOR_TELEMETRY, SystemEventSubtype.CHECKPOINT, service=service
        )
    assert _sample(render_metrics()[0].decode(), "horde_system_events_total", **labels) == 3.0


def test_traces_url_appends_the_signal_path() -> None:
    assert _traces_url("http://otel:4318") == "http://otel:4318/v1/traces"
    assert _traces_url("http://otel:4318/") == "http://otel:4318/v1/traces"
    assert _traces_url("http://otel:4318/v1/traces") == "http://otel:4318/v1/traces"


def test_event_enums_are_one_definition() -> None:
    """The table module and telemetry share one catalogue of event strings (no second copy to drift)."""
    assert DbType is SystemEventType
    assert DbSubtype is SystemEventSubtype
    assert SystemEventSubtype.SPECS_SEND_ERROR == "SPECS_SENDING_ERROR"


# --- system event rows ---------------------------------------------------------------------------


@pytest.fixture()
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    factory = session_factory(engine)
    yield factory
    await engine.dispose()


async def _rows(sessions: async_sessionmaker[AsyncSession], marker: str) -> list[SystemEvent]:
    async with sessions() as s:
        result = await s.scalars(
            select(SystemEvent).where(SystemEvent.data["marker"].astext == marker).order_by(SystemEvent.id)
        )
        return list(result)


async def test_record_event_writes_a_row_in_the_callers_transaction(
    sessions: async_sessionmaker[AsyncSession], log_buffer: io.StringIO
) -> None:
    marker = uuid.uuid4().hex
    job_uuid = uuid.uuid4()
    async with sessions.begin() as s:
        await record_event(
            s,
            SystemEventType.MINER_SYNTHETIC_JOB_FAILURE,
            SystemEventSubtype.MINER_SEND_ERROR,
            "send failed",
            {"marker": marker, "job_uuid": job_uuid, "miner_hotkey": "5Miner"},
            service="job-runner",
        )
    (row,) = await _rows(sessions, marker)
    assert (row.type, row.subtype) == ("MINER_SYNTHETIC_JOB_FAILURE", "MINER_SEND_ERROR")
    assert row.long_description == "send failed"
    assert row.data == {"marker": marker, "job_uuid": str(job_uuid), "miner_hotkey": "5Miner"}
    assert row.service == "job-runner"
    assert row.sent is False and row.timestamp is not None

    configure_metrics("telemetry-test")
    assert "horde_system_events_total" in render_metrics()[0].decode()
    logged = [line for line in _lines(log_buffer) if line["event"] == "system_event"]
    assert logged and logged[-1]["subtype"] == "MINER_SEND_ERROR" and logged[-1]["level"] == "warning"

    async with sessions() as s:  # rolled back with the caller: no row
        await record_event(s, "VALIDATOR_FAILURE", "GENERIC_ERROR", "x", {"marker": marker + "-rb"})
        await s.rollback()
    assert await _rows(sessions, marker + "-rb") == []


async def test_record_events_bulk_and_detached(sessions: async_sessionmaker[AsyncSession]) -> None:
    marker = uuid.uuid4().hex
    events = [
        SystemEventRecord(
            SystemEventType.VALIDATOR_TELEMETRY, SystemEventSubtype.CHECKPOINT, "", {"marker": marker, "i": i}
        )
        for i in range(3)
    ]
    async with sessions.begin() as s:
        assert await record_events_bulk(s, events, service="scheduler") == 3
        assert await record_events_bulk(s, []) == 0
    rows = await _rows(sessions, marker)
    assert [r.data["i"] for r in rows] == [0, 1, 2]
    assert {r.service for r in rows} == {"scheduler"}

    async with sessions() as outer:
        await outer.execute(delete(SystemEvent).where(SystemEvent.data["marker"].astext == marker))
        await record_event_detached(
            sessions,
            SystemEventType.WEIGHT_SETTING_FAILURE,
            SystemEventSubtype.GIVING_UP,
            "",
            {"marker": marker},
        )
        await outer.rollback()
    async with sessions() as s:
        count = await s.scalar(
            select(func.count()).select_from(SystemEvent).where(SystemEvent.data["marker"].astext == marker)
        )
    assert count == 4  # the delete rolled back, the detached event stayed
