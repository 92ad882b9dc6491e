"""u16 quantisation of processed weights and the hash of a weights commit.

Pure functions, no I/O, no randomness (the caller draws the salt). `docs/weights.md` §4 and §5
describe the rules; the float details matter because the chain compares the revealed integers
with the committed hash bit for bit. The hash itself lives in `horde_common.chain.commit_hash`
(the localnet chain re-hashes reveals with it) and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from horde_common.chain.commit_hash import (
    COMMIT_HASH_BYTES,
    PUBLIC_KEY_LENGTH,
    U16_MAX,
    U64_MAX,
    commit_hash,
    commit_preimage,
    scale_compact,
    scale_u16_vec,
)
from horde_weights.float32_math import to_float32_list

__all__ = [
    "COMMIT_HASH_BYTES",
    "DEFAULT_MAX_WEIGHT",
    "PUBLIC_KEY_LENGTH",
    "SALT_LENGTH",
    "U16_MAX",
    "U64_MAX",
    "commit_hash",
    "commit_preimage",
    "quantize_for_commit",
    "quantize_for_set_weights",
    "scale_compact",
    "scale_u16_vec",
]

DEFAULT_MAX_WEIGHT = U16_MAX
"""Default of DYNAMIC_MAX_WEIGHT, the scale of committed weights (`docs/weights.md` §4.1)."""

SALT_LENGTH = 8
"""The reference salted each commit with 8 random bytes, each stored as an int 0..255."""


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
