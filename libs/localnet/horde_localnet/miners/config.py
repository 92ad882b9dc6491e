"""What one simulated miner is configured with, and the constants it shares with the real miner."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from horde_common.protocol.miner import MAX_EXECUTOR_TIMEOUT, ExecutorClass

from .behaviours import DEFAULT_RECONNECT_MODE, BehaviourSpec, ReconnectMode
from .solver import ExecutionResult

AUTH_MAX_AGE = 10  # seconds: the real miner's AUTH_MESSAGE_MAX_AGE
# After (re-)authentication, re-announce ready executors younger than 10 min; older ones are given
# up, as the real miner gives up a job that got no payload for 10 minutes.
READY_RESEND_MAX_AGE = 600
# Reconnect mode `real`: a new connection joins an unfinished job unless it has not changed for a
# day, the real miner's give-up age for jobs past the payload stage.
REJOIN_MAX_AGE = 24 * 3600
RECEIPTS_MAX_AGE = timedelta(hours=24)  # the receipts endpoint serves the last 24 h, like the miner's
MAX_FRAME = 50 * 2**20  # the protocol's frame limit (docs/miner-protocol.md §1.3)
# LLM jobs (docs/crossval.md §8): a series or workload file is ~240 short prompts, well under 100 KiB;
# 4 MiB refuses a broken or hostile URL long before it costs memory.
LLM_MAX_DOWNLOAD_BYTES = 4 * 2**20
# The LLM job's whole limit is 48 s (download, solve, upload); a download or an upload taking 10 s
# is a stuck server, and failing early leaves the validator a clear reason instead of a timeout.
LLM_DOWNLOAD_TIMEOUT_S = 10.0
LLM_UPLOAD_TIMEOUT_S = 10.0

SIMULATED_SPECS: dict[str, Any] = {
    "gpu": {
        "count": 1,
        "details": [
            {
                "name": "Simulated GPU (horde localnet)",
                "driver": "0",
                "capacity": "24564",
                "cuda": "8.9",
                "power_limit": "0",
                "graphics_speed": "0",
                "memory_speed": "0",
                "uuid": "GPU-localnet",
                "serial": "[N/A]",
            }
        ],
    },
    "cpu": {"count": os.cpu_count() or 1, "model": "localnet", "clocks": []},
    "ram": {"total": 0, "free": 0, "available": 0, "used": 0},
    "hard_disk": {"total": 0, "used": 0, "free": 0},
    "os": "horde localnet",
}

Runner = Callable[[Callable[[dict[str, Any]], ExecutionResult], dict[str, Any]], Awaitable[ExecutionResult]]
"""Runs the CPU part of a job (`runner(execute, spec)`): in a thread, a process pool, or a test's gate."""


async def run_in_thread(
    fn: Callable[[dict[str, Any]], ExecutionResult], job: dict[str, Any]
) -> ExecutionResult:
    return await asyncio.to_thread(fn, job)


@dataclass
class MinerConfig:
    """Everything one simulated miner needs besides its key and port."""

    executors: dict[ExecutorClass, int] = field(
        default_factory=lambda: {ExecutorClass.SPIN_UP_4MIN_GPU_24GB: 1}
    )
    behaviour: BehaviourSpec = field(default_factory=BehaviourSpec)
    known_validators: frozenset[str] | None = None  # None: every validator is known
    spin_up_delay: float = 0.0  # seconds from accept to executor ready (honest miners)
    executor_wait: float = float(MAX_EXECUTOR_TIMEOUT)  # how long a reservation waits for a free executor
    run_scripts: bool = False  # run the validator's raw_script in a subprocess instead of emulating it
    send_machine_specs: bool = True
    raw_manifest: list[dict[str, Any]] | None = None  # sent verbatim instead of `executors` (edge cases)
    clock: Callable[[], float] = time.time
    reconnect: ReconnectMode = DEFAULT_RECONNECT_MODE  # what a reconnect gets before authenticating
    # Trusted mode (docs/crossval.md §8): the validator's own local miner. It accepts exactly the one
    # validator of `known_validators` and does not check the miner hotkey of auth payloads and
    # receipts (the validator may not know the trusted miner's key).
    trusted: bool = False
    llm_max_download_bytes: int = LLM_MAX_DOWNLOAD_BYTES
    llm_download_timeout: float = LLM_DOWNLOAD_TIMEOUT_S
    llm_upload_timeout: float = LLM_UPLOAD_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.trusted and (self.known_validators is None or len(self.known_validators) != 1):
            raise ValueError("a trusted miner accepts exactly one validator: give one known validator")
