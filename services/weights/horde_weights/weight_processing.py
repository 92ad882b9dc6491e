"""From hotkey scores to the per-uid weight vector the validator writes to the chain.

Pure functions, no I/O. Two steps (`docs/weights.md` §2 and §3):

1. `uid_vector`: hotkey scores + the metagraph → one weight per registered uid (0 for unscored
   uids; hotkeys that left the metagraph are dropped).
2. `process_weights`: the subnet's weight rules (MinAllowedWeights, MaxWeightsLimit) applied the
   way the reference validator's library applied them in November 2024, including its float32
   arithmetic, so the committed u16 values come out identical (`docs/weights.md` §3.6).

Quantisation and the commit hash live in `horde_weights.weight_commit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from horde_weights.float32_math import (
    Rounder,
    cumulative_sum,
    keep_float64,
    pairwise_sum,
    to_float32,
    to_float32_list,
)

U16_MAX = 65535
"""Chain hyperparameters such as MaxWeightsLimit are u16 fractions of this value."""

FLOOR_WEIGHT = 1e-5
"""Every uid's starting weight when fewer uids than MinAllowedWeights scored (`docs/weights.md` §3.3)."""

CAP_EPSILON = 1e-7
"""The reference's numerical-stability term in the max-weight cut-off (`docs/weights.md` §3.5)."""


class NeuronLike(Protocol):
    """What `uid_vector` reads from a metagraph entry (e.g. `horde_common.chain.models.Neuron`)."""

    @property
    def uid(self) -> int: ...

    @property
    def hotkey(self) -> str: ...


@dataclass(frozen=True)
class UidWeights:
    """Parallel lists: `weights[i]` belongs to `uids[i]`."""

    uids: list[int]
    weights: list[float]

    def as_dict(self) -> dict[int, float]:
        """uid → weight, for callers that do not care about the order."""
        return dict(zip(self.uids, self.weights, strict=True))


def max_weight_limit_from_u16(raw: int) -> float:
    """The chain's MaxWeightsLimit (a u16) as the fraction `process_weights` expects."""
    if not 0 <= raw <= U16_MAX:
        raise ValueError(f"MaxWeightsLimit must be a u16, got {raw}")
    return float(raw) / float(U16_MAX)


def uid_vector(scores: Mapping[str, float], neurons: Iterable[NeuronLike]) -> UidWeights | None:
    """One weight per registered uid, sorted by uid; `None` if no scored hotkey is registered.

    Unscored uids get 0.0 and hotkeys missing from the metagraph are dropped. `None` tells the
    caller there is nothing to set: the reference then marked the batch scored and set no
    weights (`docs/weights.md` §2). A map whose registered scores are all zero is *not* `None`:
    it yields uniform weights in `process_weights`.
    """
    ordered = sorted(neurons, key=lambda n: n.uid)
    uids = [n.uid for n in ordered]
    if len(set(uids)) != len(uids):
        raise ValueError("metagraph lists a uid twice")
    matched = False
    weights: list[float] = []
    for neuron in ordered:
        score = scores.get(neuron.hotkey)
        if score is None:
            weights.append(0.0)
            continue
        if not math.isfinite(score):
            raise ValueError(f"score of {neuron.hotkey} is not finite: {score}")
        matched = True
        weights.append(float(score))
    return UidWeights(uids=uids, weights=weights) if matched else None


def process_weights(
    uids: Sequence[int],
    weights: Sequence[float],
    *,
    n_neurons: int,
    min_allowed_weights: int,
    max_weight_limit: float,
    exclude_quantile: int = 0,
) -> UidWeights:
    """Apply the subnet's weight rules to a uid vector (`docs/weights.md` §3).

    `n_neurons` is the metagraph size, `min_allowed_weights` the MinAllowedWeights hyperparameter,
    `max_weight_limit` MaxWeightsLimit as a fraction (`max_weight_limit_from_u16`),
    `exclude_quantile` a u16 fraction of the lowest positive weights to drop (0 in production).

    * no positive weight, or fewer neurons than MinAllowedWeights: uniform `1/n` over uids
      `0..n-1` (float64, as the reference);
    * fewer positive weights than MinAllowedWeights: every uid `0..n-1` starts at `1e-5`, the
      positive weights are added on their uid, then max-weight normalised (float64);
    * otherwise: keep the positive weights (minus the excluded quantile) and max-weight
      normalise them in float32.

    The returned floats are those the reference's `tolist()` gave: float32 values in the last
    case, float64 in the first two. Raises ValueError on mismatched lengths, a non-finite
    weight after the float32 cast, or (floor case) a uid outside `0..n-1`.
    """
    if len(uids) != len(weights):
        raise ValueError(f"uids and weights differ in length: {len(uids)} vs {len(weights)}")
    if n_neurons < 0 or min_allowed_weights < 0:
        raise ValueError("n_neurons and min_allowed_weights must be >= 0")
    if not 0 <= exclude_quantile <= U16_MAX:
        raise ValueError(f"exclude_quantile must be a u16, got {exclude_quantile}")
    single = to_float32_list(weights)
    if not all(math.isfinite(w) for w in single):
        raise ValueError("weights must be finite float32 values")
    positive = [(uid, w) for uid, w in zip(uids, single, strict=True) if w > 0]

    if not positive or n_neurons < min_allowed_weights:
        uniform = [1 / n_neurons] * n_neurons if n_neurons else []
        return UidWeights(uids=list(range(n_neurons)), weights=uniform)

    if len(positive) < min_allowed_weights:
        floored = [FLOOR_WEIGHT] * n_neurons
        for uid, w in positive:
            if not 0 <= uid < n_neurons:
                raise ValueError(f"uid {uid} outside the metagraph of {n_neurons} neurons")
            # The reference indexed by position; the uid vector is sorted by uid, so it is the uid.
            floored[uid] += w
        return UidWeights(
            uids=list(range(n_neurons)),
            weights=normalize_max_weight(floored, max_weight_limit, float32=False),
        )

    kept = _exclude_lowest_quantile(positive, exclude_quantile, min_allowed_weights)
    return UidWeights(
        uids=[uid for uid, _ in kept],
        weights=normalize_max_weight([w for _, w in kept], max_weight_limit, float32=True),
    )


