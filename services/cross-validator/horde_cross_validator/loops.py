"""The cross-validator's three periodic loops, built from their runs (docs/crossval.md §9).

One builder for the three: a run now, then one every period until the service stops. The periods
are the reference's; `prompt_loops(every_s=...)` gives the same loops on one shorter period (the
localnet runs them every 10 s, docs/crossval.md §9).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from horde_common.service import ServiceContext
from horde_cross_validator.answering import ANSWERING_INTERVAL_S, run_answering
from horde_cross_validator.generation import GENERATION_INTERVAL_S, run_generation
from horde_cross_validator.runtime import CrossValidatorRuntime
from horde_cross_validator.workloads import SAMPLING_INTERVAL_S, run_sampling

__all__ = ["Loop", "periodic", "prompt_loops"]

Loop = Callable[[ServiceContext], Awaitable[None]]


def periodic(run: Callable[[CrossValidatorRuntime], Awaitable[object]], interval_s: float, name: str) -> Loop:
    """A `ServiceSpec.loops` entry named `name` (as `/readyz` and `/debug/loops` show it): `run`
    now, then every `interval_s` until the service stops."""

    async def loop(ctx: ServiceContext) -> None:
        runtime = ctx.dependency(CrossValidatorRuntime)
        while True:
            await run(runtime)
            if await ctx.wait_stop(interval_s):
                return

    loop.__name__ = loop.__qualname__ = name
    return loop


def prompt_loops(every_s: float | None = None) -> list[Loop]:
    """Generation, sampling and answering, each on its own period, or all on `every_s`."""
    runs = [
        (run_generation, GENERATION_INTERVAL_S, "generation_loop"),
        (run_sampling, SAMPLING_INTERVAL_S, "sampling_loop"),
        (run_answering, ANSWERING_INTERVAL_S, "answering_loop"),
    ]
    return [periodic(run, every_s if every_s is not None else period, name) for run, period, name in runs]
