"""What one weights run writes: pure decisions from a batch's jobs to the chain payload.

`docs/scoring.md` §2.2. No I/O: the run (`weights_run`) loads the inputs and performs the write.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from horde_weights.scoring import ScoredJob, score_batch
from horde_weights.service_settings import WeightsMode
from horde_weights.weight_commit import (
    SALT_LENGTH,
    commit_hash,
    quantize_for_commit,
    quantize_for_set_weights,
)
from horde_weights.weight_processing import (
    NeuronLike,
    UidWeights,
    max_weight_limit_from_u16,
    process_weights,
    uid_vector,
)

# The version key written with every set, commit and reveal: the scoring algorithm version of the
# reference validator (`docs/weights.md` §5.1), not the job-score formula `DYNAMIC_WEIGHTS_VERSION`.
VERSION_KEY: Final = 2
# A salt value is one random byte (`docs/weights.md` §5.1).
SALT_VALUES: Final = 256


@dataclass(frozen=True, slots=True)
class ChainRules:
    """The subnet hyperparameters `process_weights` applies (`docs/weights.md` §3.1)."""

    min_allowed_weights: int
    max_weight_limit_u16: int


@dataclass(frozen=True, slots=True)
class WritePayload:
    """Exactly what goes to the chain and into the `weights` row.

    `auto`: `weights` are the processed floats and `chain_values` the u16 integers sent (zeros
    dropped, `docs/weights.md` §4.2). `commit-reveal-v2`: `weights` are the committed u16 integers
    (zeros kept, §4.1), with the salt and the hash over them (§5).
    """

    mode: WeightsMode
    uids: list[int]
    weights: list[float] | list[int]
    chain_uids: list[int]
    chain_values: list[int]
    salt: list[int] | None = None
    commit_hash: str | None = None


def draw_salt() -> list[int]:
    """A fresh commit salt: `SALT_LENGTH` random bytes, each as an int (cryptographic randomness,
    so nobody can brute-force the committed weights from the hash before the reveal)."""
    return [secrets.randbelow(SALT_VALUES) for _ in range(SALT_LENGTH)]


def plan_weights(
    jobs: Iterable[ScoredJob],
    class_weights: Mapping[str, float],
    neurons: Sequence[NeuronLike],
    rules: ChainRules,
) -> UidWeights | None:
    """Score the batch, map it onto the metagraph and apply the subnet's rules.

    None when no scored hotkey is registered any more: nothing to write (`docs/weights.md` §2).
    """
    scores = score_batch(jobs, class_weights)
    vector = uid_vector(scores, neurons)
    if vector is None:
        return None
    return process_weights(
        vector.uids,
        vector.weights,
        n_neurons=len(neurons),
        min_allowed_weights=rules.min_allowed_weights,
        max_weight_limit=max_weight_limit_from_u16(rules.max_weight_limit_u16),
    )


def build_payload(
    mode: WeightsMode,
    processed: UidWeights,
    *,
    max_weight: int,
    salt: Sequence[int],
    public_key: bytes,
    netuid: int,
) -> WritePayload:
    """The payload for `mode`; `salt` and `public_key` are only used by the commit path."""
    if mode is WeightsMode.AUTO:
        chain_uids, chain_values = quantize_for_set_weights(processed.uids, processed.weights)
        return WritePayload(
            mode=mode,
            uids=list(processed.uids),
            weights=list(processed.weights),
            chain_uids=chain_uids,
            chain_values=chain_values,
        )
    values = quantize_for_commit(processed.weights, max_weight)
    digest = commit_hash(public_key, netuid, processed.uids, values, salt, VERSION_KEY)
    return WritePayload(
        mode=mode,
        uids=list(processed.uids),
        weights=values,
        chain_uids=list(processed.uids),
        chain_values=values,
        salt=list(salt),
        commit_hash=digest,
    )
