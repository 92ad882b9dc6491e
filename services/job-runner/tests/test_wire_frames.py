"""The hot outgoing frames written out directly (`wire_frames`) equal `dumps` of their models.

The initial request is spliced from the generator's volume JSON, and the receipt requests are one
`json` encoding of the payload dict: both must stay byte for byte what the protocol models write,
for every hashcat flavour, both difficulties, and any string a value might hold.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from horde_common.crypto import canonical_json, sign, verify
from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_common.protocol.miner.parsing import dumps, parse_validator_message
from horde_common.protocol.miner.receipts import JobStartedReceiptPayload
from horde_common.protocol.miner.validator_messages import (
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
)
from horde_job_runner.generators import make_generator
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.wire_frames import (
    canonical_flat_json,
    compact_flat_json,
    initial_request_frame,
)
from horde_localnet import keys

VALIDATOR = keys.validator_keypair(0)
MINER = keys.miner_keypair(0).ss58_address
# Strings a JSON encoder might treat differently: quotes, backslashes, control characters,
# non-ASCII (written raw, not as \u escapes), DEL, line separators, an astral character.
ODD = ['a"b', "c\\d", "tab\there\n", "\x00\x01\x1f\x7f", "é ü 日本", "\u2028\u2029", "😀", "/</"]


def signer(blob: str) -> str:
    return sign(VALIDATOR, blob)


def model_frame(gen, payload: JobStartedReceiptPayload, signature: str) -> str:  # type: ignore[no-untyped-def]
    return dumps(
        V0InitialJobRequest(
            job_uuid=str(gen.job_uuid),
            executor_class=gen.executor_class,
            base_docker_image_name=gen.base_docker_image_name(),
            timeout_seconds=gen.timeout_seconds(),
            volume=gen.initial_request_volume(),
            job_started_receipt_payload=payload,
            job_started_receipt_signature=signature,
        )
    )


@pytest.mark.parametrize("weights_version", range(5))
@pytest.mark.parametrize("difficulty", ["localnet", "production"])
def test_initial_request_frame_is_the_models_dump(weights_version: int, difficulty: str) -> None:
    now = datetime(2026, 12, 2, 0, 41, 48, 123456, tzinfo=UTC)
    for seed in range(3):
        gen = make_generator(
            "always_on.gpu-24gb", weights_version, MINER, difficulty, random.Random(seed), now=now
        )
        volume_json = gen.initial_request_volume_json()
        assert volume_json is not None
        payload, signature, wire = rc.started_receipt_wire(
            signer,
            job_uuid=str(gen.job_uuid),
            miner_hotkey=MINER,
            validator_hotkey=VALIDATOR.ss58_address,
            executor_class=ExecutorClass(gen.executor_class),
            max_timeout=gen.timeout_seconds(),
            now=now + timedelta(microseconds=seed),  # seed 0: no fraction, written without one
        )
        frame = initial_request_frame(
            job_uuid=str(gen.job_uuid),
            executor_class=ExecutorClass(gen.executor_class),
            base_docker_image_name=gen.base_docker_image_name(),
            timeout_seconds=gen.timeout_seconds(),
            volume_json=volume_json,
            receipt_wire=wire,
            receipt_signature=signature,
        )
        assert frame == model_frame(gen, payload, signature)
        message = parse_validator_message(frame)
        assert isinstance(message, V0InitialJobRequest)
        assert (message.volume is not None) == (weights_version == 4)
        assert verify(
            VALIDATOR.ss58_address, message.job_started_receipt_payload.blob_for_signing(), signature
        )


def test_the_volume_json_is_the_volume() -> None:
    """Production v4 carries the whole ~62 KB volume in the initial request; v0-v3 carry none."""
    gen = make_generator("always_on.gpu-24gb", 4, MINER, "production", random.Random(7))
    volume = gen.initial_request_volume()
    assert volume is not None
    volume_json = gen.initial_request_volume_json()
    assert volume_json is not None and len(volume_json) > 50_000
    assert json.loads(volume_json) == volume
    assert f'"contents":"{volume["contents"]}"' in volume_json
    for weights_version in range(4):
        older = make_generator("always_on.gpu-24gb", weights_version, MINER, "production", random.Random(7))
        assert older.initial_request_volume() is None and older.initial_request_volume_json() == "null"


@pytest.mark.parametrize("odd", ODD)
def test_receipt_frames_are_the_models_dump_for_any_string(odd: str) -> None:
    now = datetime(2026, 12, 2, 0, 41, 48, tzinfo=UTC)
    for then in (now, now + timedelta(microseconds=999_999)):
        a_payload, a_sig, a_frame = rc.accepted_receipt_frame(
            signer,
            job_uuid=str(uuid.uuid4()) + odd,
            miner_hotkey=MINER + odd,
            validator_hotkey=odd,
            time_accepted=then,
            now=now,
        )
        assert a_frame == dumps(V0JobAcceptedReceiptRequest(payload=a_payload, signature=a_sig))
        f_payload, f_sig, f_frame = rc.finished_receipt_frame(
            signer,
            job_uuid=odd,
            miner_hotkey=MINER,
            validator_hotkey=VALIDATOR.ss58_address,
            time_started=then,
            time_took_us=-5 if odd == "😀" else 123_456_789,
            score_str=odd,
            now=now,
        )
        assert f_frame == dumps(V0JobFinishedReceiptRequest(payload=f_payload, signature=f_sig))
        assert verify(VALIDATOR.ss58_address, f_payload.blob_for_signing(), f_sig)


@pytest.mark.parametrize("odd", ODD)
def test_initial_request_frame_escapes_like_the_model(odd: str) -> None:
    now = datetime(2026, 12, 2, 0, 41, 48, 5, tzinfo=UTC)
    gen = make_generator("always_on.gpu-24gb", 4, MINER, "localnet", random.Random(3), now=now)
    payload, signature, wire = rc.started_receipt_wire(
        lambda blob: odd,
        job_uuid=odd,
        miner_hotkey=odd,
        validator_hotkey=odd,
        executor_class=ExecutorClass(gen.executor_class),
        max_timeout=gen.timeout_seconds(),
        now=now,
    )
    frame = initial_request_frame(
        job_uuid=odd,
        executor_class=ExecutorClass(gen.executor_class),
        base_docker_image_name=gen.base_docker_image_name() + odd,
        timeout_seconds=gen.timeout_seconds(),
        volume_json=gen.initial_request_volume_json() or "",
        receipt_wire=wire,
        receipt_signature=signature,
    )
    model = V0InitialJobRequest(
        job_uuid=odd,
        executor_class=gen.executor_class,
        base_docker_image_name=gen.base_docker_image_name() + odd,
        timeout_seconds=gen.timeout_seconds(),
        volume=gen.initial_request_volume(),
        job_started_receipt_payload=payload,
        job_started_receipt_signature=signature,
    )
    assert frame == dumps(model)


@pytest.mark.parametrize("odd", ODD)
def test_the_signed_blobs_are_the_models_blobs_for_any_string(odd: str) -> None:
    """The blob is written out by `canonical_flat_json`: it must be `blob_for_signing()` exactly."""
    seen: list[str] = []

    def capture(blob: str) -> str:
        seen.append(blob)
        return "0x00"

    now = datetime(2026, 12, 2, 0, 41, 48, 7, tzinfo=UTC)
    started, _, _ = rc.started_receipt_wire(
        capture,
        job_uuid=odd,
        miner_hotkey=odd,
        validator_hotkey=VALIDATOR.ss58_address,
        executor_class=ExecutorClass.ALWAYS_ON_LLM_A6000,
        max_timeout=7,
        now=now,
    )
    accepted, _, _ = rc.accepted_receipt_frame(
        capture, job_uuid=odd, miner_hotkey=MINER, validator_hotkey=odd, time_accepted=now, now=now
    )
    finished, _, _ = rc.finished_receipt_frame(
        capture,
        job_uuid=odd,
        miner_hotkey=MINER,
        validator_hotkey=odd,
        time_started=now,
        time_took_us=0,
        score_str=odd,
        now=now,
    )
    models = [type(p)(**p.model_dump()) for p in (started, accepted, finished)]
    assert seen == [m.blob_for_signing() for m in models]


def test_flat_json_writers_match_json() -> None:
    values: list[object] = [*ODD, 0, -1, 10**30, True, False, None, "", "x"]
    rng = random.Random(5)
    for _ in range(200):
        d = {
            rng.choice([*ODD, "k", "a", "z", "_"]) + str(i): rng.choice(values)
            for i in range(rng.randrange(8))
        }
        assert canonical_flat_json(d) == canonical_json(d)
        assert compact_flat_json(d) == json.dumps(d, separators=(",", ":"), ensure_ascii=False)
    # Anything else falls back to the json encoder, with the same result.
    nested = {"b": 1.5, "a": [1, {"c": None}], "d": ExecutorClass.ALWAYS_ON_GPU_24GB}
    assert canonical_flat_json(nested) == canonical_json(nested)
    assert compact_flat_json(nested) == json.dumps(nested, separators=(",", ":"), ensure_ascii=False)
