"""Executor classes: the wire values and the per-class facts the batch timing depends on
(docs/miner-protocol.md §5).

Only the three classes live in November 2024 exist; an unknown class string is a protocol error
(it makes a whole manifest invalid), so the enum must not grow speculative members.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ExecutorClass(StrEnum):
    """Wire values of the executor classes."""

    SPIN_UP_4MIN_GPU_24GB = "spin_up-4min.gpu-24gb"
    ALWAYS_ON_GPU_24GB = "always_on.gpu-24gb"
    ALWAYS_ON_LLM_A6000 = "always_on.llm.a6000"


# The class a manifest's deprecated integer `0` stands for, and the default everywhere else.
DEFAULT_EXECUTOR_CLASS = ExecutorClass.SPIN_UP_4MIN_GPU_24GB
LLM_EXECUTOR_CLASS = ExecutorClass.ALWAYS_ON_LLM_A6000

# The miner's reservation cap, and the fixed `ttl` of JobAccepted receipts (docs/miner-protocol.md §2.4.2).
MAX_EXECUTOR_TIMEOUT = 360
# The default class's spin-up time.
DEFAULT_EXECUTOR_TIMEOUT = 240
# Floor applied to a class's spin-up time: covers messaging overhead for always-on classes.
MIN_SPIN_UP_TIME = 2


@dataclass(frozen=True, slots=True)
class ExecutorClassSpec:
    """What a class promises. Hardware fields are informational: the validator only checks timing."""

    description: str
    has_gpu: bool
    gpu_vram_gb: int
    spin_up_time: int  # seconds


EXECUTOR_CLASS_SPECS: dict[ExecutorClass, ExecutorClassSpec] = {
    ExecutorClass.SPIN_UP_4MIN_GPU_24GB: ExecutorClassSpec(
        description="cost effective (started on demand), generic GPU machine",
        has_gpu=True,
        gpu_vram_gb=24,
        spin_up_time=240,
    ),
    ExecutorClass.ALWAYS_ON_GPU_24GB: ExecutorClassSpec(
        description="always on, generic GPU machine",
        has_gpu=True,
        gpu_vram_gb=24,
        spin_up_time=0,
    ),
    ExecutorClass.ALWAYS_ON_LLM_A6000: ExecutorClassSpec(
        description="always on, NVIDIA RTX A6000 GPU machine for LLM prompts solving",
        has_gpu=True,
        gpu_vram_gb=48,
        spin_up_time=240,  # despite the name
    ),
}


def spin_up_time(executor_class: ExecutorClass) -> int:
    """The class's nominal spin-up time in seconds (0 for always-on GPU)."""
    return EXECUTOR_CLASS_SPECS[executor_class].spin_up_time


def job_spin_up_time(executor_class: ExecutorClass) -> int:
    """The spin-up allowance a job gets: `max(spin_up_time, 2)`; also a JobStarted receipt's `ttl`."""
    return max(spin_up_time(executor_class), MIN_SPIN_UP_TIME)


def max_spin_up_time(executor_classes: list[ExecutorClass] | set[ExecutorClass]) -> int:
    """The batch's spin-up window: the largest job allowance among the classes present (at least 2)."""
    return max((job_spin_up_time(c) for c in executor_classes), default=MIN_SPIN_UP_TIME)


def parse_executor_class(value: object) -> ExecutorClass | None:
    """A manifest entry's class: the enum itself, or the deprecated integer 0; None for anything else."""
    if isinstance(value, ExecutorClass):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return DEFAULT_EXECUTOR_CLASS
    if isinstance(value, str):
        try:
            return ExecutorClass(value)
        except ValueError:
            return None
    return None
