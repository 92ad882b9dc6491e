"""The retry loop around one chain write (set, commit or reveal), `docs/scoring.md` §2.3.

Every attempt runs under a time limit. A timeout, an unreachable chain or an unexpected error
leaves it uncertain whether the write landed, so before the next attempt the loop asks the caller's
`landed` check (if any): a write that did land is never sent a second time. A chain that answers
and refuses is certain: the refusal is recorded, and the loop either waits what the refusal asks
for (`refusal_wait`, e.g. the rate limit) or the fixed backoff. After the last attempt the loop
records that it gave up. Events carry the reference validator's types, subtypes and data keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from horde_common.chain import ChainError
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service.startup import describe_error

log = structlog.get_logger(__name__)

# The `operation` data value of the reference's retry events.
OPERATION_WRITE: Final = "setting/committing"
OPERATION_REVEAL: Final = "revealing"

EventSink = Callable[[SystemEventType, SystemEventSubtype, str, Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long: `attempts` tries, each cut off after `ttl_s`, `backoff_s` after a
    failure that is not a timeout."""

    attempts: int
    ttl_s: float
    backoff_s: float
    operation: str


@dataclass(frozen=True, slots=True)
class WriteAnswer:
    """What the chain said to one write (the port's `SetWeightsResult`/`CommitResult`/`RevealResult`)."""

    success: bool
    message: str
    block: int | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """`success`: the write is on chain (`answer` says how). `uncertain`: it failed, but the last
    failure was a timeout or an error, so it may have landed all the same."""

    success: bool
    tries: int
    answer: WriteAnswer | None
    uncertain: bool = False


async def retry_chain_write(
    attempt: Callable[[], Awaitable[WriteAnswer]],
    policy: RetryPolicy,
    *,
    record: EventSink,
    error_subtype: SystemEventSubtype,
    error_data: Mapping[str, Any] | None = None,
    landed: Callable[[], Awaitable[bool]] | None = None,
    refusal_wait: Callable[[WriteAnswer], Awaitable[bool]] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> RetryOutcome:
    """Run `attempt` until the chain takes the write or `policy.attempts` tries are used up.

    `error_subtype` is the event of a failed write (`SET_WEIGHTS_ERROR`, ...), with `error_data`
    added to its data. `refusal_wait(answer)` returns True when it already waited (so no backoff).
    """
    failure = SystemEventType.WEIGHT_SETTING_FAILURE
    base = dict(error_data or {})
    uncertain = False
    last: WriteAnswer | None = None
    for try_number in range(policy.attempts):
        if uncertain and landed is not None and await _landed(landed, policy.ttl_s):
            answer = WriteAnswer(True, "an earlier attempt landed after all")
            return RetryOutcome(True, try_number, answer)
        data = {"try_number": try_number, "operation": policy.operation}
        try:
            answer = await asyncio.wait_for(attempt(), policy.ttl_s)
        except TimeoutError:
            uncertain = True
            await record(
                failure,
                SystemEventSubtype.WRITING_TO_CHAIN_TIMEOUT,
                f"{policy.operation}: no answer within {policy.ttl_s:g} s",
                data,
            )
            continue
        except ChainError as exc:
            # The port's "chain down or answered nonsense": the reference's library caught these and
            # returned a failed write, so it is a write error with backoff, not a dispatch error.
            uncertain = True
            last = WriteAnswer(False, str(exc))
            await record(failure, error_subtype, str(exc), {**base, **data})
            await sleep(policy.backoff_s)
            continue
        except Exception as exc:
            uncertain = True
            await record(
                failure, SystemEventSubtype.WRITING_TO_CHAIN_GENERIC_ERROR, describe_error(exc), data
            )
            continue
        if answer.success:
            return RetryOutcome(True, try_number + 1, answer)
        uncertain = False
        last = answer
        await record(failure, error_subtype, answer.message, {**base, **data, "code": answer.code})
        if refusal_wait is None or not await refusal_wait(answer):
            await sleep(policy.backoff_s)
    await record(
        failure,
        SystemEventSubtype.GIVING_UP,
        f"{policy.operation}: gave up after {policy.attempts} attempts",
        {"try_number": policy.attempts, "operation": policy.operation},
    )
    return RetryOutcome(False, policy.attempts, last, uncertain)


async def _landed(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """The caller's check; a chain that cannot answer it counts as "not known to have landed"."""
    try:
        return await asyncio.wait_for(check(), timeout_s)
    except Exception as exc:
        log.warning("could not check whether the write landed", error=describe_error(exc))
        return False
