"""u16 quantisation of processed weights and the hash of a weights commit.

Pure functions, no I/O, no randomness (the caller draws the salt). `docs/weights.md` §4 and §5
describe the rules; the float details matter because the chain compares the revealed integers
with the committed hash bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
from collections.abc import Sequence

from horde_weights.float32_math import to_float32_list

U16_MAX = 65535
"""Largest u16: the value the biggest weight is scaled to."""

DEFAULT_MAX_WEIGHT = U16_MAX
"""Default of DYNAMIC_MAX_WEIGHT, the scale of committed weights (`docs/weights.md` §4.1)."""

SALT_LENGTH = 8
"""The reference salted each commit with 8 random bytes, each stored as an int 0..255."""

PUBLIC_KEY_LENGTH = 32
"""An sr25519 hotkey's public key, the account the chain binds the commit to."""

COMMIT_HASH_BYTES = 32
"""blake2b-256: the chain stores a 32-byte H256 per commit."""

U64_MAX = 2**64 - 1

# SCALE compact integer modes (`docs/weights.md` §5.2): single byte, two bytes, four bytes,
# then "big integer" with an explicit byte count.
_COMPACT_ONE_BYTE_LIMIT = 1 << 6
_COMPACT_TWO_BYTE_LIMIT = 1 << 14
_COMPACT_FOUR_BYTE_LIMIT = 1 << 30
_COMPACT_MAX_BIG_BYTES = 67  # the length prefix is 6 bits: 4 + 63 bytes at most


def quantize_for_commit(weights: Sequence[float], max_weight: int = DEFAULT_MAX_WEIGHT) -> list[int]:
    """Scale so the largest weight becomes `max_weight`, round half to even, keep zeros.

    Exactly the reference's committing step (`docs/weights.md` §4.1): `factor = max_weight /
    max(weights)`, then `round(w * factor)` per weight. The factor is computed first; computing
    `w * max_weight / max(weights)` instead rounds differently for some inputs. Entries that
    round to 0 stay (the uid list is committed unchanged).
    """
    if not weights:
        raise ValueError("no weights to quantize")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError("weights must be finite and >= 0")
    top = max(weights)
    if top <= 0:
        raise ValueError("the largest weight must be positive")
    factor = max_weight / top
    values = [round(w * factor) for w in weights]
    if any(v > U16_MAX for v in values):
        raise ValueError(f"max_weight {max_weight} does not fit a u16")
    return values


def quantize_for_set_weights(uids: Sequence[int], weights: Sequence[float]) -> tuple[list[int], list[int]]:
    """The direct-set path (commit-reveal off): float32, max-upscale, u16, zeros dropped.

    What the reference's library did to the floats before a `set_weights` extrinsic
    (`docs/weights.md` §4.2): cast to float32, divide by the largest, multiply by 65535, round
    half to even, drop uids whose value rounds to 0. All-zero weights give two empty lists.
    """
    if len(uids) != len(weights):
        raise ValueError(f"uids and weights differ in length: {len(uids)} vs {len(weights)}")
    single = to_float32_list(weights)
    if any(not math.isfinite(w) or w < 0 for w in single):
        raise ValueError("weights must be finite and >= 0")
    if any(u < 0 for u in uids):
        raise ValueError("uids must be >= 0")
    if sum(single) == 0:
        return [], []
    top = max(single)
    out_uids: list[int] = []
    out_values: list[int] = []
    for uid, w in zip(uids, single, strict=True):
        value = round(w / top * U16_MAX)
        if value != 0:
            out_uids.append(uid)
            out_values.append(value)
    return out_uids, out_values


def scale_compact(value: int) -> bytes:
    """SCALE compact encoding of a non-negative integer (the length prefix of a `Vec`)."""
    if value < 0:
        raise ValueError(f"compact integers are unsigned, got {value}")
    if value < _COMPACT_ONE_BYTE_LIMIT:
        return bytes([value << 2])
    if value < _COMPACT_TWO_BYTE_LIMIT:
        return ((value << 2) | 0b01).to_bytes(2, "little")
    if value < _COMPACT_FOUR_BYTE_LIMIT:
        return ((value << 2) | 0b10).to_bytes(4, "little")
    length = (value.bit_length() + 7) // 8
    if length > _COMPACT_MAX_BIG_BYTES:
        raise ValueError(f"{value} is too large for a SCALE compact integer")
    return bytes([((length - 4) << 2) | 0b11]) + value.to_bytes(length, "little")


def scale_u16_vec(values: Sequence[int]) -> bytes:
    """SCALE `Vec<u16>`: compact length, then each value as 2 little-endian bytes."""
    items = [operator.index(v) for v in values]  # TypeError for floats: no silent truncation
    if items and not (0 <= min(items) and max(items) <= U16_MAX):
        raise ValueError(f"not all values are u16: min {min(items)}, max {max(items)}")
    return scale_compact(len(items)) + struct.pack(f"<{len(items)}H", *items)


def commit_preimage(
    account: bytes,
    netuid: int,
    uids: Sequence[int],
    values: Sequence[int],
    salt: Sequence[int],
    version_key: int,
) -> bytes:
    """The bytes a commit hash covers, in the chain's order (`docs/weights.md` §5.1).

    `account` is the hotkey's 32-byte public key; netuid is a u16, `uids`, `values` and `salt`
    are `Vec<u16>` and `version_key` a u64, all little-endian. Note the salt comes *before*
    the version key.
    """
    if len(account) != PUBLIC_KEY_LENGTH:
        raise ValueError(f"account must be a {PUBLIC_KEY_LENGTH}-byte public key, got {len(account)}")
    if not 0 <= netuid <= U16_MAX:
        raise ValueError(f"netuid {netuid} is not a u16")
    if not 0 <= version_key <= U64_MAX:
        raise ValueError(f"version_key {version_key} is not a u64")
    if len(uids) != len(values):
        raise ValueError(f"uids and values differ in length: {len(uids)} vs {len(values)}")
    return b"".join(
        (
            bytes(account),
            netuid.to_bytes(2, "little"),
            scale_u16_vec(uids),
            scale_u16_vec(values),
            scale_u16_vec(salt),
            version_key.to_bytes(8, "little"),
        )
    )


def commit_hash(
    account: bytes,
    netuid: int,
    uids: Sequence[int],
    values: Sequence[int],
    salt: Sequence[int],
    version_key: int,
) -> str:
    """`0x` + hex of blake2b-256 over `commit_preimage`: the hash sent in `commit_weights`.

    The later reveal must carry the same uids, values, salt and version key, or the chain
    rejects it.
    """
    digest = hashlib.blake2b(
        commit_preimage(account, netuid, uids, values, salt, version_key), digest_size=COMMIT_HASH_BYTES
    )
    return "0x" + digest.hexdigest()
