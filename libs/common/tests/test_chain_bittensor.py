"""BittensorChain: offline construction, SDK neuron mapping, and the adapter contract against an
in-memory `bittensor.Substrate` fake (the SDK's own decoding runs; no network)."""

from __future__ import annotations

import ipaddress
from typing import Any

import bittensor as bt
import pytest
from bittensor_core import Keypair

from horde_common.chain import ChainError, LocalChainClient, make_chain
from horde_common.chain.bittensor_chain import BittensorChain, neuron_from_sdk, parse_axon
from horde_common.config import ConfigError, load_settings


def _sdk_neuron(**over: Any) -> bt.MetagraphNeuron:
    fields: dict[str, Any] = {
        "uid": 7,
        "hotkey": "5HotKey",
        "coldkey": "5ColdKey",
        "active": True,
        "validator_permit": True,
        "last_update": 1234,
        "block_at_registration": 10,
        "rank": 0.0,
        "trust": 0.0,
        "consensus": 0.0,
        "incentive": 0.0,
        "dividends": 0.0,
        "pruning_score": 0.0,
        "emission": bt.Balance(0, 12),
        "alpha_stake": bt.Balance(1_000 * 10**9, 12),
        "tao_stake": bt.Balance(5 * 10**9),
        "total_stake": bt.Balance(1_234_500_000_000, 12),
        "axon": "10.0.0.5:8091",
        "identity": None,
        "commitment": None,
    }
    fields.update(over)
    return bt.MetagraphNeuron(**fields)


def test_construct_is_offline() -> None:
    chain = BittensorChain("finney")
    assert repr(chain) == "BittensorChain('finney')"
    BittensorChain("ws://127.0.0.1:1")


def test_bad_network_is_chain_error() -> None:
    with pytest.raises(ChainError, match="bad bittensor network 'nowhere'"):
        BittensorChain("nowhere")


def test_neuron_from_sdk() -> None:
    n = neuron_from_sdk(_sdk_neuron())
    assert n.uid == 7
    assert n.hotkey == "5HotKey" and n.coldkey == "5ColdKey"
    assert n.stake == pytest.approx(1234.5)
    assert n.validator_permit is True
    assert (n.axon_ip, n.axon_port) == ("10.0.0.5", 8091)
    assert n.is_serving
    assert n.last_update == 1234

    idle = neuron_from_sdk(_sdk_neuron(axon=None, validator_permit=False))
    assert (idle.axon_ip, idle.axon_port) == ("0.0.0.0", 0)
    assert not idle.is_serving and not idle.validator_permit


def test_parse_axon() -> None:
    assert parse_axon("[2001:db8::1]:9000") == ("2001:db8::1", 9000)
    assert parse_axon("1.2.3.4:80") == ("1.2.3.4", 80)
    assert parse_axon(None) == ("0.0.0.0", 0)
    assert parse_axon("garbage") == ("0.0.0.0", 0)
    assert parse_axon("1.2.3.4:x") == ("0.0.0.0", 0)


def test_make_chain() -> None:
    local = make_chain(load_settings(LOCALNET_CHAIN_URL="http://127.0.0.1:9944"))
    assert isinstance(local, LocalChainClient) and local.url == "http://127.0.0.1:9944"
    real = make_chain(load_settings(BITTENSOR_NETWORK="test", LOCALNET_CHAIN_URL=None))
    assert isinstance(real, BittensorChain) and real.network == "test"
    with pytest.raises(ConfigError, match="BITTENSOR_NETWORK"):
        make_chain(load_settings(BITTENSOR_NETWORK="nowhere", LOCALNET_CHAIN_URL=None))


