"""Receipt payloads: signed statements about a job that validator and miner both keep
(docs/miner-protocol.md §2.4).

The validator signs `canonical_json(payload in JSON mode)`; the miner re-parses the payload it
received, re-serialises it the same way and verifies. Datetimes are therefore serialised with
`wire_datetime` both on the wire and in the blob, so the two can never disagree.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, PlainSerializer

from horde_common.crypto import canonical_json, receipt_payload_json, verify, wire_datetime

from .executor_class import ExecutorClass
from .values import WireModel

WireDatetime = Annotated[datetime, PlainSerializer(wire_datetime, return_type=str, when_used="json")]


class ReceiptType(StrEnum):
    JOB_STARTED = "JobStartedReceipt"
    JOB_ACCEPTED = "JobAcceptedReceipt"
    JOB_FINISHED = "JobFinishedReceipt"


class BaseReceiptPayload(WireModel):
    job_uuid: str
    miner_hotkey: str
    validator_hotkey: str
    timestamp: WireDatetime  # when the receipt was generated; use aware UTC with microseconds

    def blob_for_signing(self) -> str:
        """The exact string both sides sign and verify."""
        return canonical_json(receipt_payload_json(self))


class JobStartedReceiptPayload(BaseReceiptPayload):
    """Embedded in `V0InitialJobRequest`."""

    receipt_type: Literal["JobStartedReceipt"] = "JobStartedReceipt"
    executor_class: ExecutorClass
    max_timeout: int  # seconds: the job's timeout
    is_organic: bool
    ttl: int  # seconds: the job's spin-up allowance, max(class spin-up, 2)


class JobAcceptedReceiptPayload(BaseReceiptPayload):
    """Sent after the miner accepted; `time_accepted` is when the validator received the accept."""

    receipt_type: Literal["JobAcceptedReceipt"] = "JobAcceptedReceipt"
    time_accepted: WireDatetime
    ttl: int  # always 360 in synthetic jobs


class JobFinishedReceiptPayload(BaseReceiptPayload):
    """Sent after scoring for every job with a final response."""

    receipt_type: Literal["JobFinishedReceipt"] = "JobFinishedReceipt"
    time_started: WireDatetime
    time_took_us: int  # may be 0 (failed job) or negative (out-of-order response)
    score_str: str  # "%.6g" of the final score

    @property
    def time_took(self) -> timedelta:
        return timedelta(microseconds=self.time_took_us)


ReceiptPayload = Annotated[
    JobStartedReceiptPayload | JobAcceptedReceiptPayload | JobFinishedReceiptPayload,
    Field(discriminator="receipt_type"),
]


class Receipt(WireModel):
    """A payload with both signatures, as stored and as exchanged between validators and miners."""

    payload: ReceiptPayload
    validator_signature: str
    miner_signature: str | None = None

    def verify_validator_signature(self) -> bool:
        return verify(
            self.payload.validator_hotkey, self.payload.blob_for_signing(), self.validator_signature
        )

    def verify_miner_signature(self) -> bool:
        if self.miner_signature is None:
            return False
        return verify(self.payload.miner_hotkey, self.payload.blob_for_signing(), self.miner_signature)
