"""The localnet metagraph file (YAML): chain parameters, validators, miners, extra neurons.

```yaml
netuid: 12
chain:                  # all optional
  start_block: 700      # head block when the simulator starts
  block_interval: 0.2   # seconds per block
  tempo: 360
  weights_rate_limit: 100
  commit_reveal_enabled: true
  commit_reveal_interval: 722   # legacy commit-reveal interval in blocks (docs/weights.md §8)
  min_allowed_weights: 0
  max_weight_limit: 65535       # u16; 65535 = no cap
validators:             # dev validator keys by index: uid order = list order
  - {index: 0, stake: 50000}
miners:                 # dev miner keys 0..count-1; miner i serves host:base_port+i
  count: 8
  base_port: 9100
  not_serving: [7]      # indices registered without an axon (ip 0.0.0.0)
  executors: {...}      # anything else here is for the miner fleet, ignored by the chain
neurons:                # explicit extra neurons, after the miners
  - {hotkey: 5F..., stake: 10, axon_ip: 127.0.0.1, axon_port: 9999}
```

Uids: validators first, then miners, then explicit neurons. Other top-level sections are allowed
(other simulators read the same file) and ignored here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from horde_common.chain import NOT_SERVING_IP, Hyperparameters, Neuron
from horde_common.chain.models import DEFAULT_COMMIT_REVEAL_INTERVAL
from horde_localnet import keys


class SpecError(Exception):
    """A bad metagraph file; `str()` is one line naming the file and the problem."""


class ChainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_block: int = Field(0, ge=0)
    block_interval: float = Field(0.2, gt=0, le=60)
    genesis: str = "horde-localnet"  # seeds the block hashes
    tempo: int = Field(360, ge=1)
    weights_rate_limit: int = Field(100, ge=0)
    commit_reveal_enabled: bool = True
    reveal_period_epochs: int = Field(1, ge=0)
    min_allowed_weights: int = Field(0, ge=0)
    max_weight_limit: int = Field(65535, ge=0, le=65535)
    weights_version: int = Field(0, ge=0)
    # Subnet 12's legacy commit-reveal interval: two 361-block epochs (docs/weights.md §8).
    commit_reveal_interval: int = Field(DEFAULT_COMMIT_REVEAL_INTERVAL, ge=0)


class ValidatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    stake: float = Field(0.0, ge=0)
    validator_permit: bool = True
    axon_ip: str = NOT_SERVING_IP
    axon_port: int = Field(0, ge=0, le=65535)


class MinersSpec(BaseModel):
    """Extra keys (executors, behaviours, ...) are kept in `model_extra` for the miner fleet."""

    model_config = ConfigDict(extra="allow")

    count: int = Field(0, ge=0, le=4096)
    host: str = "127.0.0.1"
    base_port: int = Field(9100, ge=1, le=65535)
    stake: float = Field(0.0, ge=0)
    not_serving: list[int] = Field(default_factory=list)


class NeuronSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hotkey: str
    coldkey: str = ""
    stake: float = Field(0.0, ge=0)
    validator_permit: bool = False
    axon_ip: str = NOT_SERVING_IP
    axon_port: int = Field(0, ge=0, le=65535)
    last_update: int = Field(0, ge=0)


class LocalnetSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    netuid: int = Field(12, ge=0, le=65535)
    chain: ChainParams = Field(default_factory=ChainParams)
    validators: list[ValidatorSpec] = Field(default_factory=list)
    miners: MinersSpec = Field(default_factory=MinersSpec)
    neurons: list[NeuronSpec] = Field(default_factory=list)

    def hyperparameters(self) -> Hyperparameters:
        c = self.chain
        return Hyperparameters(
            netuid=self.netuid,
            tempo=c.tempo,
            weights_rate_limit=c.weights_rate_limit,
            commit_reveal_enabled=c.commit_reveal_enabled,
            reveal_period_epochs=c.reveal_period_epochs,
            min_allowed_weights=c.min_allowed_weights,
            max_weight_limit=c.max_weight_limit,
            weights_version=c.weights_version,
            commit_reveal_interval=c.commit_reveal_interval,
        )

    def build_neurons(self) -> list[Neuron]:
        """The neurons the file describes, uid order; raises `SpecError` on duplicate hotkeys."""
        out: list[Neuron] = []
        for v in self.validators:
            out.append(
                Neuron(
                    uid=len(out),
                    hotkey=keys.validator_hotkey(v.index),
                    coldkey=str(keys.validator_coldkey(v.index).ss58_address),
                    stake=v.stake,
                    validator_permit=v.validator_permit,
                    axon_ip=v.axon_ip,
                    axon_port=v.axon_port,
                )
            )
        m = self.miners
        for i in range(m.count):
            serving = i not in m.not_serving
            port = m.base_port + i
            if serving and port > 65535:
                raise SpecError(f"miner {i}: port {port} is past 65535")
            out.append(
                Neuron(
                    uid=len(out),
                    hotkey=keys.miner_hotkey(i),
                    coldkey=str(keys.miner_coldkey(i).ss58_address),
                    stake=m.stake,
                    axon_ip=m.host if serving else NOT_SERVING_IP,
                    axon_port=port if serving else 0,
                )
            )
        for n in self.neurons:
            out.append(Neuron(uid=len(out), **n.model_dump()))
        seen: set[str] = set()
        for n in out:
            if n.hotkey in seen:
                raise SpecError(f"hotkey {n.hotkey} is registered twice")
            seen.add(n.hotkey)
        return out


def parse_spec(data: Any, source: str = "metagraph") -> LocalnetSpec:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level")
    try:
        spec = LocalnetSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '?'}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"{source}: {problems}") from None
    spec.build_neurons()  # fail early on duplicates
    return spec


def load_spec(path: str | Path) -> LocalnetSpec:
    """Read and validate a metagraph file; any problem is a one-line `SpecError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{p}: not valid YAML{where}") from None
    return parse_spec(data, str(p))
