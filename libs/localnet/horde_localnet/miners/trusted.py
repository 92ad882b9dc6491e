"""The trusted miner: a simulated miner in trusted mode, for cross-validation (docs/crossval.md §8).

The validator's owner runs it beside the validator, off the chain: it serves one validator only and
does not check the miner hotkey of auth payloads and receipts (`MinerConfig.trusted`). The
cross-validator runs prompt generation and answering on it (`always_on.llm.a6000` executors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from horde_common.protocol.miner import ExecutorClass
from horde_localnet import keys
from horde_localnet.config import DEFAULT_TOPOLOGY

from .behaviours import BehaviourSpec
from .config import MinerConfig
from .fleet import parse_executors
from .miner import SimulatedMiner

# One LLM executor: generation and answering never run at once (the validator serialises them).
TRUSTED_EXECUTORS: dict[ExecutorClass, int] = {ExecutorClass.ALWAYS_ON_LLM_A6000: 1}


def trusted_miner(
    validator_hotkey: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    index: int = DEFAULT_TOPOLOGY.trusted_miner_index,
    executors: Mapping[ExecutorClass | str, int] | None = None,
    behaviour: BehaviourSpec | str | None = None,
    **config: Any,
) -> SimulatedMiner:
    """A trusted miner for `validator_hotkey`, signing with dev miner key `index` (not started).

    `config` holds further `MinerConfig` fields (LLM download limits, spin-up delay, ...).
    """
    miner_config = MinerConfig(
        executors=parse_executors(executors or TRUSTED_EXECUTORS),
        behaviour=BehaviourSpec.parse(behaviour or BehaviourSpec()),
        known_validators=frozenset({validator_hotkey}),
        trusted=True,
        **config,
    )
    return SimulatedMiner(index, keys.miner_keypair(index), host=host, port=port, config=miner_config)


def trusted_miner_hotkey(index: int = DEFAULT_TOPOLOGY.trusted_miner_index) -> str:
    """The localnet trusted miner's hotkey (`TRUSTED_MINER_KEY`)."""
    return keys.miner_hotkey(index)