GRAPH = {
    "block": 4990,
    "tempo": 360,
    "last_step": 4800,
    "blocks_since_last_step": 190,
    "owner_hotkey": "5Owner",
    "owner_coldkey": "5OwnerCold",
    "network_registered_at": 1,
    "hotkeys": ["5Val", "5Miner"],
    "coldkeys": ["5ValCold", "5MinerCold"],
    "axons": [
        {"ip": 0, "port": 0, "ip_type": 4},
        {"ip": int(ipaddress.IPv4Address("10.1.2.3")), "port": 8000, "ip_type": 4},
    ],
    "validator_permit": [True, False],
    "last_update": [4900, 10],
    "total_stake": [1500 * 10**9, 3 * 10**9],
}


class FakeSubstrate:
    """Just enough of `bittensor.Substrate` for the reads the adapter makes."""

    token_symbols: dict[int, str] = {}

    def __init__(self, *, fail_connect: int = 0) -> None:
        self.fail_connect = fail_connect
        self.calls: list[tuple[Any, ...]] = []

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance(rao, netuid)

    async def connect(self) -> None:
        if self.fail_connect:
            self.fail_connect -= 1
            raise bt.RpcConnectionError("connection refused")

    async def close(self) -> None:
        pass

    async def block_number(self) -> int:
        return 5000

    async def block_time(self) -> float:
        return 12.0

    async def block_hash(self, block: int | None = None) -> str:
        return f"0x{block or 5000:064x}"

    async def get_block(self, block_number: int | None = None, block_hash: str | None = None) -> dict:
        n = block_number or 5000
        return {"header": {"number": n, "hash": f"0x{n:064x}", "parentHash": "0x00"}, "extrinsics": []}

    async def query(self, module: str, name: str, params: Any = None, block_hash: Any = None) -> Any:
        self.calls.append((module, name, params))
        values = {"CommitRevealWeightsEnabled": True, "WeightsSetRateLimit": 100, "Now": 1_700_000_000_000}
        return values.get(name)  # Uids -> None: not registered

    async def query_map(self, module: str, name: str, params: Any = None, block_hash: Any = None) -> Any:
        raise bt.ChainError("no storage maps in this fake")

    async def runtime_call(self, api: str, method: str, params: list, block_hash: Any = None) -> Any:
        self.calls.append((api, method, params, block_hash))
        return GRAPH if params == [12] else None


async def test_reads_through_the_sdk() -> None:
    fake = FakeSubstrate()
    chain = BittensorChain("finney", substrate=fake)
    try:
        assert await chain.current_block() == 5000
        assert await chain.block_hash(42) == f"0x{42:064x}"
        assert await chain.weights_rate_limit(12) == 100
        assert await chain.commit_reveal_enabled(12) is True

        mg = await chain.metagraph(12, block=4000)
        assert fake.calls[-1] == ("SubnetInfoRuntimeApi", "get_metagraph", [12], f"0x{4000:064x}")
        assert mg.netuid == 12 and mg.block == 4990
        val, miner = mg.neurons
        assert (val.hotkey, val.coldkey, val.stake, val.validator_permit) == (
            "5Val",
            "5ValCold",
            1500.0,
            True,
        )
        assert not val.is_serving
        assert (miner.axon_ip, miner.axon_port, miner.last_update) == ("10.1.2.3", 8000, 10)

        with pytest.raises(ChainError, match="subnet 99 does not exist"):
            await chain.metagraph(99)
    finally:
        await chain.aclose()


async def test_refusal_is_a_result_not_an_error() -> None:
    chain = BittensorChain("finney", substrate=FakeSubstrate())
    try:
        result = await chain.set_weights(12, [0, 1], [0.5, 1.0], 2, Keypair.create_from_uri("//nobody"))
    finally:
        await chain.aclose()
    assert not result.success
    assert result.code == "not_registered"
    assert "not registered on netuid 12" in result.message


async def test_connection_failure_is_chain_error_then_reconnects() -> None:
    chain = BittensorChain("finney", substrate=FakeSubstrate(fail_connect=1))
    try:
        with pytest.raises(ChainError, match="unreachable") as exc:
            await chain.current_block()
        assert "Traceback" not in str(exc.value)
        assert await chain.current_block() == 5000
    finally:
        await chain.aclose()
