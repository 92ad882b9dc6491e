"""The pure rules of the metagraph sync: what is refused, what only loses its axon, and the rows."""

from __future__ import annotations

import math

import bittensor_core
import pytest

from horde_common.chain import Metagraph, Neuron
from horde_common.config import ConfigError, load_settings
from horde_scheduler.metagraph_rows import (
    MAX_NEURONS,
    MetagraphRefused,
    axon_of,
    is_ss58,
    metagraph_problems,
    snapshot_rows,
    sync_target_block,
)
from horde_scheduler.metagraph_sync import EVERY_BLOCKS, SyncParams, params_from_settings


def key(i: int) -> str:
    return str(bittensor_core.ss58_encode(i.to_bytes(32, "big")))


def neuron(uid: int, **kw: object) -> Neuron:
    fields: dict[str, object] = {
        "uid": uid,
        "hotkey": key(uid + 1),
        "coldkey": key(10_000 + uid),
        "stake": float(uid),
        "axon_ip": "10.0.0.1",
        "axon_port": 8000 + uid,
    }
    fields.update(kw)
    # `model_construct` skips pydantic's checks: an adapter could hand us exactly this.
    return Neuron.model_construct(**fields)  # type: ignore[arg-type]


def metagraph(neurons: list[Neuron], block: int = 100, netuid: int = 12) -> Metagraph:
    return Metagraph.model_construct(netuid=netuid, block=block, neurons=neurons)


def test_good_metagraph_becomes_rows_in_uid_order() -> None:
    mg = metagraph([neuron(2), neuron(0, axon_ip="0.0.0.0", axon_port=0), neuron(1, axon_ip="::1")])
    snap = snapshot_rows(mg, netuid=12, block=100)
    assert [r.uid for r in snap.rows] == [0, 1, 2]
    first, second, third = snap.rows
    assert (first.axon_ip, first.axon_ip_type, first.is_serving) == ("0.0.0.0", 4, False)
    assert (second.axon_ip, second.axon_ip_type, second.axon_port, second.is_serving) == (
        "::1",
        6,
        8001,
        True,
    )
    assert third.as_dict() == {
        "block": 100,
        "uid": 2,
        "hotkey": key(3),
        "coldkey": key(10_002),
        "stake": 2.0,
        "validator_permit": False,
        "axon_ip": "10.0.0.1",
        "axon_ip_type": 4,
        "axon_port": 8002,
        "is_serving": True,
    }
    assert snap.serving == 2 and snap.unserved == ()


@pytest.mark.parametrize(
    ("ip", "port"),
    [("not-an-ip", 8000), ("1.2.3.4", 0), ("1.2.3.4", 70000), ("::", 8000), (None, 8000), ("1.2.3.4", "80")],
)
def test_a_bad_axon_only_stops_that_neuron_serving(ip: object, port: object) -> None:
    snap = snapshot_rows(metagraph([neuron(0), neuron(1, axon_ip=ip, axon_port=port)]), netuid=12, block=100)
    assert snap.unserved == (1,)
    bad = snap.rows[1]
    assert (bad.axon_ip, bad.axon_port, bad.is_serving, bad.hotkey) == ("0.0.0.0", 0, False, key(2))
    assert snap.rows[0].is_serving


