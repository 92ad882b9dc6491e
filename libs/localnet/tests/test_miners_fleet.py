"""The miner simulator over real sockets: the fleet against the localnet metagraph, behaviour and CLI parsing, job UUIDs per validator."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from horde_localnet import keys
from horde_localnet.chain_spec import load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH
from horde_localnet.miners import Behaviour, BehaviourSpec, MinerFleet
from testing.miner_client import GPU, OTHER_VALIDATOR, VALIDATOR, accept_and_ready, make_job, open_client


def test_fleet_matches_the_localnet_metagraph() -> None:
    spec = load_spec(DEFAULT_METAGRAPH_PATH)
    fleet = MinerFleet.from_spec(spec)
    neurons = {n.hotkey: n for n in spec.build_neurons()}
    assert len(fleet.miners) == spec.miners.count - len(spec.miners.not_serving)
    for miner in fleet.miners:
        neuron = neurons[miner.hotkey]
        assert miner.hotkey == keys.miner_hotkey(miner.index)
        assert (neuron.axon_ip, neuron.axon_port) == (miner.host, miner.port)
        assert miner.config.known_validators == {keys.validator_hotkey(v.index) for v in spec.validators}
        extra = spec.miners.model_extra or {}
        assert {str(k): v for k, v in miner.config.executors.items()} == extra["executors"]


def test_behaviour_parsing() -> None:
    assert BehaviourSpec.parse("slow:2.5") == BehaviourSpec(Behaviour.SLOW, 2.5)
    assert BehaviourSpec.parse("slow").final_delay == 60.0
    assert BehaviourSpec.parse(Behaviour.DECLINE).kind is Behaviour.DECLINE
    with pytest.raises(ValueError, match="unknown miner behaviour"):
        BehaviourSpec.parse("lazy")
    with pytest.raises(ValueError, match="unknown executor class"):
        MinerFleet(1, executors={"gpu-9000": 1})


def test_cli_arguments() -> None:
    from horde_localnet.miners.__main__ import build_parser

    args = build_parser().parse_args(
        [
            "--count",
            "3",
            "--base-port",
            "0",
            "--executors",
            "spin_up-4min.gpu-24gb=2",
            "--behaviour",
            "1=slow:3",
        ]
    )
    assert args.count == 3 and args.executors == {"spin_up-4min.gpu-24gb": 2}
    assert args.behaviour == [(1, BehaviourSpec(Behaviour.SLOW, 3.0))]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--behaviour", "x=honest"])


async def test_job_uuid_is_per_validator(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    """Same job uuid from two validators: two separate jobs (job ids are per validator)."""
    fleet = await start_fleet(1, executors={GPU: 2}, known_validators=None)
    miner = fleet.miner(0)
    a = await open_client(miner)
    b = await open_client(miner, OTHER_VALIDATOR)
    await a.authenticate()
    await b.authenticate()
    gen = make_job(seed=3)
    await accept_and_ready(a, gen)
    await accept_and_ready(b, gen)
    assert len(miner.jobs) == 2
    assert {k[0] for k in miner.jobs} == {VALIDATOR.ss58_address, OTHER_VALIDATOR.ss58_address}
    assert uuid.UUID(next(iter(miner.jobs))[1]) == gen.job_uuid
    await a.ws.close()
    await b.ws.close()
