"""The receipts built on the batch's hot path equal, byte for byte, what the protocol models make.

`receipts.py` skips pydantic validation and writes the signed blob out directly; these tests hold
both to the models: same payload, same wire JSON, same blob, a signature that verifies against
`blob_for_signing()`, for many values (microseconds or none, every executor class, odd scores).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from horde_common.crypto import sign, verify
from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_common.protocol.miner.parsing import dumps
from horde_common.protocol.miner.receipts import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
)
from horde_common.protocol.miner.validator_messages import (
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
)
from horde_job_runner.synthetic import receipts as rc
from horde_localnet import keys

VALIDATOR = keys.validator_keypair(0)
MINER = keys.miner_keypair(0).ss58_address


def signer(blob: str) -> str:
    return sign(VALIDATOR, blob)


def moments(rng: random.Random) -> list[datetime]:
    base = datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC)
    return [
        base,  # no fraction: written without one
        base + timedelta(microseconds=1),
        base + timedelta(seconds=rng.randrange(10**6), microseconds=rng.randrange(10**6)),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_started_receipt_matches_the_model(seed: int) -> None:
    rng = random.Random(seed)
    for now in moments(rng):
        for executor_class in ExecutorClass:
            payload, signature, _ = rc.started_receipt_wire(
                signer,
                job_uuid=str(uuid.UUID(int=rng.getrandbits(128))),
                miner_hotkey=MINER,
                validator_hotkey=VALIDATOR.ss58_address,
                executor_class=executor_class,
                max_timeout=rng.randrange(1, 400),
                now=now,
            )
            model = JobStartedReceiptPayload(**payload.model_dump())
            assert payload == model and dumps(payload) == dumps(model)
            assert verify(VALIDATOR.ss58_address, model.blob_for_signing(), signature)


@pytest.mark.parametrize("seed", range(4))
def test_accepted_and_finished_receipts_match_the_models(seed: int) -> None:
    rng = random.Random(seed)
    for now in moments(rng):
        for then in moments(rng):
            job_uuid = str(uuid.uuid4())
            accepted, a_sig, _ = rc.accepted_receipt_frame(
                signer,
                job_uuid=job_uuid,
                miner_hotkey=MINER,
                validator_hotkey=VALIDATOR.ss58_address,
                time_accepted=then,
                now=now,
            )
            model_a = JobAcceptedReceiptPayload(**accepted.model_dump())
            assert accepted == model_a
            assert dumps(V0JobAcceptedReceiptRequest(payload=accepted, signature=a_sig)) == dumps(
                V0JobAcceptedReceiptRequest(payload=model_a, signature=a_sig)
            )
            assert verify(VALIDATOR.ss58_address, model_a.blob_for_signing(), a_sig)

            finished, f_sig, _ = rc.finished_receipt_frame(
                signer,
                job_uuid=job_uuid,
                miner_hotkey=MINER,
                validator_hotkey=VALIDATOR.ss58_address,
                time_started=then,
                time_took_us=rng.choice([0, -5, 123_456_789]),
                score_str=rng.choice(["0", "1.5", "1e-07", "ünï"]),
                now=now,
            )
            model_f = JobFinishedReceiptPayload(**finished.model_dump())
            assert finished == model_f
            assert dumps(V0JobFinishedReceiptRequest(payload=finished, signature=f_sig)) == dumps(
                V0JobFinishedReceiptRequest(payload=model_f, signature=f_sig)
            )
            assert verify(VALIDATOR.ss58_address, model_f.blob_for_signing(), f_sig)


def test_the_blob_is_the_models_blob() -> None:
    """Direct check of the written-out blob (a signature check alone would not show a difference
    in, e.g., key order if both sides agreed by accident)."""
    seen: list[str] = []

    def capture(blob: str) -> str:
        seen.append(blob)
        return "0x00"

    now = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC)
    payload, _, _ = rc.started_receipt_wire(
        capture,
        job_uuid=str(uuid.uuid4()),
        miner_hotkey=MINER,
        validator_hotkey=VALIDATOR.ss58_address,
        executor_class=ExecutorClass.ALWAYS_ON_GPU_24GB,
        max_timeout=53,
        now=now,
    )
    assert seen == [JobStartedReceiptPayload(**payload.model_dump()).blob_for_signing()]
    assert '"timestamp": "2026-01-02T03:04:05.000600Z"' in seen[0]
