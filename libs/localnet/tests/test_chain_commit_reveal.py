"""Legacy (salted) commit-reveal on the localnet chain, through `LocalChainClient` over HTTP.

The head block is driven by a hand-moved clock (one second per block), so every block number
below is exact and nothing waits on real time. Rules: `docs/weights.md` §8.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from bittensor_core import Keypair

from horde_common.chain import ChainError, LocalChainClient
from horde_common.chain.commit_hash import commit_hash
from horde_localnet import keys
from horde_localnet.chain import RunningChain, running_chain
from horde_localnet.chain_spec import parse_spec
from horde_localnet.chain_weights import interval_start, may_commit, reveal_window, within_max_weight

NETUID = 12
INTERVAL = 722  # subnet 12's legacy commit-reveal interval
START = 1000
VERSION_KEY = 2
UIDS = [2, 3, 4, 5]
VALUES = [16384, 32768, 49151, 65535]
SALT = [1, 2, 3, 4, 5, 6, 7, 8]
COMMIT_BLOCK = 1234  # interval [722, 1444): reveal in [1444, 2166)


class ManualClock:
    """A clock the test moves: with one second per block, `at(n)` makes block n the head."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def at(self, block: int) -> None:
        assert block >= START
        self.t = float(block - START)


@dataclass
class Chain:
    rc: RunningChain
    client: LocalChainClient
    clock: ManualClock


def _spec(**chain: Any) -> Any:
    params: dict[str, Any] = {
        "start_block": START,
        "block_interval": 1.0,
        "tempo": 360,
        "weights_rate_limit": 100,
        "commit_reveal_enabled": True,
        "commit_reveal_interval": INTERVAL,
        "min_allowed_weights": 2,
        **chain,
    }
    return parse_spec(
        {
            "netuid": NETUID,
            "chain": params,
            "validators": [{"index": 0, "stake": 50000}, {"index": 1, "stake": 10}],
            "miners": {"count": 4},
        }
    )


async def _chain(**params: Any) -> AsyncIterator[Chain]:
    clock = ManualClock()
    async with running_chain(_spec(**params), clock=clock) as rc:
        async with LocalChainClient(rc.url, timeout=5) as client:
            yield Chain(rc, client, clock)


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    async for c in _chain():
        yield c


VALIDATOR = keys.validator_keypair(0)


def _hash(
    uids: list[int] = UIDS, values: list[int] = VALUES, salt: list[int] = SALT, key: Any = VALIDATOR
) -> str:
    return commit_hash(bytes(key.public_key), NETUID, uids, values, salt, VERSION_KEY)


async def _commit(c: Chain, block: int = COMMIT_BLOCK, digest: str | None = None) -> None:
    c.clock.at(block)
    result = await c.client.commit_weights(NETUID, digest or _hash(), VALIDATOR)
    assert result.success, result.message
    assert result.block == block


# ------------------------------------------------------------------------------ the happy path


async def test_hyperparameter_reads(chain: Chain) -> None:
    client = chain.client
    assert await client.commit_reveal_interval(NETUID) == INTERVAL
    assert await client.min_allowed_weights(NETUID) == 2
    assert await client.max_weight_limit(NETUID) == 65535
    assert await client.commit_reveal_enabled(NETUID) is True


async def test_commit_then_reveal_in_the_next_interval_records_the_weights(chain: Chain) -> None:
    client = chain.client
    digest = _hash()
    chain.clock.at(COMMIT_BLOCK)
    committed = await client.commit_weights(NETUID, bytes.fromhex(digest[2:]), VALIDATOR)
    assert committed.success, committed.message
    assert (committed.block, committed.commit_hash) == (COMMIT_BLOCK, digest)
    assert "reveal in blocks 1444..2165" in committed.message
    (pending,) = (await client.pending_commits(NETUID)).commits
    assert (pending.hotkey, pending.commit_hash, pending.block) == (VALIDATOR.ss58_address, digest, 1234)
    assert (await client.weights(NETUID)).records == []

    chain.clock.at(1444)
    # The salt as bytes is the same Vec<u16> of ints 0..255.
    revealed = await client.reveal_weights(NETUID, UIDS, VALUES, bytes(SALT), VERSION_KEY, VALIDATOR)
    assert revealed.success, revealed.message
    assert revealed.block == 1444

    (record,) = (await client.weights(NETUID, hotkey=VALIDATOR.ss58_address)).records
    assert (record.uid, record.uids, record.weights, record.version_key) == (0, UIDS, VALUES, VERSION_KEY)
    assert record.committed and (record.block, record.reveal_block) == (COMMIT_BLOCK, 1444)
    assert (await client.metagraph(NETUID)).neurons[0].last_update == 1444
    assert (await client.pending_commits(NETUID)).commits == []

    again = await client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
    assert not again.success and again.code == "no_commit"


