"""The "horde score": how one miner's job scores in the spin-up class become one number.

docs/scoring.md §1.3. A plain sum would pay a miner the same per executor however many it runs; the
horde score multiplies the sum by a size factor that rises with the number of jobs (a sigmoid in
1/n), and optionally by a power of the average job score. Pure: numbers in, a number out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_HORDE_SCORE_PARAMS", "HordeScoreParams", "horde_score", "size_factor"]


@dataclass(frozen=True, slots=True)
class HordeScoreParams:
    """The three `HORDE_SCORE_*` parameters (static settings, not dynamic config).

    `avg_param` (α): exponent of the average job score; 0 makes the average irrelevant.
    `size_param` (β): the sigmoid's steepness is `10 ** β`; 0 gives steepness 1.
    `central_size_param` (C): the sigmoid is centred where `1/n == 1/C`.
    The defaults are the values the November 2024 validator ran with (docs/scoring.md §1.3).
    """

    avg_param: float = 0.0
    size_param: float = 0.0
    central_size_param: float = 1.0

    def __post_init__(self) -> None:
        # C is a divisor; a non-positive centre has no meaning as a horde size.
        if not self.central_size_param > 0:
            raise ValueError(f"central_size_param must be > 0, got {self.central_size_param!r}")


DEFAULT_HORDE_SCORE_PARAMS: Final = HordeScoreParams()


def size_factor(n: int, params: HordeScoreParams = DEFAULT_HORDE_SCORE_PARAMS) -> float:
    """σ(n) = 1 / (1 + exp(10^β · (1/n − 1/C))): the reward for running n executors.

    With the defaults: 0.5 at n = 1, rising towards 1 / (1 + e^-1) ≈ 0.731 as n grows. An `exp` too
    large for a float means a factor of 0 (the limit), not an error: only extreme parameters reach it.
    """
    if n < 1:
        raise ValueError(f"a horde has at least one job, got n={n}")
    steepness = 10.0**params.size_param
    z = steepness * (1.0 / n - 1.0 / params.central_size_param)
    try:
        return 1.0 / (1.0 + math.exp(z))
    except OverflowError:
        return 0.0


def horde_score(scores: Iterable[float], params: HordeScoreParams = DEFAULT_HORDE_SCORE_PARAMS) -> float:
    """`A^α · S · σ(n)` over one miner's job scores in the class (failed jobs count in n at 0).

    S is summed with `math.fsum`, which is exactly rounded and therefore independent of the order
    the jobs come in (rows arrive from several shards in no fixed order). `0 ** 0 == 1`, so with
    α = 0 a miner whose jobs all scored 0 gets 0 from S, not from the average.
    """
    values = list(scores)
    n = len(values)
    if n == 0:
        raise ValueError("a horde score needs at least one job")
    total = math.fsum(values)
    if min(values) < 0 or not math.isfinite(total):
        # A negative average to a fractional power is not a real number; no job score is negative.
        raise ValueError("job scores must be finite and non-negative")
    average = total / n
    return float(average**params.avg_param * total * size_factor(n, params))
