"""u16 quantisation and the commit hash (docs/weights.md §4-§5).

The hash vectors were computed once with the November 2024 library's own SCALE encoder and
blake2b call (docs/weights.md §5) on the same inputs.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde_common.crypto import keypair_from_seed
from horde_weights.float32_math import to_float32
from horde_weights.weight_commit import (
    commit_hash,
    commit_preimage,
    quantize_for_commit,
    quantize_for_set_weights,
    scale_compact,
    scale_u16_vec,
)
from horde_weights.weight_processing import normalize_max_weight

ALICE = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
VERSION_KEY = 2  # the reference's scoring algorithm version, sent as the weights version key

# ------------------------------------------------------------------------------ quantisation


def test_commit_quantisation_reference_vector() -> None:
    assert quantize_for_commit([0.5, 1.5, 100.1, 30]) == [327, 982, 65535, 19641]


def test_commit_quantisation_keeps_zeros() -> None:
    assert quantize_for_commit([0.0, 1e-9, 1.0]) == [0, 0, 65535]


def test_commit_quantisation_rounds_half_to_even() -> None:
    assert quantize_for_commit([0.5, 1.0], max_weight=5) == [2, 5]  # 2.5 -> 2, not 3
    assert quantize_for_commit([0.5, 1.0], max_weight=3) == [2, 3]  # 1.5 -> 2
    assert quantize_for_commit([0.25, 0.25, 0.5]) == [32768, 32768, 65535]  # 32767.5 -> 32768


def test_commit_quantisation_computes_the_factor_first() -> None:
    """`w * (65535 / max)`, as the reference; `w * 65535 / max` would give 32767 here."""
    weights = [1 / 42, 1 / 21]
    assert quantize_for_commit(weights) == [32768, 65535]
    assert [round(w * 65535 / max(weights)) for w in weights] == [32767, 65535]


def test_commit_quantisation_rejects_bad_input() -> None:
    for bad in ([], [0.0, 0.0], [-1.0, 1.0], [math.inf]):
        with pytest.raises(ValueError):
            quantize_for_commit(bad)
    with pytest.raises(ValueError):
        quantize_for_commit([1.0], max_weight=70000)


def test_set_weights_quantisation_drops_zeros_after_float32() -> None:
    assert quantize_for_set_weights([0, 1, 2, 3], [0.0, 1e-6, 0.5, 1.0]) == ([2, 3], [32768, 65535])
    assert quantize_for_set_weights([0, 1], [0.0, 0.0]) == ([], [])
    # 0.1 as float32 is 0.10000000149..., which lands on a different integer than 0.1 would.
    assert quantize_for_set_weights([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == (
        [1, 2, 3, 4],
        [16384, 32768, 49151, 65535],
    )


# ------------------------------------------------------------------------------ SCALE and hash


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "04"),
        (42, "a8"),
        (63, "fc"),
        (64, "0101"),
        (69, "1501"),
        (16383, "fdff"),
        (16384, "02000100"),
        (2**30 - 1, "feffffff"),
        (2**30, "0300000040"),
        (2**32, "070000000001"),
    ],
)
def test_scale_compact(value: int, encoded: str) -> None:
    assert scale_compact(value).hex() == encoded


def test_scale_u16_vec_and_preimage_layout() -> None:
    assert scale_u16_vec([1, 65535]).hex() == "080100ffff"
    preimage = commit_preimage(ALICE, 12, [1, 2], [3, 65535], [7], 2)
    assert preimage == (
        ALICE
        + bytes.fromhex("0c00")  # netuid u16
        + bytes.fromhex("0801000200")  # uids
        + bytes.fromhex("080300ffff")  # values
        + bytes.fromhex("040700")  # salt, before the version key
        + bytes.fromhex("0200000000000000")  # version key u64
    )


@pytest.mark.parametrize(
    ("account", "netuid", "uids", "values", "salt", "version_key", "expected"),
    [
        (
            ALICE,
            12,
            [1, 2, 3, 4],
            [16384, 32768, 49151, 65535],
            [1, 2, 3, 4, 5, 6, 7, 8],
            VERSION_KEY,
            "0x0f103e7ec768320c8e3da38bcf1ec68ea0db28878a7fef942e4118b43cd93dc8",
        ),
        (
            ALICE,
            12,
            list(range(70)),
            [i * 900 for i in range(70)],
            [0, 255, 7, 13, 200, 1, 99, 42],
            VERSION_KEY,
            "0xb5ab60fd02d08b53df1423e258c88dff7b1e48a76970ecfc5ff17ebaa8703fd8",
        ),
        (
            bytes(range(32)),
            12,
            [1, 2, 3, 4],
            [16384, 32768, 49151, 65535],
            [1, 2, 3, 4, 5, 6, 7, 8],
            VERSION_KEY,
            "0xae204859b27ce314fc7ea6866214e03079113bb3c6d3e17c31d06956eed38bc0",
        ),
        (bytes(32), 0, [], [], [], 0, "0x71d89eb3a07cafb9da5952046aa3c44953306c3820d1985221f645302bc8a55b"),
    ],
)
def test_commit_hash_vectors(
    account: bytes,
    netuid: int,
    uids: list[int],
    values: list[int],
    salt: list[int],
    version_key: int,
    expected: str,
) -> None:
    assert commit_hash(account, netuid, uids, values, salt, version_key) == expected


def test_alice_public_key_is_the_hotkey_account() -> None:
    assert bytes(keypair_from_seed("//Alice").public_key) == ALICE


def test_commit_hash_rejects_values_the_chain_cannot_encode() -> None:
    ok: dict[str, object] = dict(account=ALICE, netuid=12, uids=[1], values=[1], salt=[0], version_key=2)
    for change in (
        {"account": ALICE[:31]},
        {"netuid": 65536},
        {"uids": [65536]},
        {"values": [-1]},
        {"values": [1, 2]},
        {"version_key": 2**64},
    ):
        with pytest.raises(ValueError):
            commit_hash(**{**ok, **change})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        commit_hash(ALICE, 12, [1], [1.5], [0], 2)  # type: ignore[list-item]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 65535), max_size=200),
    st.lists(st.integers(0, 255), min_size=8, max_size=8),
    st.integers(0, 65535),
)
def test_preimage_length_and_hash_shape(uids: list[int], salt: list[int], netuid: int) -> None:
    values = list(reversed(uids))
    preimage = commit_preimage(ALICE, netuid, uids, values, salt, VERSION_KEY)
    vec = len(scale_compact(len(uids))) + 2 * len(uids)
    assert len(preimage) == 32 + 2 + 2 * vec + (1 + 16) + 8
    digest = commit_hash(ALICE, netuid, uids, values, salt, VERSION_KEY)
    assert len(digest) == 66 and digest.startswith("0x")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300))
def test_set_weights_values_are_nonzero_u16(weights: list[float]) -> None:
    uids, values = quantize_for_set_weights(list(range(len(weights))), weights)
    assert len(uids) == len(values)
    assert all(1 <= v <= 65535 for v in values)
    if values:
        assert max(values) == 65535


# ------------------------------------------------------------------------------ bittensor 11


_f32 = st.floats(0, 1e6, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(_f32, min_size=1, max_size=300))
def test_set_weights_quantisation_matches_installed_bittensor(weights: list[float]) -> None:
    """bittensor 11's `normalize` is the same max-upscale/round/drop-zeros step, in float64.

    On float32-representable inputs our float32 cast is a no-op, so the results are identical.
    """
    bt_weights = pytest.importorskip("bittensor.intents.weights")
    uids = list(range(len(weights)))
    assert quantize_for_set_weights(uids, weights) == bt_weights.normalize(uids, weights)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=300),
    st.one_of(st.floats(1e-3, 1.0), st.sampled_from([0.05, 0.1, 0.5])),
)
def test_max_weight_cap_matches_installed_bittensor(weights: list[float], limit: float) -> None:
    """bittensor 11's `clip_to_max_weight` is the same cap algorithm in float64.

    It sums left to right where NumPy (and we) sum pairwise, so the two agree to rounding only.
    """
    bt_weights = pytest.importorskip("bittensor.intents.weights")
    ours = normalize_max_weight(weights, limit, float32=False)
    theirs = bt_weights.clip_to_max_weight(weights, limit)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    # In float32 the same cap lands within float32 rounding of the float64 one.
    single = normalize_max_weight([to_float32(w) for w in weights], limit, float32=True)
    for a, b in zip(single, theirs, strict=True):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7)
