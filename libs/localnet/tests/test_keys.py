from __future__ import annotations

import pytest
from bittensor_core import Keypair, verify

from horde_localnet import keys


def test_dev_keys_are_deterministic() -> None:
    # Fixed addresses: if these change, every localnet file and doc that names a hotkey breaks.
    assert keys.validator_hotkey(0) == "5EAT8YMU6MCvA7YKH6fD4yeV4dKxAn6vHXSCmfCYVLo4Mw2A"
    assert keys.validator_hotkey(0) == Keypair.create_from_uri("//horde-validator-0").ss58_address
    assert keys.miner_hotkey(3) == Keypair.create_from_uri("//horde-miner-3").ss58_address
    assert keys.facilitator_hotkey() == Keypair.create_from_uri("//horde-facilitator").ss58_address


def test_dev_keys_are_distinct() -> None:
    hotkeys = (
        [keys.validator_hotkey(i) for i in range(4)]
        + [keys.miner_hotkey(i) for i in range(16)]
        + [keys.facilitator_hotkey()]
        + [str(keys.validator_coldkey(i).ss58_address) for i in range(4)]
        + [str(keys.miner_coldkey(i).ss58_address) for i in range(16)]
    )
    assert len(set(hotkeys)) == len(hotkeys)


def test_seed_gives_the_validator_key() -> None:
    seed = keys.validator_seed(1)
    assert seed == "//horde-validator-1"
    assert Keypair.create_from_uri(seed).ss58_address == keys.validator_hotkey(1)
    assert keys.miner_seed(2) == "//horde-miner-2"
    assert keys.facilitator_seed() == "//horde-facilitator"


def test_keys_sign() -> None:
    kp = keys.miner_keypair(0)
    sig = kp.sign(b"hello")
    assert verify(b"hello", sig, keys.miner_hotkey(0))
    assert not verify(b"hello", sig, keys.miner_hotkey(1))


def test_negative_index_rejected() -> None:
    with pytest.raises(ValueError):
        keys.miner_keypair(-1)
