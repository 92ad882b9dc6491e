"""How a delivery is settled: the pure ack/nack/reject decision of the consumer (no I/O).

The consumer (`horde_common.bus.consumer`) reports what became of a delivery, a `DeliveryResult`,
and `decide()` says how to settle it with RabbitMQ. Kept free of aio-pika, the database and the
clock so that every branch is a row in a table test (`libs/common/tests/test_bus_ack_decision.py`).

The policy, branch by branch:
- handler done ("processed", "staged" = it also wrote outbox rows) or an already-processed
  "duplicate": ack;
- body that does not parse ("unparseable"): reject without requeue, straight to the dead-letter
  queue, since redelivering cannot fix a body (on quorum queues too: the death reason is "rejected");
- handler raised ("failed") with deliveries left: nack with requeue after an exponential backoff,
  so a DB blip does not burn every delivery within milliseconds; a shutdown in progress skips the
  backoff (the message goes back at once for another replica or the restart);
- handler raised on the last allowed delivery: on a quorum queue nack with requeue, which exceeds
  the queue's `x-delivery-limit` so RabbitMQ dead-letters it (death reason "delivery_limit"); a
  classic queue has no such limit, so reject without requeue.
Every handler exception counts as retryable: the code makes no retryable/permanent distinction, the
delivery limit bounds a poison message instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from horde_common.bus.topology import CLASSIC_MAX_DELIVERIES, MAX_DELIVERIES

# What became of a delivery, as reported to settle listeners (metrics, tests): acked after commit
# ("processed"; "staged" = it also wrote outbox rows), acked as an already-processed "duplicate",
# nacked for a later "requeued" attempt, "dead-lettered", or "lost" (the channel died before the
# ack/nack reached RabbitMQ, which will redeliver it).
Outcome = Literal["processed", "staged", "duplicate", "requeued", "dead-lettered", "lost"]

# What the consumer saw: the handler's successful outcomes, a handler exception, or a bad body.
DeliveryResult = Literal["processed", "staged", "duplicate", "failed", "unparseable"]


@dataclass(frozen=True)
class Ack:
    """Acknowledge: the delivery is done (its transaction, if any, has committed)."""

    outcome: Literal["processed", "staged", "duplicate"]


@dataclass(frozen=True)
class Nack:
    """Negative-acknowledge, after waiting `backoff_s` (cut short by a shutdown)."""

    requeue: bool
    outcome: Literal["requeued", "dead-lettered"]
    backoff_s: float = 0.0


@dataclass(frozen=True)
class Reject:
    """Reject without requeue: RabbitMQ dead-letters the message at once."""

    outcome: Literal["dead-lettered"] = "dead-lettered"


Decision: TypeAlias = Ack | Nack | Reject


def delivery_limit(quorum: bool) -> int:
    """How many deliveries a queue allows: quorum queues count them, classic ones only flag a redelivery."""
    return MAX_DELIVERIES if quorum else CLASSIC_MAX_DELIVERIES


def delivery_count(quorum: bool, headers: Mapping[str, Any], redelivered: bool | None) -> int:
    """Which delivery of the message this is, 1 on the first.

    A quorum queue counts earlier returns in `x-delivery-count`; a classic queue only says whether
    the message was delivered before, so any redelivery counts as the second.
    """
    if quorum:
        return int(headers.get("x-delivery-count") or 0) + 1
    return 2 if redelivered else 1


def retry_backoff_s(delivery: int, base_s: float, cap_s: float) -> float:
    """The wait before requeueing a failed delivery: `base_s` doubled per earlier delivery, capped."""
    return min(base_s * 2 ** (delivery - 1), cap_s)


def decide(
    result: DeliveryResult,
    *,
    delivery: int,
    quorum: bool,
    stopping: bool = False,
    retry_delay_s: float = 0.5,
    max_retry_delay_s: float = 10.0,
) -> Decision:
    """How to settle a delivery whose handling ended in `result` (see the module docstring)."""
    if result in ("processed", "staged", "duplicate"):
        return Ack(result)
    if result == "unparseable":
        return Reject()
    # result == "failed"
    if delivery >= delivery_limit(quorum):
        return Nack(requeue=True, outcome="dead-lettered") if quorum else Reject()
    backoff = 0.0 if stopping else retry_backoff_s(delivery, retry_delay_s, max_retry_delay_s)
    return Nack(requeue=True, outcome="requeued", backoff_s=backoff)


__all__ = [
    "Ack",
    "Decision",
    "DeliveryResult",
    "Nack",
    "Outcome",
    "Reject",
    "decide",
    "delivery_count",
    "delivery_limit",
    "retry_backoff_s",
]
