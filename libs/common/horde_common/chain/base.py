"""The chain port: what the validator services read from and write to the chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from horde_common.chain.models import Metagraph, SetWeightsResult


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