async def test_zero_values_are_revealed_as_committed(chain: Chain) -> None:
    """The reference commits zeros too (the uid list unchanged); the chain takes them."""
    values = [0, 0, 1, 65535]
    await _commit(chain, digest=_hash(values=values))
    chain.clock.at(1500)
    result = await chain.client.reveal_weights(NETUID, UIDS, values, SALT, VERSION_KEY, VALIDATOR)
    assert result.success, result.message
    assert (await chain.client.weights(NETUID)).records[-1].weights == values


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("change", "value"),
    [("salt", [1, 2, 3, 4, 5, 6, 7, 9]), ("values", [16384, 32768, 49151, 65534]), ("version_key", 3)],
)
async def test_a_reveal_that_does_not_hash_to_the_commit_is_refused(
    chain: Chain, change: str, value: Any
) -> None:
    await _commit(chain)
    chain.clock.at(1444)
    args: dict[str, Any] = {
        "uids": UIDS,
        "values": VALUES,
        "salt": SALT,
        "version_key": VERSION_KEY,
        change: value,
    }
    bad = await chain.client.reveal_weights(NETUID, keypair=VALIDATOR, **args)
    assert not bad.success and bad.code == "hash_mismatch", bad.message
    assert (await chain.client.weights(NETUID)).records == []
    # The commit stays: the right cleartext is still accepted in the window.
    good = await chain.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
    assert good.success, good.message


@pytest.mark.parametrize(
    ("block", "code"),
    [
        (1234, "reveal_too_early"),  # same interval as the commit
        (1443, "reveal_too_early"),  # last block of the commit's interval
        (1444, None),  # first block of the next interval
        (2165, None),  # its last block
        (2166, "reveal_too_late"),
        (3000, "reveal_too_late"),
    ],
)
async def test_reveal_only_in_the_interval_after_the_commit(
    chain: Chain, block: int, code: str | None
) -> None:
    await _commit(chain)
    chain.clock.at(block)
    result = await chain.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
    if code is None:
        assert result.success, result.message
    else:
        assert not result.success and result.code == code
        assert "1444..2165" in result.message
        assert (await chain.client.weights(NETUID)).records == []


async def test_reveal_without_a_commit_is_refused(chain: Chain) -> None:
    chain.clock.at(1444)
    result = await chain.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
    assert not result.success and result.code == "no_commit"


async def test_one_commit_per_interval_and_a_later_one_replaces_it(chain: Chain) -> None:
    await _commit(chain)
    chain.clock.at(1443)
    second = await chain.client.commit_weights(NETUID, _hash(salt=[9] * 8), VALIDATOR)
    assert not second.success and second.code == "commit_not_allowed"

    newer = _hash(salt=[9] * 8)
    await _commit(chain, block=1500, digest=newer)
    (pending,) = (await chain.client.pending_commits(NETUID)).commits
    assert (pending.commit_hash, pending.block) == (newer, 1500)
    chain.clock.at(2166)  # the old commit's window is gone, the new one's starts
    old = await chain.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
    assert not old.success and old.code == "hash_mismatch"
    new = await chain.client.reveal_weights(NETUID, UIDS, VALUES, [9] * 8, VERSION_KEY, VALIDATOR)
    assert new.success, new.message


async def test_reveal_is_rate_limited() -> None:
    async for c in _chain(weights_rate_limit=1000):
        await _commit(c)
        c.clock.at(1444)
        first = await c.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
        assert first.success, first.message

        await _commit(c, block=1500)
        c.clock.at(2166)  # 722 blocks after the last update, the limit is 1000
        limited = await c.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
        assert not limited.success and limited.code == "rate_limited"
        assert "retry in 278 blocks" in limited.message
        c.clock.at(2444)  # exactly 1000 blocks later, still in the reveal interval
        late = await c.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
        assert late.success, late.message
        assert len((await c.client.weights(NETUID)).records) == 2


async def test_reveal_needs_min_allowed_weights(chain: Chain) -> None:
    await _commit(chain, digest=_hash(uids=[2], values=[65535]))
    chain.clock.at(1444)
    result = await chain.client.reveal_weights(NETUID, [2], [65535], SALT, VERSION_KEY, VALIDATOR)
    assert not result.success and result.code == "invalid_argument"
    assert "needs at least 2 weights, got 1" in result.message
    assert len((await chain.client.pending_commits(NETUID)).commits) == 1


