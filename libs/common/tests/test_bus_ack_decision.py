"""The consumer's settle policy as a table: every branch of `ack.decide` and its helpers, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from horde_common.bus.ack import (
    Ack,
    Decision,
    DeliveryResult,
    Nack,
    Reject,
    decide,
    delivery_count,
    delivery_limit,
    retry_backoff_s,
)
from horde_common.bus.topology import CLASSIC_MAX_DELIVERIES, MAX_DELIVERIES

BASE, CAP = 0.5, 10.0  # the Broker's default retry delays

# (result, delivery, quorum, stopping) -> decision
CASES: list[tuple[DeliveryResult, int, bool, bool, Decision]] = [
    # Handler done or already done: ack, whatever the delivery count, queue kind or shutdown.
    ("processed", 1, True, False, Ack("processed")),
    ("processed", MAX_DELIVERIES, True, True, Ack("processed")),
    ("staged", 1, True, False, Ack("staged")),
    ("staged", 2, False, False, Ack("staged")),
    ("duplicate", 3, True, False, Ack("duplicate")),
    ("duplicate", 1, False, True, Ack("duplicate")),
    # A body that does not parse: rejected at once, on quorum and classic queues alike.
    ("unparseable", 1, True, False, Reject()),
    ("unparseable", 1, False, False, Reject()),
    ("unparseable", MAX_DELIVERIES, True, True, Reject()),
    # Handler raised with deliveries left: requeue after the doubling backoff.
    ("failed", 1, True, False, Nack(requeue=True, outcome="requeued", backoff_s=0.5)),
    ("failed", 2, True, False, Nack(requeue=True, outcome="requeued", backoff_s=1.0)),
    ("failed", MAX_DELIVERIES - 1, True, False, Nack(requeue=True, outcome="requeued", backoff_s=4.0)),
    ("failed", 1, False, False, Nack(requeue=True, outcome="requeued", backoff_s=0.5)),
    # ... but no backoff once the service is shutting down.
    ("failed", 1, True, True, Nack(requeue=True, outcome="requeued", backoff_s=0.0)),
    ("failed", 1, False, True, Nack(requeue=True, outcome="requeued", backoff_s=0.0)),
    # Handler raised on the last delivery: quorum queues dead-letter through their delivery limit
    # (a requeueing nack, no backoff), classic queues by a reject.
    ("failed", MAX_DELIVERIES, True, False, Nack(requeue=True, outcome="dead-lettered")),
    ("failed", MAX_DELIVERIES + 1, True, False, Nack(requeue=True, outcome="dead-lettered")),
    ("failed", MAX_DELIVERIES, True, True, Nack(requeue=True, outcome="dead-lettered")),
    ("failed", CLASSIC_MAX_DELIVERIES, False, False, Reject()),
    ("failed", CLASSIC_MAX_DELIVERIES, False, True, Reject()),
]


@pytest.mark.parametrize(("result", "delivery", "quorum", "stopping", "expected"), CASES)
def test_decide(
    result: DeliveryResult, delivery: int, quorum: bool, stopping: bool, expected: Decision
) -> None:
    got = decide(
        result,
        delivery=delivery,
        quorum=quorum,
        stopping=stopping,
        retry_delay_s=BASE,
        max_retry_delay_s=CAP,
    )
    assert got == expected


def test_every_result_is_in_the_table() -> None:
    assert {c[0] for c in CASES} == {"processed", "staged", "duplicate", "failed", "unparseable"}


def test_backoff_is_capped_on_a_long_delivery_limit() -> None:
    got = decide("failed", delivery=3, quorum=True, retry_delay_s=4.0, max_retry_delay_s=10.0)
    assert got == Nack(requeue=True, outcome="requeued", backoff_s=10.0)


@pytest.mark.parametrize(
    ("delivery", "base", "cap", "expected"),
    [
        (1, 0.5, 10.0, 0.5),
        (2, 0.5, 10.0, 1.0),
        (5, 0.5, 10.0, 8.0),
        (6, 0.5, 10.0, 10.0),
        (3, 0.0, 10.0, 0.0),
    ],
)
def test_retry_backoff_doubles_up_to_the_cap(delivery: int, base: float, cap: float, expected: float) -> None:
    assert retry_backoff_s(delivery, base, cap) == expected


@pytest.mark.parametrize(
    ("quorum", "headers", "redelivered", "expected"),
    [
        (True, {}, False, 1),
        (True, {"x-delivery-count": None}, True, 1),
        (True, {"x-delivery-count": 0}, True, 1),
        (True, {"x-delivery-count": 3}, True, 4),
        (False, {}, False, 1),
        (False, {}, None, 1),
        (False, {"x-delivery-count": 3}, True, 2),  # classic queues have no counter: header ignored
    ],
)
def test_delivery_count(
    quorum: bool, headers: dict[str, Any], redelivered: bool | None, expected: int
) -> None:
    assert delivery_count(quorum, headers, redelivered) == expected


def test_delivery_limit() -> None:
    assert delivery_limit(True) == MAX_DELIVERIES
    assert delivery_limit(False) == CLASSIC_MAX_DELIVERIES
