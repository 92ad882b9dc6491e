"""Float arithmetic that rounds like NumPy's float32 / float64 arrays, in pure Python.

The reference validator post-processed weights with NumPy in single precision, and the u16
integers it committed depend on the last bit of those floats (`docs/weights.md` §3.6). The
weights service does not depend on NumPy, so this module reproduces the few operations it
needs, bit for bit:

* one float32 operation = the same operation in double precision, then rounded to the nearest
  float32 (exact for `+ - * /`: a double holds more than twice float32's 24-bit significand,
  so the double rounding can never move the result);
* `pairwise_sum` follows NumPy's summation order for a contiguous 1-D `add.reduce` (eight
  interleaved accumulators per block of at most 128 values, blocks split in halves rounded to
  a multiple of 8), which is what `ndarray.sum()` does; plain left-to-right summation differs
  in the last bit for more than 7 values;
* `cumulative_sum` is `np.cumsum`: strictly left to right.

A `Rounder` is either `to_float32` (single precision) or `keep_float64` (double precision), so
one implementation serves both precisions the reference mixed.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable, Iterable, Sequence

Rounder = Callable[[float], float]

# NumPy's unroll factor and block size for pairwise summation (`PW_BLOCKSIZE`); the summation
# order, hence the rounding of every partial sum, depends on both.
_UNROLL = 8
_PAIRWISE_BLOCK = 128

_FLOAT32 = struct.Struct("<f")
_pack = _FLOAT32.pack
_unpack = _FLOAT32.unpack


def to_float32(x: float) -> float:
    """Round `x` to the nearest float32 (ties to even), returned as the equal Python float.

    Out-of-range values become signed infinity, as a NumPy cast does.
    """
    try:
        return float(_unpack(_pack(x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def keep_float64(x: float) -> float:
    """The identity: Python floats already are float64, so double-precision steps need no rounding."""
    return x


def to_float32_list(values: Iterable[float]) -> list[float]:
    """`np.asarray(values).astype(np.float32).tolist()`, at C speed (`array('f')` rounds each value)."""
    return array("f", values).tolist()


def pairwise_sum(values: Sequence[float], rnd: Rounder) -> float:
    """`ndarray.sum()` of a contiguous 1-D array, every partial sum rounded by `rnd`.

    The result starts from the additive identity (`0 + s`), as a NumPy reduction does.
    """
    return rnd(0.0 + _pairwise(values, 0, len(values), rnd))


def _pairwise(values: Sequence[float], start: int, count: int, rnd: Rounder) -> float:
    """NumPy's recursive pairwise summation of `values[start:start + count]`."""
    if count < _UNROLL:
        total = 0.0
        for i in range(start, start + count):
            total = rnd(total + values[i])
        return total
    if count <= _PAIRWISE_BLOCK:
        lanes = [values[start + j] for j in range(_UNROLL)]
        i = _UNROLL
        unrolled_end = count - count % _UNROLL
        while i < unrolled_end:
            base = start + i
            for j in range(_UNROLL):
                lanes[j] = rnd(lanes[j] + values[base + j])
            i += _UNROLL
        left = rnd(rnd(lanes[0] + lanes[1]) + rnd(lanes[2] + lanes[3]))
        right = rnd(rnd(lanes[4] + lanes[5]) + rnd(lanes[6] + lanes[7]))
        total = rnd(left + right)
        for k in range(start + i, start + count):
            total = rnd(total + values[k])
        return total
    half = count // 2
    half -= half % _UNROLL
    return rnd(_pairwise(values, start, half, rnd) + _pairwise(values, start + half, count - half, rnd))


def cumulative_sum(values: Sequence[float], rnd: Rounder) -> list[float]:
    """`np.cumsum(values)`: running totals left to right, each rounded by `rnd`."""
    out: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total = value if i == 0 else rnd(total + value)
        out.append(total)
    return out
