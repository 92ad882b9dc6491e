from __future__ import annotations

import math

import pytest
from bittensor_core import Keypair
from hypothesis import given
from hypothesis import strategies as st

from horde_common.chain import Chain, LocalChainClient, Metagraph, Neuron, hotkey_signer, quantize_weights
from horde_common.chain.local_models import SetWeightsRequest


def test_neuron_serving() -> None:
    assert not Neuron(uid=0, hotkey="a").is_serving
    assert Neuron(uid=0, hotkey="a", axon_ip="127.0.0.1", axon_port=9100).is_serving


def test_metagraph_lookups() -> None:
    mg = Metagraph(
        netuid=12,
        block=5,
        neurons=[Neuron(uid=0, hotkey="a"), Neuron(uid=1, hotkey="b", axon_ip="1.1.1.1", axon_port=1)],
    )
    assert mg.hotkeys == ["a", "b"]
    assert mg.by_hotkey("b") is mg.neurons[1]
    assert mg.by_uid(0) is mg.neurons[0]
    assert mg.by_hotkey("zz") is None
    assert [n.uid for n in mg.serving] == [1]
    assert Metagraph.model_validate_json(mg.model_dump_json()) == mg


def test_quantize_matches_reference_examples() -> None:
    # spec 5.x: weights 0.1,0.2,0.3,0.4 of uids 0..3 -> [16384, 32768, 49151, 65535]
    assert quantize_weights([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4]) == (
        [0, 1, 2, 3],
        [16384, 32768, 49151, 65535],
    )
    assert quantize_weights([0, 1, 2], [1.0, 0.0, 1e-9]) == ([0], [65535])
    assert quantize_weights([0, 1], [0.0, 0.0]) == ([], [])
    assert quantize_weights([], []) == ([], [])


@pytest.mark.parametrize(
    ("uids", "weights", "match"),
    [
        ([0, 1], [1.0], "differ in length"),
        ([0, 0], [1.0, 1.0], "duplicate"),
        ([70000], [1.0], "0..65535"),
        ([0], [-1.0], "non-negative"),
        ([0], [math.nan], "finite"),
    ],
)
def test_quantize_rejects(uids: list[int], weights: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quantize_weights(uids, weights)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_quantize_properties(weights: list[float]) -> None:
    uids = list(range(len(weights)))
    q_uids, q_values = quantize_weights(uids, weights)
    assert len(q_uids) == len(q_values)
    assert all(0 < v <= 65535 for v in q_values)
    if any(w > 0 for w in weights):
        assert max(q_values) == 65535


def test_signing_payload_is_canonical_and_excludes_signature() -> None:
    req = SetWeightsRequest(netuid=12, hotkey="5x", uids=[1], weights=[65535], version_key=2, nonce="n" * 8)
    payload = req.signing_payload()
    req.signature = "0xabc"
    assert req.signing_payload() == payload
    assert payload == (
        b'{"hotkey":"5x","netuid":12,"nonce":"nnnnnnnn","uids":[1],"version_key":2,"weights":[65535]}'
    )


def test_hotkey_signer_accepts_keypair_or_wallet() -> None:
    kp = Keypair.create_from_uri("//signer")

    class Wallet:
        hotkey = kp

    assert hotkey_signer(kp) is kp
    assert hotkey_signer(Wallet()) is kp
    with pytest.raises(TypeError):
        hotkey_signer("nope")


def test_local_client_is_a_chain() -> None:
    assert isinstance(LocalChainClient("http://127.0.0.1:1"), Chain)
