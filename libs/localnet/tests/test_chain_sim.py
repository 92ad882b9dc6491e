"""The localnet chain simulator over real sockets, driven through `LocalChainClient`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from bittensor_core import Keypair

from horde_common.chain import ChainError, LocalChainClient, Neuron
from horde_common.chain.local_models import SetWeightsRequest
from horde_localnet import keys
from horde_localnet.chain import ChainSim, RunningChain, run_chain, running_chain
from horde_localnet.chain_spec import SpecError, load_spec, parse_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH, DEFAULT_TOPOLOGY

NETUID = 12
RATE_LIMIT = 100  # blocks of 0.01 s in these tests: 1 s

SPEC_YAML = f"""
netuid: {NETUID}
chain:
  start_block: 100
  block_interval: 0.5
  tempo: 20
  weights_rate_limit: {RATE_LIMIT}
  commit_reveal_enabled: false
validators:
  - {{index: 0, stake: 50000}}
  - {{index: 1, stake: 900, validator_permit: false}}
miners:
  count: 3
  host: 127.0.0.2
  base_port: 9500
  not_serving: [2]
  executors: {{spin_up-4min.gpu-24gb: 1}}
neurons:
  - {{hotkey: {Keypair.create_from_uri("//extra").ss58_address}, stake: 7, axon_ip: 10.0.0.1, axon_port: 1}}
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "metagraph.yaml"
    path.write_text(SPEC_YAML)
    return path


@pytest.fixture
async def chain(spec_path: Path) -> AsyncIterator[tuple[RunningChain, LocalChainClient]]:
    async with running_chain(spec_path, block_interval=0.01) as rc:
        async with LocalChainClient(rc.url, timeout=5) as client:
            yield rc, client


async def _until_block_increases(client: LocalChainClient, than: int) -> int:
    while True:
        block = await client.current_block()
        if block > than:
            return block


