"""The miner simulator: a fleet of WebSocket miners that play the miner side of the protocol honestly
(or in one of the failure modes of `Behaviour`).

    fleet = MinerFleet(4, executors={"spin_up-4min.gpu-24gb": 2}, behaviours={3: "decline"},
                       known_validators=[validator_hotkey])
    await fleet.start()  ...  await fleet.stop()

Run standalone with `python -m horde_localnet.miners --help`. Exports are loaded lazily so that
worker processes importing `horde_localnet.miners.solver` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .behaviours import Behaviour, BehaviourSpec
    from .fleet import MinerFleet
    from .miner import JobState, MinerConfig, MinerJob, SimulatedMiner
    from .solver import ExecutionResult, execute

_EXPORTS = {
    "Behaviour": "behaviours",
    "BehaviourSpec": "behaviours",
    "MinerFleet": "fleet",
    "JobState": "miner",
    "MinerConfig": "miner",
    "MinerJob": "miner",
    "SimulatedMiner": "miner",
    "ExecutionResult": "solver",
    "execute": "solver",
}

__all__ = [
    "Behaviour",
    "BehaviourSpec",
    "ExecutionResult",
    "JobState",
    "MinerConfig",
    "MinerFleet",
    "MinerJob",
    "SimulatedMiner",
    "execute",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
