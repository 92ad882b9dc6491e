"""Bit-exact verification of signed (V2) job requests (docs/organic.md §1.6).

A V2 request names no miner, so the validator runs it only when a whitelisted signer vouches for
its contents. What is signed is easy to get subtly wrong, hence every step is spelled out here:

1. the *signed fields*, in this key order: `executor_class`, `docker_image`, `raw_script`, `args`
   (the list joined by single spaces), `env`, `use_gpu`, `volumes` (a multi-volume's entries, a
   single volume as a one-element list, `[]` for none), `uploads` (likewise for a multi-upload's
   single-file uploads; its `system_output` is NOT signed); every volume and upload with all its
   fields in schema order, nulls included;
2. `S` = that object as compact JSON with non-ASCII characters left raw (pydantic's serialiser);
3. `M` = `S` encoded once more as a JSON string literal with ASCII escapes, as UTF-8 bytes;
4. digest = BLAKE2b-512 over the 8-byte big-endian `timestamp_ns` followed by `M`;
5. the base64 signature must be the signer's sr25519 signature over the digest.

The timestamp is signed but its age is not checked, as in the original: a request cannot expire.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

import pydantic_core

from horde_common.crypto import canonical_json, public_keypair

from ..miner.values import MultiUpload, MultiVolume
from .messages import Signature, V2JobRequest

__all__ = [
    "SIGNATURE_TYPE",
    "SignatureError",
    "SignatureErrorKind",
    "parse_signers",
    "sign_v2_request",
    "signed_fields",
    "signed_fields_json",
    "signing_digest",
    "verify_v2_request",
]

SIGNATURE_TYPE: Final = "bittensor"
"""The only signature scheme of this protocol version: sr25519 by an SS58 hotkey."""


class SignatureErrorKind(StrEnum):
    """Why a V2 request is dropped. Each kind is logged; none is answered on the wire."""

    MISSING = "missing"  # the request carries no signature object
    NOT_WHITELISTED = "not_whitelisted"  # the signatory is not one of the configured signers
    UNSUPPORTED_TYPE = "unsupported_type"  # `signature_type` is not "bittensor"
    MALFORMED = "malformed"  # not 64 bytes, a signatory that is not SS58, an out-of-range timestamp
    # A well-formed signature that does not match: the payload changed after signing (tampered) or
    # another key signed it. The two cannot be told apart, by design of signatures.
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class SignatureError:
    kind: SignatureErrorKind
    detail: str
    signatory: str | None = None


class _Signer(Protocol):
    @property
    def ss58_address(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def parse_signers(text: str) -> frozenset[str]:
    """The `FACILITATOR_V2_SIGNERS` setting: comma-separated SS58 addresses, blanks ignored.

    Raises ValueError naming the first entry that is not an SS58 address, so that a typo stops the
    service at start-up instead of silently dropping every signed job.
    """
    signers: set[str] = set()
    for entry in text.split(","):
        address = entry.strip()
        if not address:
            continue
        try:
            public_keypair(address)
        except Exception:
            raise ValueError(f"FACILITATOR_V2_SIGNERS: {address!r} is not an SS58 address") from None
        signers.add(address)
    return frozenset(signers)


def signed_fields(request: V2JobRequest) -> dict[str, Any]:
    """Step 1: the object whose JSON is signed, keys in signing order."""
    volume = request.volume
    if volume is None:
        volumes: list[Any] = []
    elif isinstance(volume, MultiVolume):
        volumes = list(volume.volumes)
    else:
        volumes = [volume]
    upload = request.output_upload
    if upload is None:
        uploads: list[Any] = []
    elif isinstance(upload, MultiUpload):
        uploads = list(upload.uploads)
    else:
        uploads = [upload]
    return {
        "executor_class": str(request.executor_class.value),
        "docker_image": request.docker_image,
        "raw_script": request.raw_script,
        "args": " ".join(request.args),
        "env": dict(request.env),
        "use_gpu": request.use_gpu,
        "volumes": [v.model_dump(mode="json") for v in volumes],
        "uploads": [u.model_dump(mode="json") for u in uploads],
    }


def signed_fields_json(request: V2JobRequest) -> str:
    """Step 2: `S`, written by the same serialiser as the original (compact, raw UTF-8)."""
    return pydantic_core.to_json(signed_fields(request)).decode("utf-8")


def signing_digest(payload: Any, timestamp_ns: int) -> bytes:
    """Steps 3–4, the signing library's generic rule: bytes are taken as they are, any other payload
    as `json.dumps(payload, sort_keys=True)`; then BLAKE2b-512 of the timestamp and those bytes.
    Raises OverflowError for a timestamp outside 0..2**64-1."""
    message = bytes(payload) if isinstance(payload, bytes | bytearray) else canonical_json(payload).encode()
    return hashlib.blake2b(timestamp_ns.to_bytes(8, "big", signed=False) + message).digest()


def sign_v2_request(request: V2JobRequest, signer: _Signer, timestamp_ns: int) -> V2JobRequest:
    """The request with a fresh signature by `signer` (what the facilitator does; for fakes and tests)."""
    digest = signing_digest(signed_fields_json(request), timestamp_ns)
    signature = Signature(
        signature_type=SIGNATURE_TYPE,
        signatory=signer.ss58_address,
        timestamp_ns=timestamp_ns,
        signature=base64.b64encode(bytes(signer.sign(digest))).decode("ascii"),
    )
    return request.model_copy(update={"signature": signature})


def verify_v2_request(request: V2JobRequest, signers: frozenset[str]) -> SignatureError | None:
    """None when the request is signed by a whitelisted signer over exactly its contents, else why
    not. Never raises: every value checked here came from the facilitator."""
    signature = request.signature
    if signature is None:
        return SignatureError(SignatureErrorKind.MISSING, "V2 job request without a signature")
    signatory = signature.signatory
    if signatory not in signers:
        return SignatureError(
            SignatureErrorKind.NOT_WHITELISTED, "signatory is not a whitelisted signer", signatory
        )
    if signature.signature_type != SIGNATURE_TYPE:
        return SignatureError(
            SignatureErrorKind.UNSUPPORTED_TYPE,
            f"signature type {signature.signature_type[:64]!r} is not supported",
            signatory,
        )
    try:
        raw = signature.raw
        digest = signing_digest(signed_fields_json(request), signature.timestamp_ns)
        keypair = public_keypair(signatory)
    except Exception as exc:
        return SignatureError(SignatureErrorKind.MALFORMED, f"{type(exc).__name__}: {exc}", signatory)
    if len(raw) != 64:
        return SignatureError(
            SignatureErrorKind.MALFORMED, f"signature is {len(raw)} bytes, not 64", signatory
        )
    try:
        valid = bool(keypair.verify(digest, raw))
    except Exception as exc:
        return SignatureError(SignatureErrorKind.MALFORMED, f"{type(exc).__name__}: {exc}", signatory)
    if not valid:
        return SignatureError(
            SignatureErrorKind.MISMATCH, "signature does not match the request's signed fields", signatory
        )
    return None
