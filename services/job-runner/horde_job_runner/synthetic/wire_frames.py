"""The batch's hot outgoing frames, written out directly: byte for byte what `dumps(model)` makes.

A synthetic job sends three frames built from our own values: the `V0InitialJobRequest` (62 KB at
production difficulty, almost all of it the base64 volume) and the JobAccepted/JobFinished receipt
requests. Building and dumping a pydantic model for each cost more than signing it; the volume
alone took most of `model_dump_json`'s time, as it was scanned for characters to escape.

Here each frame is written from dicts in the models' field order by a flat writer that uses the
`json` module's own C string escapers, and the initial request's volume is spliced in as the JSON
the generator already holds (`JobGenerator.initial_request_volume_json`). Base64 has no character
JSON escapes, so the bytes are the same. The signed receipt blobs (canonical JSON) are written the
same way. `tests/test_wire_frames.py` holds every frame equal to `dumps` of its model, and every
blob equal to `blob_for_signing()`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

__all__ = ["canonical_flat_json", "compact_flat_json", "initial_request_frame", "receipt_request_frame"]

# `model_dump_json`'s format: no spaces, non-ASCII written as UTF-8 (not `\u` escapes). The
# fallback for values the flat writer does not handle; one encoder for all calls (`json.dumps`
# with options builds a new encoder each time).
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _flat(d: dict[str, Any], escape: Callable[[str], str], item_sep: str, kv_sep: str) -> str | None:
    """A flat dict (str/int/bool/None values) as JSON, keys in `d`'s order; None for anything else.

    Written in Python with the `json` module's own C string escaper: for the seven or so fields of
    a receipt it costs about half of a `json` encoder call, whose set-up per call dominates.
    """
    parts = []
    for key, value in d.items():
        cls = value.__class__
        if cls is str:
            text = escape(value)
        elif value is True:
            text = "true"
        elif value is False:
            text = "false"
        elif value is None:
            text = "null"
        elif cls is int:
            text = int.__repr__(value)
        else:
            return None
        parts.append(f"{escape(key)}{kv_sep}{text}")
    return "{" + item_sep.join(parts) + "}"


def canonical_flat_json(d: dict[str, Any]) -> str:
    """`horde_common.crypto.canonical_json(d)` (`json.dumps(d, sort_keys=True)`), for the signed
    receipt blobs: sorted keys, `", "` and `": "`, ASCII escapes."""
    text = _flat(dict(sorted(d.items())), encode_basestring_ascii, ", ", ": ")
    return text if text is not None else json.dumps(d, sort_keys=True)


def compact_flat_json(d: dict[str, Any]) -> str:
    """`_compact(d)`: what `model_dump_json` writes for a flat model with these values."""
    text = _flat(d, encode_basestring, ",", ":")
    return text if text is not None else _compact(d)


def receipt_request_frame(message_type: str, payload_wire: dict[str, Any], signature: str) -> str:
    """`V0JobAcceptedReceiptRequest` / `V0JobFinishedReceiptRequest` from the payload's wire dict
    (`receipts._wire`: JSON mode, the model's field order)."""
    payload = compact_flat_json(payload_wire)
    return f'{{"message_type":{encode_basestring(message_type)},"payload":{payload},"signature":{encode_basestring(signature)}}}'


def initial_request_frame(
    *,
    job_uuid: str,
    executor_class: str,
    base_docker_image_name: str,
    timeout_seconds: int,
    volume_json: str,
    receipt_wire: dict[str, Any],
    receipt_signature: str,
) -> str:
    """`V0InitialJobRequest` with `volume_json` (the volume's wire JSON, or `null`) spliced in.

    The caller vouches for `volume_json`: it must be what the model would write for the volume.
    """
    head = compact_flat_json(
        {
            "job_uuid": job_uuid,
            "message_type": "V0InitialJobRequest",
            "executor_class": str(executor_class),
            "base_docker_image_name": base_docker_image_name,
            "timeout_seconds": int(timeout_seconds),
        }
    )
    receipt = compact_flat_json(receipt_wire)
    signature = encode_basestring(receipt_signature)
    # head ends with "}": the rest of the object follows it, "volume" first.
    return "".join(
        (
            head[:-1],
            ',"volume":',
            volume_json,
            ',"volume_type":null,"job_started_receipt_payload":',
            receipt,
            ',"job_started_receipt_signature":',
            signature,
            "}",
        )
    )
