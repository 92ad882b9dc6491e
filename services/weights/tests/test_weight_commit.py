"""u16 quantisation (docs/weights.md §4).

The commit hash moved to `horde_common.chain.commit_hash`; its vectors are in
`libs/common/tests/test_commit_hash.py`. One check here keeps the re-export working.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde_weights.float32_math import to_float32
from horde_weights.weight_commit import (
    commit_hash,
    quantize_for_commit,
    quantize_for_set_weights,
)
from horde_weights.weight_processing import normalize_max_weight

ALICE = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")

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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300))
def test_set_weights_values_are_nonzero_u16(weights: list[float]) -> None:
    uids, values = quantize_for_set_weights(list(range(len(weights))), weights)
    assert len(uids) == len(values)
    assert all(1 <= v <= 65535 for v in values)
    if values:
        assert max(values) == 65535


def test_commit_hash_is_re_exported() -> None:
    from horde_common.chain import commit_hash as shared

    assert commit_hash is shared.commit_hash
    assert commit_hash(ALICE, 12, [1], [1], [0], 2).startswith("0x")


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
