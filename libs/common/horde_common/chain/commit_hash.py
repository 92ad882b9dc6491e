"""The hash of a legacy weights commit: blake2b-256 over the SCALE-encoded weights.

Pure functions, no I/O, no randomness (the caller draws the salt). Shared by the weights service,
which commits, and the localnet chain simulator, which re-hashes a reveal and compares; both must
agree with the chain bit for bit. `docs/weights.md` §5 describes the layout.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Sequence

U16_MAX = 65535
"""Largest u16: uids, values and salt items are u16 on the chain."""

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


def commit_hash_hex(value: bytes | str) -> str:
    """A commit hash given as 32 raw bytes or as (`0x`-)hex, as canonical lowercase `0x`-hex.

    Callers may hold either form (the chain port accepts both); raises `ValueError` for anything
    that is not exactly 32 bytes, so a truncated hash never reaches the chain.
    """
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value.removeprefix("0x").removeprefix("0X"))
        except ValueError:
            raise ValueError("commit hash is not hex") from None
    else:
        raw = bytes(value)
    if len(raw) != COMMIT_HASH_BYTES:
        raise ValueError(f"commit hash must be {COMMIT_HASH_BYTES} bytes, got {len(raw)}")
    return "0x" + raw.hex()
