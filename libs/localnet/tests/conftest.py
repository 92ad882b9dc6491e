"""Fixtures of the localnet's tests: fleets of simulated miners, stopped at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from horde_localnet.miners import MinerFleet
from testing.miner_client import VALIDATOR


@pytest.fixture
async def start_fleet() -> AsyncIterator[Callable[..., Awaitable[MinerFleet]]]:
    fleets: list[MinerFleet] = []

    async def start(count: int = 1, **kwargs: Any) -> MinerFleet:
        kwargs.setdefault("known_validators", [VALIDATOR.ss58_address])
        fleet = MinerFleet(count, 0, **kwargs)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()