async def test_reveal_respects_the_max_weight_limit() -> None:
    async for c in _chain(max_weight_limit=32768):  # no uid may get more than ~half
        await _commit(c, digest=_hash(uids=[2, 3], values=[65535, 1]))
        c.clock.at(1444)
        capped = await c.client.reveal_weights(NETUID, [2, 3], [65535, 1], SALT, VERSION_KEY, VALIDATOR)
        assert not capped.success and capped.code == "invalid_argument"
        assert "max weight limit 32768/65535" in capped.message


class _Impostor:
    """Claims the validator's hotkey but signs with another key."""

    ss58_address = keys.validator_hotkey(0)

    def __init__(self) -> None:
        self._key = Keypair.create_from_uri("//impostor")

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._key.sign(payload))


async def test_writes_are_signed_by_a_registered_hotkey(chain: Chain) -> None:
    chain.clock.at(COMMIT_BLOCK)
    forged = await chain.client.commit_weights(NETUID, _hash(), _Impostor())
    assert not forged.success and forged.code == "bad_signature"
    stranger_key = Keypair.create_from_uri("//stranger")
    stranger = await chain.client.commit_weights(NETUID, _hash(key=stranger_key), stranger_key)
    assert not stranger.success and stranger.code == "not_registered"

    await _commit(chain)
    chain.clock.at(1444)
    forged_reveal = await chain.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, _Impostor())
    assert not forged_reveal.success and forged_reveal.code == "bad_signature"
    assert len((await chain.client.pending_commits(NETUID)).commits) == 1


async def test_reveal_needs_a_validator_permit(chain: Chain) -> None:
    no_permit = keys.validator_keypair(1)  # uid 1: registered, its permit is taken away here
    await chain.client.replace_neurons(
        NETUID,
        [
            n.model_copy(update={"validator_permit": n.uid == 0})
            for n in (await chain.client.metagraph(NETUID)).neurons
        ],
    )
    chain.clock.at(COMMIT_BLOCK)
    digest = _hash(key=no_permit)
    assert (await chain.client.commit_weights(NETUID, digest, no_permit)).success
    chain.clock.at(1444)
    result = await chain.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, no_permit)
    assert not result.success and result.code == "not_authorized"


async def test_commit_refused_when_commit_reveal_is_off() -> None:
    async for c in _chain(commit_reveal_enabled=False):
        c.clock.at(COMMIT_BLOCK)
        result = await c.client.commit_weights(NETUID, _hash(), VALIDATOR)
        assert not result.success and result.code == "commit_reveal_disabled"
        reveal = await c.client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)
        assert not reveal.success and reveal.code == "commit_reveal_disabled"


async def test_arguments_the_chain_cannot_encode_never_reach_it(chain: Chain) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        await chain.client.commit_weights(NETUID, b"\x01" * 31, VALIDATOR)
    assert (await chain.client.pending_commits(NETUID)).commits == []
    for uids, values, salt in (([2, 3], [1], SALT), ([2], [65536], SALT), ([2], [1], [-1])):
        with pytest.raises(ValueError):
            await chain.client.reveal_weights(NETUID, uids, values, salt, VERSION_KEY, VALIDATOR)
    with pytest.raises(TypeError):
        await chain.client.reveal_weights(NETUID, [2], [1.5], SALT, VERSION_KEY, VALIDATOR)  # type: ignore[list-item]


async def test_transport_failure_is_an_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with LocalChainClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(ChainError, match="unreachable"):
            await client.commit_weights(NETUID, _hash(), VALIDATOR)
        with pytest.raises(ChainError, match="unreachable"):
            await client.reveal_weights(NETUID, UIDS, VALUES, SALT, VERSION_KEY, VALIDATOR)


# ------------------------------------------------------------------------------ the arithmetic


def test_interval_grid() -> None:
    assert interval_start(1234, INTERVAL) == 722
    assert reveal_window(1234, INTERVAL) == (1444, 2166)
    assert reveal_window(1443, INTERVAL) == (1444, 2166)
    assert reveal_window(1444, INTERVAL) == (2166, 2888)
    assert reveal_window(5, 0)[0] == 0  # interval 0: reveal any time
    assert may_commit(1234, 1443, INTERVAL) is False
    assert may_commit(1234, 1444, INTERVAL) is True
    assert may_commit(1234, 1300, 0) is True


def test_max_weight_share() -> None:
    assert within_max_weight([65535, 1], 65535)
    assert within_max_weight([1, 1], 32768)  # each is exactly half, under 32768/65535
    assert not within_max_weight([2, 1], 32768)
    assert within_max_weight([0, 0], 1)
