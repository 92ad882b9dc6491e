"""The chain port: what the validator services read from and write to the chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from horde_common.chain.models import (
    CommitResult,
    Hyperparameters,
    Metagraph,
    RevealResult,
    SetWeightsResult,
)


@runtime_checkable
class Chain(Protocol):
    """Async access to a subtensor chain (real or simulated).

    Every method raises `ChainError` when the chain cannot be reached or answers nonsense.
    """

    async def current_block(self) -> int:
        """The number of the chain head."""
        ...

    async def block_hash(self, block: int) -> str:
        """The `0x`-hex hash of block `block` (must not be in the future)."""
        ...

    async def metagraph(self, netuid: int, block: int | None = None) -> Metagraph:
        """The subnet's neurons at `block` (default: the head)."""
        ...

    async def set_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        version_key: int,
        keypair: Any,
    ) -> SetWeightsResult:
        """Set (or, under commit-reveal, commit) weights signed by the hotkey of `keypair`.

        `keypair` is an sr25519 keypair or a wallet-shaped object with `.hotkey`. Weights are
        relative floats; they are scaled to u16 (largest = 65535) and zero entries dropped.
        A refusal by the chain (rate limit, not registered, ...) is `success=False`, not an error.
        """
        ...

    async def weights_rate_limit(self, netuid: int) -> int:
        """Blocks a hotkey must wait between two weight sets on the subnet."""
        ...

    async def commit_reveal_enabled(self, netuid: int) -> bool:
        """Whether weights on the subnet go through (timelocked) commit-reveal."""
        ...

    # --- legacy (salted) commit-reveal, `docs/weights.md` §5, §7, §8 ---

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        """All the subnet hyperparameters below in one read (one round trip)."""
        ...

    async def min_allowed_weights(self, netuid: int) -> int:
        """`MinAllowedWeights`: fewest uids a (non-self) weight vector may name."""
        ...

    async def max_weight_limit(self, netuid: int) -> int:
        """`MaxWeightsLimit` as the raw u16 (65535 = no cap); divide by 65535 for the fraction."""
        ...

    async def commit_reveal_interval(self, netuid: int) -> int:
        """The legacy commit-reveal interval L in blocks: a commit made in `[kL, (k+1)L)` must be
        revealed in `[(k+1)L, (k+2)L)`."""
        ...

    async def commit_weights(self, netuid: int, commit_hash: bytes | str, keypair: Any) -> CommitResult:
        """Store `commit_hash` (32 bytes, or `0x`-hex) as the hotkey's pending weights commit.

        The hash is `horde_common.chain.commit_hash.commit_hash(...)` over the weights to reveal
        later. A refusal by the chain (commit-reveal disabled, already committed this interval,
        not registered, ...) is `success=False` with the chain's message, not an error. A hash
        that is not exactly 32 bytes raises `ValueError` before anything is sent.
        """
        ...

    async def reveal_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        values: Sequence[int],
        salt: Sequence[int],
        version_key: int,
        keypair: Any,
    ) -> RevealResult:
        """Reveal the hotkey's pending commit: the chain re-hashes these and sets the weights.

        `values` are the committed u16 integers (zeros allowed), `salt` the committed `Vec<u16>`
        (the reference uses 8 ints 0..255; `bytes` works too). A refusal (no commit, hash
        mismatch, outside the reveal interval, rate limit, too few weights, ...) is
        `success=False` with the chain's message, not an error. Arguments the chain cannot
        encode (mismatched lengths, an item outside u16, a version key outside u64) raise
        `ValueError` before anything is sent.
        """
        ...
