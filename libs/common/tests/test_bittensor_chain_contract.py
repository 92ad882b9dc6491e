"""Contract test of `BittensorChain` writes against the real bittensor 11 SDK.

The SDK client is built with `bt.Client(network, substrate=<in-memory fake>)`: everything above
the substrate seam (the `SetWeights` intent and its preflight, u16 quantisation, the timelock
encryption, the executor, the generated calls) is the real SDK code. The fake only holds storage
values, records the calls it is asked to compose and submit, and answers with a receipt. No
network. `docs/weights.md` §7 is what is being pinned.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import bittensor as bt
import pytest
from bittensor_core import Keypair

from horde_common.chain import ChainError, quantize_weights
from horde_common.chain.bittensor_chain import BittensorChain
from horde_common.chain.commit_hash import commit_hash

NETUID = 12
HEAD = 5000
OUR_UID = 3
ALICE = Keypair.create_from_uri("//Alice")
VERSION_KEY = 2


@dataclass
class Submitted:
    """One extrinsic the SDK asked the substrate to sign and submit."""

    module: str
    function: str
    params: dict[str, Any]
    signer: str
    wait_for_inclusion: bool
    wait_for_finalization: bool


def success_receipt(block: int = HEAD + 1) -> bt.ExtrinsicResult:
    """What `RpcSubstrate` returns for an included, successful extrinsic."""
    return bt.ExtrinsicResult(
        success=True, message="Success", block_hash=f"0x{block:064x}", extrinsic_id=f"{block}-0002"
    )


def dispatch_error(name: str, text: str, block: int = HEAD + 1) -> bt.ExtrinsicResult:
    """What `RpcSubstrate` returns when the extrinsic was included but its dispatch failed."""
    return bt.ExtrinsicResult(
        success=False,
        message=text,
        block_hash=f"0x{block:064x}",
        extrinsic_id=f"{block}-0002",
        error=bt.ChainError(text, name),
    )


class InMemorySubstrate:
    """An in-memory `bittensor.Substrate`: storage items by name, recorded submissions.

    `answer` decides what a submission returns (a receipt, or raises); `hang` makes every
    submission wait forever, to exercise the adapter's timeout.
    """

    token_symbols: dict[int, str] = {}

    def __init__(self, *, commit_reveal: bool = False, last_update: int = 0) -> None:
        self.storage: dict[str, Any] = {
            "CommitRevealWeightsEnabled": commit_reveal,
            "WeightsSetRateLimit": 100,
            "LastUpdate": [0, 0, 0, last_update, 0, 0, 0, 0],
            "MinAllowedWeights": 1,
            "MaxWeightsLimit": 65535,
            "SubnetEpochConsensus": "Yuma",
            "Tempo": 360,
            "RevealPeriodEpochs": 1,
            "WeightsVersionKey": 2,
            "LastEpochBlock": 4800,
            "PendingEpochAt": 0,
            "SubnetEpochIndex": 13,
            "BlocksSinceLastStep": 200,
        }
        self.submitted: list[Submitted] = []
        self.answer: Any = lambda call: success_receipt()
        self.hang = False

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance(rao, netuid)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def block_number(self) -> int:
        return HEAD

    async def block_time(self) -> float:
        return 12.0

    async def block_hash(self, block: int | None = None) -> str:
        return f"0x{block or HEAD:064x}"

    async def query(self, module: str, name: str, params: Any = None, block_hash: Any = None) -> Any:
        if name == "Uids":  # registered iff the hotkey is Alice
            return OUR_UID if params == [NETUID, ALICE.ss58_address] else None
        return self.storage.get(name)

    async def query_map(self, module: str, name: str, params: Any = None, block_hash: Any = None) -> Any:
        raise bt.ChainError("no storage maps in this fake")  # token symbols: display only

    async def runtime_call(self, api: str, method: str, params: list, block_hash: Any = None) -> Any:
        return None

    async def compose(self, call: Any) -> Any:
        return call  # the generated `Call(module, function, params)` stands for the composed call

    async def estimate_fee(self, call: Any, keypair: Any) -> bt.Balance:
        return bt.Balance(1_000)

    async def submit(
        self,
        call: Any,
        keypair: Any,
        *,
        nonce: int | None = None,
        period: int | None = None,
        wait_for_inclusion: bool = True,
        wait_for_finalization: bool = True,
    ) -> bt.ExtrinsicResult:
        module, function, params = call
        self.submitted.append(
            Submitted(
                module,
                function,
                dict(params),
                keypair.ss58_address,
                wait_for_inclusion,
                wait_for_finalization,
            )
        )
        if self.hang:
            await asyncio.Event().wait()
        result: bt.ExtrinsicResult = self.answer(call)
        return result


@pytest.fixture
async def chain_and_fake() -> Any:
    fake = InMemorySubstrate()
    chain = BittensorChain("finney", substrate=fake, timeout=5.0, write_timeout=5.0)
    yield chain, fake
    await chain.aclose()


# --- set_weights: the SDK's SetWeights path ---


async def test_set_weights_sends_set_mechanism_weights_with_our_u16_weights(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    uids, weights = [1, 2, 5, 7], [0.2, 0.5, 0.3, 0.0]

    result = await chain.set_weights(NETUID, uids, weights, VERSION_KEY, ALICE)

    assert result.success and not result.committed
    assert (result.block, result.code) == (HEAD + 1, None)
    (sent,) = fake.submitted
    expected_uids, expected_values = quantize_weights(uids, weights)  # zero weight dropped
    assert (sent.module, sent.function) == ("SubtensorModule", "set_mechanism_weights")
    assert sent.params == {
        "netuid": NETUID,
        "mecid": 0,
        "dests": expected_uids,
        "weights": expected_values,
        "version_key": VERSION_KEY,
    }
    assert expected_values == [26214, 65535, 39321]
    assert (sent.signer, sent.wait_for_inclusion, sent.wait_for_finalization) == (
        ALICE.ss58_address,
        True,
        False,
    )


async def test_set_weights_under_commit_reveal_sends_the_timelocked_commit(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    fake.storage["CommitRevealWeightsEnabled"] = True

    result = await chain.set_weights(NETUID, [1, 2], [0.25, 1.0], VERSION_KEY, ALICE)

    assert result.success and result.committed
    assert result.message == "weights committed (timelocked)"
    (sent,) = fake.submitted
    assert (sent.module, sent.function) == ("SubtensorModule", "commit_timelocked_mechanism_weights")
    assert sent.params["netuid"] == NETUID and sent.params["mecid"] == 0
    assert isinstance(sent.params["commit"], bytes) and sent.params["commit"]
    assert sent.params["reveal_round"] > 0
    assert sent.signer == ALICE.ss58_address


async def test_a_wallet_signs_with_its_hotkey_never_its_coldkey(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    cold = Keypair.create_from_uri("//AliceCold")
    wallet = type("Wallet", (), {"hotkey": ALICE, "coldkey": cold, "coldkeypub": cold})()

    result = await chain.set_weights(NETUID, [1], [1.0], VERSION_KEY, wallet)

    assert result.success
    assert [s.signer for s in fake.submitted] == [ALICE.ss58_address]


# --- legacy salted commit-reveal: raw generated calls with our exact integers ---


async def test_commit_weights_sends_the_hash_we_computed(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    digest = commit_hash(
        ALICE.public_key, NETUID, [1, 2, 3, 4], [16384, 32768, 49151, 65535], list(range(1, 9)), 2
    )

    result = await chain.commit_weights(NETUID, bytes.fromhex(digest[2:]), ALICE)

    assert result.success and result.commit_hash == digest and result.block == HEAD + 1
    (sent,) = fake.submitted
    assert (sent.module, sent.function, sent.params) == (
        "SubtensorModule",
        "commit_weights",
        {"netuid": NETUID, "commit_hash": digest},
    )
    assert (sent.signer, sent.wait_for_inclusion) == (ALICE.ss58_address, True)


async def test_reveal_weights_sends_the_committed_integers_unchanged(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    salt = [7, 0, 255, 3, 9, 1, 2, 200]

    result = await chain.reveal_weights(NETUID, [0, 4, 9], [0, 32767, 65535], salt, VERSION_KEY, ALICE)

    assert result.success and result.block == HEAD + 1
    (sent,) = fake.submitted
    assert (sent.module, sent.function) == ("SubtensorModule", "reveal_weights")
    assert sent.params == {
        "netuid": NETUID,
        "uids": [0, 4, 9],
        "values": [0, 32767, 65535],  # zero kept: the hash covers it
        "salt": salt,
        "version_key": VERSION_KEY,
    }
    assert sent.signer == ALICE.ss58_address

    await chain.reveal_weights(NETUID, [1], [65535], bytes(salt), VERSION_KEY, ALICE)
    assert fake.submitted[-1].params["salt"] == salt  # a bytes salt is the same Vec<u16>


@pytest.mark.parametrize(
    ("uids", "values", "salt"),
    [([1, 2], [5], [1]), ([1], [65536], [1]), ([1], [0.5], [1]), ([1], [1], [-1])],
)
async def test_bad_reveal_arguments_fail_before_anything_is_sent(
    chain_and_fake: Any, uids: list[int], values: list[Any], salt: list[int]
) -> None:
    chain, fake = chain_and_fake
    with pytest.raises((ValueError, TypeError)):
        await chain.reveal_weights(NETUID, uids, values, salt, VERSION_KEY, ALICE)
    with pytest.raises(ValueError, match="32 bytes"):
        await chain.commit_weights(NETUID, b"\x01" * 31, ALICE)
    assert fake.submitted == []


# --- refusals are results; timeouts and transport failures raise ---


@pytest.mark.parametrize(
    ("write", "name", "code"),
    [
        ("set", "SettingWeightsTooFast", "rate_limited"),
        ("commit", "CommitRevealDisabled", "commit_reveal_disabled"),
        ("commit", "TooManyUnrevealedCommits", "commit_not_allowed"),
        ("reveal", "InvalidRevealCommitHashNotMatch", "hash_mismatch"),
        ("reveal", "RevealTooEarly", "reveal_too_early"),
        ("reveal", "ExpiredWeightCommit", "reveal_too_late"),
        ("reveal", "NoWeightsCommitFound", "no_commit"),
    ],
)
async def test_a_chain_refusal_is_success_false_with_the_message(
    chain_and_fake: Any, write: str, name: str, code: str
) -> None:
    chain, fake = chain_and_fake
    fake.answer = lambda call: dispatch_error(name, f"the chain says {name}")

    result: Any = await _write(chain, write)

    assert not result.success
    assert result.code == code
    assert result.message == f"the chain says {name}"
    assert result.block == HEAD + 1
    assert len(fake.submitted) == 1


async def test_a_preflight_refusal_sends_nothing(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    fake.storage["LastUpdate"][OUR_UID] = HEAD - 10  # rate limit 100 blocks

    result = await chain.set_weights(NETUID, [1], [1.0], VERSION_KEY, ALICE)
    unregistered = await chain.set_weights(NETUID, [1], [1.0], VERSION_KEY, Keypair.create_from_uri("//Bob"))

    assert (result.success, result.code) == (False, "rate_limited")
    assert "rate limit is 100 blocks" in result.message
    assert (unregistered.success, unregistered.code) == (False, "not_registered")
    assert fake.submitted == []


@pytest.mark.parametrize("write", ["set", "commit", "reveal"])
async def test_a_write_timeout_raises(write: str) -> None:
    fake = InMemorySubstrate()
    fake.hang = True
    chain = BittensorChain("finney", substrate=fake, write_timeout=0.2)
    try:
        with pytest.raises(ChainError, match=r"no answer to .* within 0\.2s"):
            await _write(chain, write)
    finally:
        await chain.aclose()
    assert len(fake.submitted) == 1


@pytest.mark.parametrize("write", ["set", "commit", "reveal"])
async def test_a_transport_failure_raises_and_the_next_call_reconnects(
    chain_and_fake: Any, write: str
) -> None:
    chain, fake = chain_and_fake

    def dropped(call: Any) -> bt.ExtrinsicResult:
        # What `RpcSubstrate` raises when the socket breaks between signing and inclusion.
        raise bt.ChainError("connection reset by peer") from ConnectionResetError("reset")

    fake.answer = dropped
    with pytest.raises(ChainError, match="unreachable"):
        await _write(chain, write)

    fake.answer = lambda call: success_receipt()
    assert (await _write(chain, write)).success


# --- reads through the same seam ---


async def test_hyperparameter_reads(chain_and_fake: Any) -> None:
    chain, fake = chain_and_fake
    fake.storage.update(MinAllowedWeights=8, MaxWeightsLimit=655, RevealPeriodEpochs=2)

    assert await chain.min_allowed_weights(NETUID) == 8
    assert await chain.max_weight_limit(NETUID) == 655
    assert await chain.weights_rate_limit(NETUID) == 100
    assert await chain.commit_reveal_enabled(NETUID) is False
    assert await chain.commit_reveal_interval(NETUID) == 2 * 361
    hp = await chain.hyperparameters(NETUID)
    assert (hp.tempo, hp.reveal_period_epochs, hp.weights_version) == (360, 2, 2)
    assert (hp.min_allowed_weights, hp.max_weight_limit, hp.commit_reveal_interval) == (8, 655, 722)


async def test_a_read_timeout_raises() -> None:
    class Stuck(InMemorySubstrate):
        async def block_number(self) -> int:
            await asyncio.Event().wait()
            return HEAD

    chain = BittensorChain("finney", substrate=Stuck(), timeout=0.2)
    try:
        with pytest.raises(ChainError, match=r"no answer to current block within 0\.2s"):
            await chain.current_block()
    finally:
        await chain.aclose()


def test_importing_the_adapter_does_not_import_bittensor() -> None:
    code = (
        "import sys, json, horde_common.chain.bittensor_chain; print(json.dumps('bittensor' in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is False


async def _write(chain: BittensorChain, write: str) -> Any:
    if write == "set":
        return await chain.set_weights(NETUID, [1, 2], [0.5, 1.0], VERSION_KEY, ALICE)
    if write == "commit":
        return await chain.commit_weights(NETUID, "0x" + "ab" * 32, ALICE)
    return await chain.reveal_weights(NETUID, [1, 2], [32768, 65535], [1, 2, 3], VERSION_KEY, ALICE)
