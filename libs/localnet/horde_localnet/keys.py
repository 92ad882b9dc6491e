"""Deterministic sr25519 dev keys of the localnet: the same URI always gives the same hotkey.

Never use these outside the localnet: anyone can derive their secrets from the URIs below.
"""

from __future__ import annotations

import functools

from bittensor_core import Keypair

VALIDATOR_URI = "//horde-validator-{i}"
MINER_URI = "//horde-miner-{i}"
VALIDATOR_COLDKEY_URI = "//horde-validator-coldkey-{i}"
MINER_COLDKEY_URI = "//horde-miner-coldkey-{i}"
FACILITATOR_URI = "//horde-facilitator"


def _check(i: int) -> int:
    if i < 0:
        raise ValueError(f"dev key index must be >= 0, got {i}")
    return i


@functools.cache
def keypair_from_uri(uri: str) -> Keypair:
    return Keypair.create_from_uri(uri)


def validator_seed(i: int = 0) -> str:
    """The `HOTKEY_SEED` value that makes a localnet validator sign as `validator_keypair(i)`."""
    return VALIDATOR_URI.format(i=_check(i))


def miner_seed(i: int) -> str:
    return MINER_URI.format(i=_check(i))


def facilitator_seed() -> str:
    return FACILITATOR_URI


def validator_keypair(i: int = 0) -> Keypair:
    return keypair_from_uri(validator_seed(i))


def miner_keypair(i: int) -> Keypair:
    return keypair_from_uri(miner_seed(i))


def facilitator_keypair() -> Keypair:
    return keypair_from_uri(FACILITATOR_URI)


def validator_coldkey(i: int = 0) -> Keypair:
    return keypair_from_uri(VALIDATOR_COLDKEY_URI.format(i=_check(i)))


def miner_coldkey(i: int) -> Keypair:
    return keypair_from_uri(MINER_COLDKEY_URI.format(i=_check(i)))


def validator_hotkey(i: int = 0) -> str:
    """The ss58 address of `validator_keypair(i)`."""
    return str(validator_keypair(i).ss58_address)


def miner_hotkey(i: int) -> str:
    return str(miner_keypair(i).ss58_address)


def facilitator_hotkey() -> str:
    return str(facilitator_keypair().ss58_address)
