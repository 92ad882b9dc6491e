"""Start-up policy shared by every service: check the configuration first, then wait for dependencies.

Two rules an operator relies on:
- a bad setting (keys included) is found before any I/O — no port bound, no connection opened, no log
  line written — and reported as one `config error: ...` line with exit code 2 (`preflight`);
- an unreachable dependency is retried for ever (an orchestrator expects that), with capped
  exponential backoff and jitter and exactly one concise line per attempt (`Backoff`, `retry_line`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from horde_common.config import MASK, Settings, mask_url

if TYPE_CHECKING:
    from bittensor_core import Keypair

    from horde_common.service.context import ServiceSpec

# First retry soon: in a compose or k8s start the broker and database usually come up within a second
# of the services.
RETRY_FIRST_S = 0.5
# Capped at 6 s so that a dependency that comes back is noticed within 6 s (the service must be ready
# within 10 s of both being reachable), while one that stays down costs ~10 log lines a minute.
RETRY_MAX_S = 6.0
RETRY_FACTOR = 2.0
# Each delay is drawn from [(1 - RETRY_JITTER) * nominal, nominal]: replicas restarted together do not
# retry in lock-step, and with a factor of 2 the delays still never decrease before the cap.
RETRY_JITTER = 0.5
# An error text in a log line or /readyz is cut here: enough for the cause, never a wall of text.
ERROR_TEXT_MAX = 200


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter. Injectable (`ServiceRunner(backoff=...)`) for tests."""

    first_s: float = RETRY_FIRST_S
    max_s: float = RETRY_MAX_S
    factor: float = RETRY_FACTOR
    jitter: float = RETRY_JITTER

    def delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """The delay before each retry, for ever; `rand` returns a float in [0, 1)."""
        nominal = self.first_s
        while True:
            yield nominal * (1.0 - self.jitter * rand())
            nominal = min(nominal * self.factor, self.max_s)


def one_line(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """Collapse whitespace (a log line or probe answer must stay one line) and cut at `limit`."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """`Type: message`, one line, with every secret in `secrets` replaced by the mask."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "TimeoutError: no answer"
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return one_line(text)


def url_secrets(url: str) -> tuple[str, ...]:
    """What must never appear in a line about `url`: its password (the rest of the URL is harmless)."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password,) if password else ()


def retry_line(what: str, target: str, error: str, delay_s: float) -> str:
    """The one line logged per failed attempt, e.g.
    `broker unreachable (amqp://guest:****@127.0.0.1:1/): AMQPConnectionError: ...; retrying in 4.0 s`."""
    return f"{what} unreachable ({mask_url(target)}): {error}; retrying in {delay_s:.1f} s"


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


# Libraries that log their own line for each failed connect; while the runner retries, its one line
# per attempt says it all.
NOISY_CONNECT_LOGGERS = ("aiormq.connection", "aio_pika.robust_connection", "aio_pika.connection")


@contextlib.contextmanager
def quiet_connect_logs() -> Iterator[None]:
    """Silence the libraries' per-attempt connect errors for the duration of one start-up attempt."""
    drop = _DropRecords()
    loggers = [logging.getLogger(name) for name in NOISY_CONNECT_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def preflight(spec: ServiceSpec, settings: Settings) -> Keypair | None:
    """Check what `settings` alone cannot: the keys. Raises `ConfigError`; does no network I/O.

    A set `HOTKEY_SEED` is always checked (a typo must not wait for the first signature to show);
    the wallet itself is required only by services that sign (`spec.needs_hotkey`).
    """
    if not spec.needs_hotkey and settings.HOTKEY_SEED is None:
        return None
    from horde_common.wallet import load_hotkey

    return load_hotkey(settings)