def _exclude_lowest_quantile(
    positive: list[tuple[int, float]], exclude_quantile: int, min_allowed_weights: int
) -> list[tuple[int, float]]:
    """Drop positive weights below the requested quantile, keeping at least MinAllowedWeights.

    With `exclude_quantile == 0` the threshold is the minimum, so nothing is dropped.
    """
    count = len(positive)
    max_exclude = max(0, count - min_allowed_weights) / count
    quantile = min(exclude_quantile / U16_MAX, max_exclude)
    threshold = _linear_quantile(sorted(w for _, w in positive), quantile)
    return [(uid, w) for uid, w in positive if threshold <= w]


def _linear_quantile(ordered: list[float], q: float) -> float:
    """NumPy's default ("linear") quantile of float32 values, computed in float64 like NumPy.

    The float32 difference of the two neighbours is rounded first; from the midpoint on, NumPy
    interpolates down from the upper neighbour instead of up from the lower one.
    """
    virtual = q * (len(ordered) - 1)
    below = math.floor(virtual)
    above = min(below + 1, len(ordered) - 1)
    gamma = virtual - below
    low, high = ordered[below], ordered[above]
    diff = to_float32(high - low)
    if gamma >= 0.5:
        return high - diff * (1 - gamma)
    return low + diff * gamma


def normalize_max_weight(values: Sequence[float], limit: float, *, float32: bool) -> list[float]:
    """Scale to sum 1 with no value above `limit`, redistributing what a cap removes.

    Reproduces the reference's max-weight normalisation (`docs/weights.md` §3.5) in float32
    (`float32=True`, NumPy's rounding of every step, including its mixed-precision cut-off) or in
    float64. If the sum is 0 or `len * limit <= 1` (no vector can satisfy the limit), the result
    is uniform.
    """
    rnd: Rounder = to_float32 if float32 else keep_float64
    # Element-wise steps round a whole list at once (C speed) instead of value by value.
    rnd_all: Callable[[Iterable[float]], list[float]] = to_float32_list if float32 else list
    x = rnd_all(values)
    size = len(x)
    if size == 0:
        return []
    # A Python float meeting a float32 array is cast to float32 first (NumPy 2 promotion rules).
    limit_w = rnd(limit)
    epsilon_w = rnd(CAP_EPSILON)

    if pairwise_sum(x, rnd) == 0 or size * limit <= 1:
        return [rnd(1.0 / size)] * size

    ordered = sorted(x)
    ordered_total = pairwise_sum(ordered, rnd)
    estimation = rnd_all(v / ordered_total for v in ordered)
    if max(estimation) <= limit_w:
        total = pairwise_sum(x, rnd)
        return rnd_all(v / total for v in x)

    cumsum = cumulative_sum(estimation, rnd)
    n_values = 0
    for i, est in enumerate(estimation):
        tail = rnd(rnd(rnd((size - i - 1) * est) + cumsum[i]) + epsilon_w)
        if rnd(est / tail) < limit_w:
            n_values += 1
    # The numerator stays in the array precision; the denominator is a float64 (limit times an
    # integer count); their ratio and the cut-off are float64 (`docs/weights.md` §3.6).
    numerator = rnd(rnd(limit_w * cumsum[n_values - 1]) - epsilon_w)
    denominator = 1 - limit * (size - n_values)
    cutoff = numerator / denominator * ordered_total
    cutoff_w = rnd(cutoff)
    clipped = [cutoff_w if v > cutoff else v for v in x]
    total = pairwise_sum(clipped, rnd)
    return rnd_all(v / total for v in clipped)
