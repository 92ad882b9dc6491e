"""Hotkeys, the canonical JSON blob and sr25519 signatures of the validator ↔ miner link
(docs/miner-protocol.md §1.6–§1.7).

Miners verify a signature by re-serialising what they received with Python's
`json.dumps(obj, sort_keys=True)` and checking the signature over those UTF-8 bytes, so the
blob we sign must be produced exactly the same way: `canonical_json` is that function and nothing
else. Signatures travel as `"0x"` + lowercase hex of the 64 signature bytes.

`bittensor` is imported lazily: importing it costs about two seconds and pulls in network
libraries, and the sans-I/O protocol package only needs `canonical_json` from here.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from bittensor_core import Keypair

__all__ = [
    "canonical_json",
    "keypair_from_seed",
    "public_keypair",
    "receipt_payload_json",
    "sign",
    "signature_hex",
    "verify",
    "wire_datetime",
]

_HEX_SEED = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def _keypair_cls() -> type[Keypair]:
    from bittensor_core import Keypair

    return Keypair


# --------------------------------------------------------------------------------------------- keys


def keypair_from_seed(seed: str | bytes) -> Keypair:
    """A sr25519 keypair from a dev seed: `//URI`, a mnemonic (optionally with `//path`), or a hex seed.

    Raw `bytes` are a 32-byte mini-secret. Error messages never repeat the seed, because it is a secret.
    """
    keypair_cls = _keypair_cls()
    if isinstance(seed, bytes | bytearray):
        try:
            return keypair_cls.create_from_seed(bytes(seed))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid hotkey seed bytes: {exc}") from None
    text = seed.strip()
    if not text:
        raise ValueError("empty hotkey seed")
    if _HEX_SEED.match(text) and not text.startswith("0x"):
        text = "0x" + text
    try:
        return keypair_cls.create_from_uri(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"invalid hotkey seed (expected //URI, mnemonic or 0x-hex 32-byte seed): {exc}"
        ) from None


def public_keypair(ss58_address: str) -> Keypair:
    """A verify-only keypair for an SS58 address (raises ValueError for a malformed address)."""
    return _keypair_cls()(ss58_address=ss58_address)


# ------------------------------------------------------------------------------------ canonical JSON


def canonical_json(obj: Any) -> str:
    """The signed blob: Python `json.dumps(obj, sort_keys=True)` with default separators and ASCII escapes.

    Kept byte-identical to what the miner recomputes (docs/miner-protocol.md §1.7); do not "improve" the
    formatting.
    """
    return json.dumps(obj, sort_keys=True)


def wire_datetime(value: datetime) -> str:
    """ISO-8601 as pydantic writes it and the miner re-writes it: UTC as `Z`, fraction only if non-zero.

    Written out explicitly (rather than left to whatever pydantic version is installed) so the wire
    form and the signed blob can never drift apart from what a November-2024 miner recomputes.
    """
    timespec = "microseconds" if value.microsecond else "seconds"
    text = value.isoformat(timespec=timespec)
    offset = value.utcoffset()
    if offset is not None and offset == timedelta(0):
        text = text[: -len("+00:00")] + "Z"
    return text


def receipt_payload_json(model: BaseModel) -> dict[str, Any]:
    """A receipt payload in pydantic JSON mode: enums as values, datetimes via `wire_datetime`."""
    return model.model_dump(mode="json")


# -------------------------------------------------------------------------------------- signatures


def _as_bytes(blob: str | bytes) -> bytes:
    return blob.encode("utf-8") if isinstance(blob, str) else bytes(blob)


def signature_hex(raw_signature: bytes) -> str:
    """The wire form of a signature: `"0x"` + lowercase hex."""
    return "0x" + bytes(raw_signature).hex()


def sign(keypair: Keypair, blob: str | bytes) -> str:
    """Sign the UTF-8 bytes of `blob` (no hashing, no `<Bytes>` wrapper) and return `"0x"`+hex."""
    return signature_hex(bytes(keypair.sign(_as_bytes(blob))))


def verify(ss58_address: str, blob: str | bytes, signature: str | bytes) -> bool:
    """True only if `signature` (`"0x"`+hex, bare hex, or raw bytes) is `ss58_address`'s over `blob`.

    Never raises: a malformed address, signature or blob is simply "not verified", because these
    values come from peers and the caller only needs a yes/no.
    """
    try:
        if isinstance(signature, str):
            text = signature[2:] if signature[:2] in ("0x", "0X") else signature
            raw = bytes.fromhex(text)
        else:
            raw = bytes(signature)
        if len(raw) != 64:
            return False
        return bool(public_keypair(ss58_address).verify(_as_bytes(blob), raw))
    except Exception:
        return False
