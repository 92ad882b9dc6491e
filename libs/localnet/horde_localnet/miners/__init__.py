"""The miner simulator: a fleet of WebSocket miners that play the miner side of the protocol honestly
(or in one of the failure modes of `Behaviour`).

    fleet = MinerFleet(4, executors={"spin_up-4min.gpu-24gb": 2}, behaviours={3: "decline"},
                       known_validators=[validator_hotkey])
    await fleet.start()  ...  await fleet.stop()

After a reconnect the miners behave as the November 2024 miner does (`ReconnectMode.REAL`): a new
connection joins the validator's unfinished jobs as soon as it opens and gets their results pushed
as they come, before it authenticates. `MinerFleet(..., reconnect="legacy")` (CLI `--reconnect
legacy`) keeps the earlier behaviour: nothing until the validator re-authenticates.

`trusted_miner(validator_hotkey)` is the validator's own trusted miner (docs/crossval.md §8); LLM
jobs (solver, prompt generator) run in `llm_jobs` with real HTTP transfers.

Run standalone with `python -m horde_localnet.miners --help`. Exports are loaded lazily so that
worker processes importing `horde_localnet.miners.solver` stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .behaviours import Behaviour, BehaviourSpec, ReconnectMode
    from .fleet import MinerFleet
    from .miner import JobState, MinerConfig, MinerJob, SimulatedMiner
    from .solver import ExecutionResult, execute
    from .trusted import trusted_miner

_EXPORTS = {
    "Behaviour": "behaviours",
    "BehaviourSpec": "behaviours",
    "ReconnectMode": "behaviours",
    "MinerFleet": "fleet",
    "JobState": "miner",
    "MinerConfig": "miner",
    "MinerJob": "miner",
    "SimulatedMiner": "miner",
    "ExecutionResult": "solver",
    "execute": "solver",
    "trusted_miner": "trusted",
}

__all__ = [
    "Behaviour",
    "BehaviourSpec",
    "ExecutionResult",
    "JobState",
    "MinerConfig",
    "MinerFleet",
    "MinerJob",
    "ReconnectMode",
    "SimulatedMiner",
    "execute",
    "trusted_miner",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