async def test_blocks_advance(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    b0 = await client.current_block()
    assert b0 >= 100
    b1 = await asyncio.wait_for(_until_block_increases(client, b0), timeout=5)
    assert b1 > b0
    reached = await client.wait_for_block(b1 + 10, max_wait=5)
    assert reached >= b1 + 10
    assert await client.current_block() >= b1 + 10


async def test_block_hashes(chain: tuple[RunningChain, LocalChainClient]) -> None:
    rc, client = chain
    head = await client.current_block()
    h = await client.block_hash(head - 1)
    assert h.startswith("0x") and len(h) == 66
    assert await client.block_hash(head - 1) == h
    assert await client.block_hash(head - 2) != h
    # Deterministic: another simulator of the same file gives the same hashes.
    other = ChainSim(rc.sim.spec)
    assert other.block_hash(5) == await client.block_hash(5)
    with pytest.raises(ChainError, match="in the future"):
        await client.block_hash(head + 10_000)


async def test_metagraph_from_yaml(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    mg = await client.metagraph(NETUID)
    assert mg.netuid == NETUID
    assert [n.uid for n in mg.neurons] == list(range(6))
    v0, v1, m0, m1, m2, extra = mg.neurons

    assert v0.hotkey == keys.validator_hotkey(0) and v0.stake == 50000 and v0.validator_permit
    assert v0.coldkey == keys.validator_coldkey(0).ss58_address
    assert v1.hotkey == keys.validator_hotkey(1) and v1.stake == 900 and not v1.validator_permit
    assert not v0.is_serving and not v1.is_serving

    assert [m.hotkey for m in (m0, m1, m2)] == [keys.miner_hotkey(i) for i in range(3)]
    assert (m0.axon_ip, m0.axon_port) == ("127.0.0.2", 9500)
    assert (m1.axon_ip, m1.axon_port) == ("127.0.0.2", 9501)
    assert not m2.is_serving and not m0.validator_permit

    assert extra.hotkey == Keypair.create_from_uri("//extra").ss58_address
    assert (extra.stake, extra.axon_ip, extra.axon_port) == (7, "10.0.0.1", 1)

    past = await client.metagraph(NETUID, block=100)
    assert past.block == 100 and past.hotkeys == mg.hotkeys
    with pytest.raises(ChainError, match="not on the chain"):
        await client.metagraph(NETUID, block=mg.block + 100_000)
    with pytest.raises(ChainError, match="subnet 13 does not exist"):
        await client.metagraph(13)


async def test_hyperparameters(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    assert await client.weights_rate_limit(NETUID) == RATE_LIMIT
    assert await client.commit_reveal_enabled(NETUID) is False
    hp = await client.hyperparameters(NETUID)
    assert hp.tempo == 20


async def test_weights_recorded_and_rate_limited(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    validator = keys.validator_keypair(0)
    first = await client.set_weights(NETUID, [2, 3, 5], [0.25, 1.0, 0.0], 2, validator)
    assert first.success, first.message
    assert first.committed is False and first.block is not None

    history = await client.weights(NETUID, hotkey=validator.ss58_address)
    (record,) = history.records
    assert (record.uid, record.block, record.version_key) == (0, first.block, 2)
    assert record.uids == [2, 3] and record.weights == [16384, 65535]
    assert not record.committed and record.reveal_block is None
    mg = await client.metagraph(NETUID)
    assert mg.neurons[0].last_update == first.block

    second = await client.set_weights(NETUID, [2], [1.0], 2, validator)
    assert not second.success
    assert second.code == "rate_limited"
    assert f"rate limit is {RATE_LIMIT} blocks" in second.message
    assert len((await client.weights(NETUID)).records) == 1

    await client.wait_for_block(first.block + RATE_LIMIT, max_wait=5)
    third = await client.set_weights(NETUID, [2], [1.0], 2, validator)
    assert third.success, third.message
    assert third.block is not None and third.block >= first.block + RATE_LIMIT
    assert len((await client.weights(NETUID)).records) == 2


async def test_commit_reveal_records_a_commit() -> None:
    spec = parse_spec(
        {
            "chain": {"tempo": 30, "commit_reveal_enabled": True, "reveal_period_epochs": 2},
            "validators": [{"index": 0, "stake": 1}],
            "miners": {"count": 2},
        }
    )
    async with running_chain(spec, block_interval=0.01) as rc, LocalChainClient(rc.url) as client:
        assert await client.commit_reveal_enabled(12) is True
        result = await client.set_weights(12, [1, 2], [1.0, 1.0], 0, keys.validator_keypair(0))
        assert result.success and result.committed
        (record,) = (await client.weights(12)).records
        assert record.committed and record.reveal_block == record.block + 60


class _Impostor:
    """Claims the validator's hotkey but signs with another key."""

    def __init__(self) -> None:
        self.ss58_address = keys.validator_hotkey(0)
        self._key = Keypair.create_from_uri("//impostor")

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._key.sign(payload))


async def test_bad_signature_rejected(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    result = await client.set_weights(NETUID, [2], [1.0], 0, _Impostor())
    assert not result.success and result.code == "bad_signature"
    assert (await client.weights(NETUID)).records == []


async def test_unregistered_and_unpermitted_rejected(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    stranger = await client.set_weights(NETUID, [2], [1.0], 0, Keypair.create_from_uri("//stranger"))
    assert not stranger.success and stranger.code == "not_registered"
    assert "not registered on subnet 12" in stranger.message

    no_permit = await client.set_weights(NETUID, [2], [1.0], 0, keys.validator_keypair(1))
    assert not no_permit.success and no_permit.code == "not_authorized"
    # A neuron without a permit may still weight itself only.
    self_weight = await client.set_weights(NETUID, [1], [1.0], 0, keys.validator_keypair(1))
    assert self_weight.success, self_weight.message

    unknown_uid = await client.set_weights(NETUID, [2, 99], [1.0, 1.0], 0, keys.validator_keypair(0))
    assert not unknown_uid.success and unknown_uid.code == "invalid_argument"
    all_zero = await client.set_weights(NETUID, [2], [0.0], 0, keys.validator_keypair(0))
    assert not all_zero.success and all_zero.code == "invalid_argument"


async def test_replayed_request_rejected(chain: tuple[RunningChain, LocalChainClient]) -> None:
    rc, _ = chain
    kp = keys.validator_keypair(0)
    req = SetWeightsRequest(
        netuid=NETUID, hotkey=kp.ss58_address, uids=[2], weights=[65535], nonce=uuid.uuid4().hex
    )
    req.signature = "0x" + bytes(kp.sign(req.signing_payload())).hex()
    async with httpx.AsyncClient(base_url=rc.url, timeout=5) as http:
        ok = await http.post(f"/subnets/{NETUID}/weights", json=req.model_dump())
        assert ok.status_code == 200, ok.text
        again = await http.post(f"/subnets/{NETUID}/weights", json=req.model_dump())
        assert again.status_code == 409 and again.json()["code"] == "replayed"
        garbage = await http.post(f"/subnets/{NETUID}/weights", json={"netuid": "x"})
        assert garbage.status_code == 422 and garbage.json()["code"] == "invalid_argument"
        missing = await http.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_replace_neurons(chain: tuple[RunningChain, LocalChainClient]) -> None:
    _, client = chain
    mg = await client.metagraph(NETUID)
    fewer = [n for n in mg.neurons if n.uid != 3]
    new = Neuron(
        uid=3, hotkey=Keypair.create_from_uri("//newcomer").ss58_address, axon_ip="1.2.3.4", axon_port=5
    )
    updated = await client.replace_neurons(NETUID, [*fewer, new])
    assert updated.by_uid(3) == new
    assert (await client.metagraph(NETUID)).by_hotkey(keys.miner_hotkey(1)) is None
    with pytest.raises(ChainError, match="duplicate hotkeys"):
        await client.replace_neurons(
            NETUID, [*fewer, new.model_copy(update={"uid": 77, "hotkey": fewer[0].hotkey})]
        )


def test_default_metagraph_matches_topology() -> None:
    spec = load_spec(DEFAULT_METAGRAPH_PATH)
    topo = DEFAULT_TOPOLOGY
    assert spec.netuid == topo.netuid
    assert spec.miners.count == topo.miner_count
    assert spec.miners.base_port == topo.miner_base_port
    assert spec.chain.block_interval == topo.block_interval
    assert len(spec.validators) == topo.validator_count
    neurons = spec.build_neurons()
    assert neurons[topo.validator_index].hotkey == keys.validator_hotkey(topo.validator_index)
    assert neurons[topo.validator_index].validator_permit
    miners = [n for n in neurons if n.hotkey in {keys.miner_hotkey(i) for i in range(topo.miner_count)}]
    assert [n.axon_port for n in miners] == [topo.miner_port(i) for i in range(topo.miner_count)]
    assert spec.miners.model_extra and "executors" in spec.miners.model_extra


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("netuid: [", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
        ("chain: {block_interval: 0}", "chain.block_interval"),
        ("chain: {surprise: 1}", "chain.surprise"),
        ("validators: [{index: 0}, {index: 0}]", "registered twice"),
        ("miners: {count: 2, base_port: 65535}", "past 65535"),
    ],
)
def test_bad_spec(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_missing_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_run_chain_until_cancelled(spec_path: Path) -> None:
    port = _free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(run_chain("127.0.0.1", port, spec_path, 0.01, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=10)
        async with LocalChainClient(f"http://127.0.0.1:{port}", timeout=5) as client:
            assert await client.current_block() >= 100
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_module_entry_point(spec_path: Path) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "horde_localnet.chain",
        "--port",
        str(port),
        "--metagraph",
        str(spec_path),
        "--block-interval",
        "0.01",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None

        async def listening() -> None:
            while b"localnet chain on" not in await proc.stderr.readline():  # type: ignore[union-attr]
                if proc.returncode is not None:
                    raise AssertionError("simulator exited early")

        await asyncio.wait_for(listening(), timeout=30)
        async with LocalChainClient(f"http://127.0.0.1:{port}", timeout=10) as client:
            mg = await client.metagraph(NETUID)
            assert mg.neurons[0].hotkey == keys.validator_hotkey(0)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_bad_spec_exits_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("chain: {surprise: 1}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "horde_localnet.chain",
        "--port",
        "0",
        "--metagraph",
        str(path),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert err.decode().strip().startswith("error: ")
    assert "Traceback" not in err.decode()
