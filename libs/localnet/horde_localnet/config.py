"""The localnet topology: which ports and how many of each simulated party.

One frozen `Topology` value; `DEFAULT_TOPOLOGY` is what `horde localnet up` uses. The default
metagraph file (`metagraph.yaml` beside this module) agrees with these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_METAGRAPH_PATH = Path(__file__).with_name("metagraph.yaml")


@dataclass(frozen=True)
class Topology:
    host: str = "127.0.0.1"
    netuid: int = 12

    # chain simulator
    chain_port: int = 9944
    block_interval: float = 0.2
    metagraph_path: Path = DEFAULT_METAGRAPH_PATH

    # miner fleet: miner i listens on miner_base_port + i
    miner_count: int = 8
    miner_base_port: int = 9100

    # facilitator simulator and S3 server (moto_server; started by `horde localnet up` when nothing
    # listens there) with the two cross-validation buckets (docs/crossval.md §1, §8)
    facilitator_port: int = 9300
    s3_port: int = 9000
    s3_bucket_prompts: str = "horde-prompts"
    s3_bucket_answers: str = "horde-answers"

    # the trusted miner (docs/crossval.md §8): one simulated miner in trusted mode, not on the chain,
    # serving only the validator under test. Its dev key index is far above any fleet's miners, and
    # its port clear of the fleet's (9100 + i) and of the facilitator's.
    trusted_miner_port: int = 9250
    trusted_miner_index: int = 1000

    # the validator under test signs as dev validator key `validator_index`
    validator_index: int = 0
    validator_count: int = 2

    # validator services (same as docs/architecture.md)
    service_ports: dict[str, int] = field(
        default_factory=lambda: {
            "scheduler": 8001,
            "job-runner": 8002,
            "weights": 8003,
            "facilitator-gateway": 8004,
            "cross-validator": 8005,
        }
    )

    @property
    def chain_url(self) -> str:
        return f"http://{self.host}:{self.chain_port}"

    @property
    def facilitator_url(self) -> str:
        return f"ws://{self.host}:{self.facilitator_port}/ws/v0/"

    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def miner_port(self, i: int) -> int:
        if not 0 <= i < self.miner_count:
            raise ValueError(f"miner index {i} out of range 0..{self.miner_count - 1}")
        return self.miner_base_port + i


DEFAULT_TOPOLOGY = Topology()
