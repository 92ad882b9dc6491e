"""Event-loop stall detection: the validator's own stalls must never count against a miner.

A ticker sleeps `interval` seconds again and again; when it wakes up more than `threshold` late,
the loop was blocked (CPU work on the loop, a GC pause, the host descheduling us) from the moment it
should have woken up until it did. Every such stall is kept as an interval on the monotonic clock,
so a job whose time window overlaps a stall can be excused instead of failed (docs/synthetic-batch.md
§4; docs/performance.md: the reference counted 12–37 % of a 512-job batch as miner timeouts because
of its own send stall).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoopMonitor"]


@dataclass
class LoopMonitor:
    interval: float = 0.05
    threshold: float = 0.1
    monotonic: Callable[[], float] = time.monotonic
    stalls: list[tuple[float, float]] = field(default_factory=list)
    stall_cpu: list[float] = field(default_factory=list)
    max_lag: float = 0.0
    total_lag: float = 0.0
    ticks: int = 0
    _task: asyncio.Task[None] | None = None
    _expected: float | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            expected = self.monotonic() + self.interval
            self._expected = expected
            cpu_before = time.process_time()
            await asyncio.sleep(self.interval)
            now = self.monotonic()
            lag = max(0.0, now - expected)
            self.ticks += 1
            self.total_lag += lag
            self.max_lag = max(self.max_lag, lag)
            if lag > self.threshold:
                self.stalls.append((expected, now))
                # Our own CPU over the tick: about the lag when our code blocked the loop, much
                # less when the host did not run us (other processes on the same cores).
                self.stall_cpu.append(time.process_time() - cpu_before)

    def note_stall(self, start: float, end: float) -> None:
        """Record a stall measured elsewhere (e.g. a synchronous step timed by the caller)."""
        if end > start:
            self.stalls.append((start, end))
            self.max_lag = max(self.max_lag, end - start)

    def stalled_within(self, start: float, end: float) -> float:
        """Seconds of stall overlapping `[start, end]` (as far as observed until now)."""
        total = 0.0
        stalls = list(self.stalls)
        # A stall still going on (we are being called from inside it, or right after it, before the
        # ticker could run): from the ticker's missed wake-up until now.
        if self._task is not None and self._expected is not None:
            now = self.monotonic()
            if now - self._expected > self.threshold:
                stalls.append((self._expected, now))
        for s, e in stalls:
            lo, hi = max(s, start), min(e, end)
            if hi > lo:
                total += hi - lo
        return total

    def profile(self) -> dict[str, float | int]:
        """`loop_profiling` telemetry: lag statistics of the batch's event loop."""
        return {
            "ticks": self.ticks,
            "max_lag_s": round(self.max_lag, 6),
            "mean_lag_s": round(self.total_lag / self.ticks, 6) if self.ticks else 0.0,
            "stalls": len(self.stalls),
            "stalled_s": round(sum(e - s for s, e in self.stalls), 6),
            "stalled_cpu_s": round(sum(self.stall_cpu), 6),
        }