def test_axon_of() -> None:
    assert axon_of("127.0.0.1", 9100) == ("127.0.0.1", 4, 9100, True)  # localnet miners are loopback
    assert axon_of("0.0.0.0", 0) == ("0.0.0.0", 4, 0, False)
    assert axon_of("0.0.0.0", 123) == ("0.0.0.0", 4, 123, False)
    assert axon_of("2001:db8::1", 1) == ("2001:db8::1", 6, 1, True)
    assert axon_of("1.2.3.4", True) is None


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (neuron(1, hotkey="not-a-key"), "hotkey is not an SS58"),
        (neuron(1, hotkey=key(2)[:-1] + ("A" if key(2)[-1] != "A" else "B")), "hotkey is not an SS58"),
        (neuron(1, hotkey=""), "hotkey is not an SS58"),
        (neuron(1, coldkey="nope"), "coldkey is not an SS58"),
        (neuron(1, stake=-1.0), "negative or not finite"),
        (neuron(1, stake=math.nan), "negative or not finite"),
        (neuron(1, stake=math.inf), "negative or not finite"),
        (neuron(1, stake=2e9), "above"),
        (neuron(1, stake="12"), "not a number"),
        (neuron(MAX_NEURONS), "outside 0..1023"),
        (neuron(-1), "outside"),
        (neuron(0, hotkey=key(99)), "uid 0 appears more than once"),
        (neuron(5, hotkey=key(1)), "appears more than once"),
    ],
)
def test_chain_guaranteed_fields_refuse_the_whole_snapshot(bad: Neuron, why: str) -> None:
    mg = metagraph([neuron(0), bad])
    with pytest.raises(MetagraphRefused, match=why):
        snapshot_rows(mg, netuid=12, block=100)


def test_wrong_subnet_block_or_emptiness_is_refused() -> None:
    assert metagraph_problems(metagraph([neuron(0)], netuid=3), netuid=12, block=100) == [
        "asked for subnet 12, got subnet 3"
    ]
    assert metagraph_problems(metagraph([neuron(0)], block=99), netuid=12, block=100) == [
        "asked for block 100, got block 99"
    ]
    assert metagraph_problems(metagraph([]), netuid=12, block=100) == ["no neurons"]


def test_oversize_is_refused_on_the_count_alone() -> None:
    too_many = [neuron(i) for i in range(MAX_NEURONS + 1)]
    problems = metagraph_problems(metagraph(too_many), netuid=12, block=100)
    assert problems == [f"{MAX_NEURONS + 1} neurons, more than the bound of {MAX_NEURONS}"]
    # A full subnet-12 metagraph (256 uids) is fine, and so is the bound itself.
    assert metagraph_problems(metagraph(too_many[:256]), netuid=12, block=100) == []
    assert metagraph_problems(metagraph(too_many[:MAX_NEURONS]), netuid=12, block=100) == []


def test_refusal_message_is_short() -> None:
    bad = [neuron(i, hotkey=f"bad{i}") for i in range(50)]
    with pytest.raises(MetagraphRefused) as info:
        snapshot_rows(metagraph(bad), netuid=12, block=100)
    assert len(info.value.problems) == 50
    assert str(info.value).endswith("(+45 more)")
    assert len(str(info.value)) < 400


def test_is_ss58() -> None:
    assert is_ss58(key(1))
    assert not is_ss58(None)
    assert not is_ss58("x" * 100)


def test_sync_target_block_is_on_the_grid() -> None:
    assert [sync_target_block(h, 5) for h in (100, 101, 104, 105)] == [100, 100, 100, 105]
    assert sync_target_block(7, 1) == 7
    with pytest.raises(ValueError):
        sync_target_block(7, 0)


def test_params_defaults_localnet_and_overrides() -> None:
    prod = load_settings(LOCALNET_CHAIN_URL=None)
    assert params_from_settings(prod) == SyncParams()
    assert SyncParams().every_blocks == EVERY_BLOCKS
    local = load_settings(LOCALNET_CHAIN_URL="http://127.0.0.1:9944")
    assert params_from_settings(local).every_blocks == 1
    over = params_from_settings(
        load_settings(METAGRAPH_SYNC_EVERY_BLOCKS="10", METAGRAPH_SYNC_POLL_INTERVAL_S="2.5")
    )
    assert (over.every_blocks, over.poll_interval_s) == (10, 2.5)
    for bad in ({"METAGRAPH_SYNC_EVERY_BLOCKS": "0"}, {"METAGRAPH_SYNC_EVERY_BLOCKS": "x"}):
        with pytest.raises(ConfigError, match="METAGRAPH_SYNC_EVERY_BLOCKS"):
            load_settings(**bad)
    with pytest.raises(ConfigError, match="METAGRAPH_SYNC_POLL_INTERVAL_S"):
        load_settings(METAGRAPH_SYNC_POLL_INTERVAL_S="-1")
