"""The chain port and its two implementations.

- `Chain`: the protocol the services use (`current_block`, `block_hash`, `metagraph`,
  `set_weights`, `commit_weights`, `reveal_weights`, `hyperparameters`, `weights_rate_limit`,
  `commit_reveal_enabled`, `min_allowed_weights`, `max_weight_limit`, `commit_reveal_interval`).
- `LocalChainClient`: the localnet chain simulator over HTTP.
- `BittensorChain`: the real chain through the bittensor 11 SDK (imported lazily: the SDK is slow
  to import and only production needs it).
- `make_chain(settings)`: the local client when `LOCALNET_CHAIN_URL` is set, else the real chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from horde_common.chain.base import Chain
from horde_common.chain.local import LocalChainClient
from horde_common.chain.models import (
    NOT_SERVING_IP,
    U16_MAX,
    ChainError,
    CommitResult,
    HotkeySigner,
    Hyperparameters,
    Metagraph,
    Neuron,
    RevealResult,
    SetWeightsResult,
    hotkey_signer,
    quantize_weights,
)

if TYPE_CHECKING:
    from horde_common.chain.bittensor_chain import BittensorChain
    from horde_common.config import Settings

__all__ = [
    "NOT_SERVING_IP",
    "U16_MAX",
    "BittensorChain",
    "Chain",
    "ChainError",
    "CommitResult",
    "HotkeySigner",
    "Hyperparameters",
    "LocalChainClient",
    "Metagraph",
    "Neuron",
    "RevealResult",
    "SetWeightsResult",
    "hotkey_signer",
    "make_chain",
    "quantize_weights",
]


def __getattr__(name: str) -> Any:
    if name == "BittensorChain":
        from horde_common.chain.bittensor_chain import BittensorChain

        return BittensorChain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_chain(settings: Settings, *, timeout: float | None = None) -> Chain:
    """The chain the settings point at: the localnet simulator if `LOCALNET_CHAIN_URL` is set,
    otherwise `BITTENSOR_NETWORK` through the SDK. Offline: nothing connects until first use.
    An unknown network name raises `ConfigError`."""
    if settings.LOCALNET_CHAIN_URL:
        if timeout is None:
            return LocalChainClient(settings.LOCALNET_CHAIN_URL)
        return LocalChainClient(settings.LOCALNET_CHAIN_URL, timeout=timeout)
    from horde_common.chain.bittensor_chain import BittensorChain
    from horde_common.config import ConfigError

    try:
        if timeout is None:
            return BittensorChain(settings.BITTENSOR_NETWORK)
        return BittensorChain(settings.BITTENSOR_NETWORK, timeout=timeout)
    except ChainError as exc:
        raise ConfigError(f"BITTENSOR_NETWORK: {exc}") from None
