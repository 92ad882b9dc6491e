"""Structured JSON logs for every service, with secrets masked before anything is written.

One line of JSON per record on stdout (the container runtime collects it). structlog and the stdlib
`logging` module (uvicorn, aio_pika, sqlalchemy, alembic) share one pipeline, so third-party lines get
the same fields — timestamp, level, service, event, trace ids — and the same secret masking.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import IO, Any

import structlog
from opentelemetry import trace
from pydantic import SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from horde_common.config import MASK, mask_query_secrets, mask_url

# A key that *contains* one of these words holds a secret (`DATABASE_PASSWORD`, `hotkey_seed`, ...).
SECRET_KEY_WORDS = ("password", "passwd", "secret", "token", "seed", "mnemonic", "authorization", "api_key")

# `scheme://user:password@host` anywhere inside a string (a URL in a message or an exception text).
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:[^\s@/]*@[^\s]*")
# `Bearer <token>` inside a free-text string (a header echoed into an error message).
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+")

_MAX_DEPTH = 8

_state: dict[str, str] = {"service": "horde"}


def current_service() -> str:
    """The service name given to the last `configure_logging` call (used to tag system events)."""
    return _state["service"]


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(word in key.lower() for word in SECRET_KEY_WORDS)


def mask_text(text: str) -> str:
    """Mask URL passwords, presigned-URL signatures and bearer tokens inside free text."""
    if "://" in text:
        text = _URL_WITH_PASSWORD.sub(lambda m: mask_url(m.group(0)), text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, mask_query_secrets(text))


def mask_value(value: Any, depth: int = 0) -> Any:
    """Return `value` with every secret inside it masked (dicts by key name, strings by content)."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {
            k: (MASK if is_secret_key(k) and v not in (None, "") else mask_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_value(v, depth + 1) for v in value]
    return value


def mask_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last word before rendering, so no secret reaches any output."""
    return mask_value(event_dict)  # type: ignore[no-any-return]


def add_trace_ids(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Add the active OpenTelemetry span's ids so a log line can be found from its trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def _add_service(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("service", _state["service"])
    return event_dict


def _stringify_event(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event = event_dict.get("event")
    if event is not None and not isinstance(event, str):
        event_dict["event"] = str(event)
    return event_dict


def _drop_color_message(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    # uvicorn puts an ANSI-coloured duplicate of its message into `extra`.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_service,
        add_trace_ids,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _stringify_event,
    ]


def configure_logging(service: str, level: str | int = "INFO", *, stream: IO[str] | None = None) -> None:
    """Send every log record (structlog and stdlib) as masked JSON lines to `stream` (default stdout).

    Idempotent: a second call replaces the handler, so tests can redirect output to a buffer.
    """
    _state["service"] = service
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        numeric = logging.INFO

    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            mask_secrets,
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(formatter)
    handler.set_name("horde-json")

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries that install their own handlers must go through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aio_pika", "aiormq", "alembic"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    # Chatty at INFO, useless to an operator.
    for name in ("aiormq.connection", "aio_pika.robust_connection", "uvicorn.access"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger (`log.info("event", key=value)`)."""
    return structlog.stdlib.get_logger(name, **initial)


def bind_context(**values: Any) -> None:
    """Bind values (batch_uuid, job_uuid, ...) to every log line of the current task."""
    structlog.contextvars.bind_contextvars(**values)


def unbind_context(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)


def masked(mapping: MutableMapping[str, Any] | Mapping[str, Any]) -> dict[str, Any]:
    """A masked copy of `mapping`, for anything that shows data outside logs (debug views, errors)."""
    return dict(mask_value(dict(mapping)))
