"""The three receipts of a synthetic job (spec A §2.4): build, sign, and turn into stored rows.

The validator signs `canonical_json(payload in JSON mode)` with its hotkey; the protocol models
(`horde_common.protocol.miner.receipts`) own that blob (`blob_for_signing`), and it is what a miner
re-serialises and verifies. Our stored copies have `miner_signature = NULL` (§2.4.5).

Three receipts per job are built on the event loop, so they skip the models' per-call overhead:
the payload is `model_construct`ed from values we made ourselves (nothing to validate), and the
blob is `canonical_json` of the same JSON-mode dict `blob_for_signing` would produce, written out
directly (`tests/test_receipts_fast.py` holds the two byte for byte equal for every receipt type).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from horde_common.crypto import canonical_json, wire_datetime
from horde_common.protocol.miner.executor_class import (
    MAX_EXECUTOR_TIMEOUT,
    ExecutorClass,
    job_spin_up_time,
)
from horde_common.protocol.miner.receipts import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
)

__all__ = [
    "ACCEPTED_RECEIPT_TTL",
    "accepted_receipt",
    "accepted_row",
    "finished_receipt",
    "finished_row",
    "started_receipt",
    "started_row",
]

Signer = Callable[[str], str]

# The JobAccepted receipt's ttl: fixed at MAX_EXECUTOR_TIMEOUT (360) in the reference [quirk 7]. Kept:
# miners store it, and the value has no effect on the batch.
ACCEPTED_RECEIPT_TTL = MAX_EXECUTOR_TIMEOUT


def started_receipt(
    sign: Signer,
    *,
    job_uuid: str,
    miner_hotkey: str,
    validator_hotkey: str,
    executor_class: ExecutorClass,
    max_timeout: int,
    now: datetime,
) -> tuple[JobStartedReceiptPayload, str]:
    """The JobStarted receipt embedded in `V0InitialJobRequest`; `ttl = max(spin-up, 2)` of the class."""
    fields = {
        "job_uuid": job_uuid,
        "miner_hotkey": miner_hotkey,
        "validator_hotkey": validator_hotkey,
        "timestamp": now,
        "executor_class": ExecutorClass(executor_class),
        "max_timeout": int(max_timeout),
        "is_organic": False,
        "ttl": job_spin_up_time(executor_class),
    }
    payload = JobStartedReceiptPayload.model_construct(**fields)  # type: ignore[arg-type]
    return payload, sign(_blob("JobStartedReceipt", fields))


def accepted_receipt(
    sign: Signer,
    *,
    job_uuid: str,
    miner_hotkey: str,
    validator_hotkey: str,
    time_accepted: datetime,
    now: datetime,
) -> tuple[JobAcceptedReceiptPayload, str]:
    """`time_accepted` is when the validator received the accept (spec A §2.4.2)."""
    fields = {
        "job_uuid": job_uuid,
        "miner_hotkey": miner_hotkey,
        "validator_hotkey": validator_hotkey,
        "timestamp": now,
        "time_accepted": time_accepted,
        "ttl": ACCEPTED_RECEIPT_TTL,
    }
    payload = JobAcceptedReceiptPayload.model_construct(**fields)  # type: ignore[arg-type]
    return payload, sign(_blob("JobAcceptedReceipt", fields))


def finished_receipt(
    sign: Signer,
    *,
    job_uuid: str,
    miner_hotkey: str,
    validator_hotkey: str,
    time_started: datetime,
    time_took_us: int,
    score_str: str,
    now: datetime,
) -> tuple[JobFinishedReceiptPayload, str]:
    fields = {
        "job_uuid": job_uuid,
        "miner_hotkey": miner_hotkey,
        "validator_hotkey": validator_hotkey,
        "timestamp": now,
        "time_started": time_started,
        "time_took_us": int(time_took_us),
        "score_str": score_str,
    }
    payload = JobFinishedReceiptPayload.model_construct(**fields)  # type: ignore[arg-type]
    return payload, sign(_blob("JobFinishedReceipt", fields))


def _blob(receipt_type: str, fields: dict[str, Any]) -> str:
    """`payload.blob_for_signing()` without the model: the JSON-mode dict (datetimes through
    `wire_datetime`, enums as their values), `receipt_type` included, in canonical JSON."""
    json_mode: dict[str, Any] = {"receipt_type": receipt_type}
    for key, value in fields.items():
        if isinstance(value, datetime):
            value = wire_datetime(value)
        elif isinstance(value, ExecutorClass):
            value = value.value
        json_mode[key] = value
    return canonical_json(json_mode)


def _common(payload: Any, signature: str) -> dict[str, Any]:
    return {
        "job_uuid": uuid.UUID(payload.job_uuid),
        "validator_hotkey": payload.validator_hotkey,
        "miner_hotkey": payload.miner_hotkey,
        "validator_signature": signature,
        "miner_signature": None,
        "timestamp": payload.timestamp,
    }


def started_row(payload: JobStartedReceiptPayload, signature: str) -> dict[str, Any]:
    return {
        **_common(payload, signature),
        "executor_class": str(payload.executor_class),
        "max_timeout": payload.max_timeout,
        "is_organic": payload.is_organic,
        "ttl": payload.ttl,
    }


def accepted_row(payload: JobAcceptedReceiptPayload, signature: str) -> dict[str, Any]:
    return {**_common(payload, signature), "time_accepted": payload.time_accepted, "ttl": payload.ttl}


def finished_row(payload: JobFinishedReceiptPayload, signature: str) -> dict[str, Any]:
    return {
        **_common(payload, signature),
        "time_started": payload.time_started,
        "time_took_us": payload.time_took_us,
        "score_str": payload.score_str,
    }
