"""Hotkey scores → uid vector → processed weights (docs/weights.md §2-§3).

The golden digests were produced once by running the November 2024 library code
(docs/weights.md §3) under NumPy 2.0 on the same generated inputs; they pin the float32
behaviour bit for bit without needing NumPy here.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde_common.chain.models import Metagraph, Neuron
from horde_weights.float32_math import cumulative_sum, keep_float64, pairwise_sum, to_float32
from horde_weights.weight_commit import quantize_for_commit
from horde_weights.weight_processing import (
    UidWeights,
    max_weight_limit_from_u16,
    normalize_max_weight,
    process_weights,
    uid_vector,
)

NETUID = 12


@dataclass(frozen=True)
class _Neuron:
    uid: int
    hotkey: str


def _neurons(n: int) -> list[_Neuron]:
    return [_Neuron(uid=i, hotkey=f"hotkey_{i}") for i in range(n)]


def _process(vector: UidWeights, *, min_allowed: int = 0, limit: float = 1.0) -> UidWeights:
    return process_weights(
        vector.uids,
        vector.weights,
        n_neurons=len(vector.uids),
        min_allowed_weights=min_allowed,
        max_weight_limit=limit,
    )


# ------------------------------------------------------------------------------ reference vectors


def test_scores_zero_to_four_give_tenths_as_float32() -> None:
    """Five miners scored 0..4, MinAllowedWeights 0, no cap: uid 0 drops out, float32 tenths."""
    scores = {f"hotkey_{i}": float(i) for i in range(5)}
    vector = uid_vector(scores, _neurons(5))
    assert vector is not None
    result = _process(vector, limit=99999)  # the reference's mock returned 99999: no cap
    assert result.uids == [1, 2, 3, 4]
    assert result.weights == [
        0.10000000149011612,
        0.20000000298023224,
        0.30000001192092896,
        0.4000000059604645,
    ]
    assert quantize_for_commit(result.weights) == [16384, 32768, 49151, 65535]


def test_zero_scores_give_uniform_weights_over_every_uid() -> None:
    vector = uid_vector({"hotkey_1": 0.0, "hotkey_3": 0.0}, _neurons(4))
    assert vector is not None
    result = _process(vector)
    assert result.uids == [0, 1, 2, 3]
    assert result.weights == [0.25] * 4


def test_no_registered_scored_hotkey_means_nothing_to_set() -> None:
    assert uid_vector({}, _neurons(3)) is None
    assert uid_vector({"gone": 5.0}, _neurons(3)) is None


def test_deregistered_hotkeys_are_dropped_and_every_uid_is_present() -> None:
    vector = uid_vector({"hotkey_2": 3.0, "gone": 100.0}, _neurons(4))
    assert vector == UidWeights(uids=[0, 1, 2, 3], weights=[0.0, 0.0, 3.0, 0.0])


def test_uid_vector_accepts_the_chain_metagraph_model() -> None:
    neurons = [Neuron(uid=i, hotkey=f"hotkey_{i}") for i in (2, 0, 1)]
    metagraph = Metagraph(netuid=NETUID, block=1, neurons=neurons)
    vector = uid_vector({"hotkey_1": 1.5}, metagraph.neurons)
    assert vector == UidWeights(uids=[0, 1, 2], weights=[0.0, 1.5, 0.0])


def test_uid_vector_rejects_duplicate_uids_and_non_finite_scores() -> None:
    with pytest.raises(ValueError):
        uid_vector({"a": 1.0}, [_Neuron(0, "a"), _Neuron(0, "b")])
    with pytest.raises(ValueError):
        uid_vector({"hotkey_0": math.nan}, _neurons(2))


def test_fewer_neurons_than_min_allowed_weights_gives_uniform() -> None:
    result = process_weights(
        [0, 1, 2], [1.0, 2.0, 3.0], n_neurons=3, min_allowed_weights=4, max_weight_limit=1.0
    )
    assert result == UidWeights(uids=[0, 1, 2], weights=[1 / 3] * 3)


def test_floor_path_when_fewer_positive_weights_than_min_allowed() -> None:
    """Two positive weights, MinAllowedWeights 4, limit 0.5: 1e-5 floor, cap, float64 (NumPy values)."""
    result = process_weights(
        list(range(6)), [0, 3, 0, 0, 1, 0], n_neurons=6, min_allowed_weights=4, max_weight_limit=0.5
    )
    floor = 4.999752012330186e-06
    assert result.uids == list(range(6))
    assert result.weights == [floor, 0.4999998000069196, floor, floor, 0.49998020098503093, floor]


def test_floor_path_rejects_a_uid_outside_the_metagraph() -> None:
    with pytest.raises(ValueError):
        process_weights([7], [1.0], n_neurons=3, min_allowed_weights=2, max_weight_limit=1.0)


def test_empty_metagraph_gives_empty_weights() -> None:
    assert process_weights([], [], n_neurons=0, min_allowed_weights=0, max_weight_limit=1.0) == UidWeights(
        [], []
    )


def test_max_weight_cap_float32_and_float64_match_numpy() -> None:
    x = [1.0, 2.0, 3.0, 10.0, 20.0]
    assert normalize_max_weight(x, 0.3, float32=True) == [
        0.06666674464941025,
        0.1333334892988205,
        0.20000022649765015,
        0.29999977350234985,
        0.29999977350234985,
    ]
    assert normalize_max_weight(x, 0.3, float32=False) == [
        0.06666674666676267,
        0.13333349333352534,
        0.20000024000028802,
        0.299999759999712,
        0.299999759999712,
    ]


def test_infeasible_limit_gives_uniform() -> None:
    assert normalize_max_weight([1.0, 9.0], 0.5, float32=True) == [0.5, 0.5]


def test_max_weight_limit_from_u16() -> None:
    assert max_weight_limit_from_u16(65535) == 1.0
    assert max_weight_limit_from_u16(6553) == 6553 / 65535
    with pytest.raises(ValueError):
        max_weight_limit_from_u16(70000)


def test_exclude_quantile_drops_the_lowest_positive_weights() -> None:
    # Half of four weights: NumPy's linear quantile at 0.5 of [1, 2, 3, 4] is 2.5.
    result = process_weights(
        [0, 1, 2, 3],
        [1.0, 2.0, 3.0, 4.0],
        n_neurons=4,
        min_allowed_weights=0,
        max_weight_limit=1.0,
        exclude_quantile=32768,
    )
    assert result.uids == [2, 3]
    # MinAllowedWeights bounds the exclusion: at least 3 weights stay.
    result = process_weights(
        [0, 1, 2, 3],
        [1.0, 2.0, 3.0, 4.0],
        n_neurons=4,
        min_allowed_weights=3,
        max_weight_limit=1.0,
        exclude_quantile=65535,
    )
    assert result.uids == [1, 2, 3]


def test_pairwise_sum_follows_numpy_order() -> None:
    values = [to_float32(1 / (i + 1)) for i in range(1000)]
    assert pairwise_sum(values, to_float32) == 7.485471725463867  # np.float32 array .sum()
    sequential = 0.0
    for v in values:
        sequential = to_float32(sequential + v)
    assert sequential == 7.485478401184082  # left to right differs: the order matters
    assert cumulative_sum([1.0, 2.0, 3.0], keep_float64) == [1.0, 3.0, 6.0]


def _golden_case(seed: int) -> tuple[int, list[float], int, float]:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 5, 9, 64, 129, 300, 1000])
    weights = [0.0 if rng.random() < 0.4 else rng.expovariate(1.0) ** 3 for _ in range(n)]
    min_allowed = rng.choice([0, 1, 8, n // 2, n])
    limit = rng.choice([1.0, 0.5, 0.1, 0.02, 3 / max(n, 1)])
    return n, weights, min_allowed, limit


# sha256(repr((uids, weights)))[:16] of the November 2024 library's output for `_golden_case(seed)`.
_GOLDEN = [
    "a58d37a3ac646031",
    "6d58fa321ed7bdce",
    "30bc5deb3c7fd68b",
    "a89a4b7aebd47e99",
    "9a3fe8de98ad9469",
    "97c7ff0040d4412d",
    "66eb82ff46ef7fcc",
    "ed1bfde272123cd7",
    "5e2bf01bbbbc7340",
    "31764b5f67d102cc",
    "30bc5deb3c7fd68b",
    "70d802ca9552524a",
    "dead7f211897b23d",
    "aa82f7828bea3574",
    "66eb82ff46ef7fcc",
    "bce33cbb50656178",
    "e9b2b111eb901478",
    "d11f85e00599f15f",
    "fd6e8e8bad01993d",
    "30bc5deb3c7fd68b",
    "6c110a003ea20318",
    "c26b4ee06d7e15cd",
    "fd6e8e8bad01993d",
    "36a8e9d078b35f3f",
    "5898b6fafca14189",
    "163bde1b5c1294f2",
    "9bbb3667f7855f0e",
    "b9593c43ab91dc6b",
    "66eb82ff46ef7fcc",
    "66eb82ff46ef7fcc",
    "ec8e4555d551cd05",
    "30bc5deb3c7fd68b",
    "c7ffed1044d78d29",
    "fd6e8e8bad01993d",
    "87e692361a9de478",
    "e296023015dfa0d8",
    "5ace129bd3c8cfc4",
    "66eb82ff46ef7fcc",
    "8765ccc70051733e",
    "0f6e6be5e8ba6f35",
]


@pytest.mark.parametrize("seed", range(len(_GOLDEN)))
def test_bit_exact_against_the_2024_library(seed: int) -> None:
    n, weights, min_allowed, limit = _golden_case(seed)
    result = process_weights(
        list(range(n)), weights, n_neurons=n, min_allowed_weights=min_allowed, max_weight_limit=limit
    )
    digest = hashlib.sha256(repr((result.uids, result.weights)).encode()).hexdigest()[:16]
    assert digest == _GOLDEN[seed]


# ------------------------------------------------------------------------------ properties

_weight = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
)
_limits = st.one_of(
    st.just(1.0),
    st.floats(min_value=1e-4, max_value=1.0),
    st.integers(1, 65535).map(max_weight_limit_from_u16),
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[list[float], int, float]:
    weights = draw(st.lists(_weight, min_size=1, max_size=300))
    min_allowed = draw(st.integers(0, len(weights) + 2))
    return weights, min_allowed, draw(_limits)


def _run(weights: list[float], min_allowed: int, limit: float, order: list[int] | None = None) -> UidWeights:
    uids = list(range(len(weights))) if order is None else order
    return process_weights(
        uids,
        [weights[u] for u in uids],
        n_neurons=len(weights),
        min_allowed_weights=min_allowed,
        max_weight_limit=limit,
    )


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_weights_sum_to_one(case: tuple[list[float], int, float]) -> None:
    result = _run(*case)
    assert abs(math.fsum(result.weights) - 1.0) <= 1e-6
    assert len(result.uids) == len(result.weights) == len(set(result.uids))


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_weights_respect_the_max_weight_limit_when_feasible(case: tuple[list[float], int, float]) -> None:
    weights, min_allowed, limit = case
    result = _run(weights, min_allowed, limit)
    positive = sum(1 for w in weights if to_float32(w) > 0)
    capped_path = positive > 0 and len(weights) >= min_allowed
    if capped_path and len(result.weights) * limit > 1:
        assert max(result.weights) <= limit * (1 + 1e-5)


@settings(max_examples=200, deadline=None)
@given(_cases(), st.randoms(use_true_random=False))
def test_invariant_to_the_order_of_uids(case: tuple[list[float], int, float], rng: random.Random) -> None:
    weights, min_allowed, limit = case
    order = list(range(len(weights)))
    rng.shuffle(order)
    straight = _run(weights, min_allowed, limit).as_dict()
    shuffled = _run(weights, min_allowed, limit, order).as_dict()
    assert straight.keys() == shuffled.keys()
    for uid, w in straight.items():
        # Bit-identical up to NumPy's summation order, which follows the input order.
        assert math.isclose(w, shuffled[uid], rel_tol=1e-5, abs_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(0, 99), st.floats(0, 1e3), min_size=1), st.randoms(use_true_random=False))
def test_scores_to_weights_is_exactly_invariant_to_metagraph_order(
    by_uid: dict[int, float], rng: random.Random
) -> None:
    neurons = _neurons(100)
    scores = {f"hotkey_{uid}": s for uid, s in by_uid.items()}
    first = uid_vector(scores, neurons)
    rng.shuffle(neurons)
    second = uid_vector(scores, neurons)
    assert first is not None and first == second
    assert _process(first) == _process(second)


@settings(max_examples=200, deadline=None)
@given(_cases())
def test_quantised_weights_are_u16(case: tuple[list[float], int, float]) -> None:
    values = quantize_for_commit(_run(*case).weights)
    assert all(0 <= v <= 65535 for v in values)
    assert max(values) == 65535
