"""Choose and build the generator for one executor (docs/miner-protocol.md §3.6 step 2)."""

from __future__ import annotations

import random
from datetime import datetime

from horde_common.config import HashcatDifficulty

from .base import CLASS_ALWAYS_ON_LLM_A6000, JobGenerator
from .hashcat import HashcatJobGenerator
from .llm import LlmPromptSample, LlmPromptsJobGenerator


def is_llm_class(executor_class: str) -> bool:
    return executor_class == CLASS_ALWAYS_ON_LLM_A6000


def make_generator(
    executor_class: str,
    weights_version: int,
    miner_hotkey: str,
    difficulty: HashcatDifficulty | str = HashcatDifficulty.PRODUCTION,
    rng: random.Random | None = None,
    *,
    now: datetime | None = None,
    llm_sample: LlmPromptSample | None = None,
) -> JobGenerator:
    """The generator for one job on one executor of `executor_class`.

    `always_on.llm.a6000` gets an LLM prompt job (raises `NoPromptsAvailable` without `llm_sample`);
    every other class a hashcat job for `weights_version`. `now` (UTC) picks the v0 algorithm and
    stamps Fernet tokens. `rng` makes everything reproducible (tests and benchmarks only).

    CPU-heavy for hashcat jobs (~1 ms each with production parameters): build batches of jobs in a
    worker thread or process, not on the event loop.
    """
    if is_llm_class(executor_class):
        return LlmPromptsJobGenerator(
            executor_class=executor_class, miner_hotkey=miner_hotkey, sample=llm_sample, rng=rng
        )
    return HashcatJobGenerator(
        executor_class=executor_class,
        weights_version=weights_version,
        miner_hotkey=miner_hotkey,
        difficulty=difficulty,
        rng=rng,
        now=now,
    )
