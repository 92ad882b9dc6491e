"""The three receipts of a synthetic job (docs/miner-protocol.md §2.4): build, sign, and turn into stored
rows.

The validator signs `canonical_json(payload in JSON mode)` with its hotkey; the protocol models
(`horde_common.protocol.miner.receipts`) own that blob (`blob_for_signing`), and it is what a miner
re-serialises and verifies. Our stored copies have `miner_signature = NULL` (§2.4.5).

Three receipts per job are built on the event loop, so they skip the models' per-call overhead:
the payload is `model_construct`ed from values we made ourselves (nothing to validate), and the
blob is `canonical_json` of the same JSON-mode dict `blob_for_signing` would produce, written out
directly (`wire_frames.canonical_flat_json`; `tests/test_receipts_fast.py` and
`tests/test_wire_frames.py` hold the two byte for byte equal for every receipt type).
The same JSON-mode dict, in the model's field order, is the payload on the wire: the
`*_receipt_frame` functions write the whole receipt message from it (`wire_frames`), instead of
building and dumping a pydantic message per receipt.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from horde_common.crypto import wire_datetime
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
from horde_job_runner.synthetic.wire_frames import canonical_flat_json, receipt_request_frame

__all__ = [
    "ACCEPTED_RECEIPT_TTL",
    "accepted_receipt_frame",
    "accepted_row",
    "finished_receipt_frame",
    "finished_row",
    "started_receipt_wire",
    "started_row",
]

Signer = Callable[[str], str]

# The JobAccepted receipt's ttl: fixed at MAX_EXECUTOR_TIMEOUT (360) in the reference
# (docs/miner-protocol.md quirk B.7). Kept:
# miners store it, and the value has no effect on the batch.
ACCEPTED_RECEIPT_TTL = MAX_EXECUTOR_TIMEOUT


def started_receipt_wire(
    sign: Signer,
    *,
    job_uuid: str,
    miner_hotkey: str,
    validator_hotkey: str,
    executor_class: ExecutorClass,
    max_timeout: int,
    now: datetime,
) -> tuple[JobStartedReceiptPayload, str, dict[str, Any]]:
    """The JobStarted receipt embedded in `V0InitialJobRequest` (`ttl = max(spin-up, 2)` of the class):
    payload, signature, and the payload's wire JSON dict (for `wire_frames.initial_request_frame`)."""
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
    payload, signature, wire = _signed(sign, JobStartedReceiptPayload, "JobStartedReceipt", fields)
    return payload, signature, wire


def accepted_receipt_frame(
    sign: Signer,
    *,
    job_uuid: str,
    miner_hotkey: str,
    validator_hotkey: str,
    time_accepted: datetime,
    now: datetime,
) -> tuple[JobAcceptedReceiptPayload, str, str]:
    """The JobAccepted receipt (`time_accepted`: when we received the accept): payload, signature, and
    the `V0JobAcceptedReceiptRequest` frame (byte for byte `dumps`)."""
    fields = {
        "job_uuid": job_uuid,
        "miner_hotkey": miner_hotkey,
        "validator_hotkey": validator_hotkey,
        "timestamp": now,
        "time_accepted": time_accepted,
        "ttl": ACCEPTED_RECEIPT_TTL,
    }
    payload, signature, wire = _signed(sign, JobAcceptedReceiptPayload, "JobAcceptedReceipt", fields)
    return payload, signature, receipt_request_frame("V0JobAcceptedReceiptRequest", wire, signature)


def finished_receipt_frame(
    sign: Signer,
    *,
    job_uuid: str,
    miner_hotkey: str,
    validator_hotkey: str,
    time_started: datetime,
    time_took_us: int,
    score_str: str,
    now: datetime,
) -> tuple[JobFinishedReceiptPayload, str, str]:
    """The JobFinished receipt: payload, signature, and the `V0JobFinishedReceiptRequest` frame (byte
    for byte `dumps`)."""
    fields = {
        "job_uuid": job_uuid,
        "miner_hotkey": miner_hotkey,
        "validator_hotkey": validator_hotkey,
        "timestamp": now,
        "time_started": time_started,
        "time_took_us": int(time_took_us),
        "score_str": score_str,
    }
    payload, signature, wire = _signed(sign, JobFinishedReceiptPayload, "JobFinishedReceipt", fields)
    return payload, signature, receipt_request_frame("V0JobFinishedReceiptRequest", wire, signature)


# The fields every receipt payload starts with, in the models' order (`BaseReceiptPayload`);
# `receipt_type` comes next, then the fields of the receipt's own class.
_BASE_FIELDS = ("job_uuid", "miner_hotkey", "validator_hotkey", "timestamp")


def _wire(receipt_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The payload in JSON mode (datetimes through `wire_datetime`, enums as their values),
    `receipt_type` included, keys in the model's field order: written compactly it is the payload
    on the wire; in canonical JSON (sorted keys) it is `payload.blob_for_signing()`."""
    json_mode: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, datetime):
            value = wire_datetime(value)
        elif isinstance(value, ExecutorClass):
            value = value.value
        json_mode[key] = value
        if key == _BASE_FIELDS[-1]:
            json_mode["receipt_type"] = receipt_type
    return json_mode


_P = TypeVar("_P", JobStartedReceiptPayload, JobAcceptedReceiptPayload, JobFinishedReceiptPayload)


def _signed(
    sign: Signer, model: type[_P], receipt_type: str, fields: dict[str, Any]
) -> tuple[_P, str, dict[str, Any]]:
    """The payload (built without validation: every value is ours), its signature over the
    canonical blob, and its wire JSON dict."""
    payload = model.model_construct(**fields)
    wire = _wire(receipt_type, fields)
    return payload, sign(canonical_flat_json(wire)), wire


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
