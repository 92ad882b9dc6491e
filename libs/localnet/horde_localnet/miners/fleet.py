"""A fleet of simulated miners on loopback ports: miner i signs with dev key `miner_keypair(i)`.

The localnet chain lists the same miners (`metagraph.yaml`: dev miner keys 0..count-1, miner i at
`host:base_port+i`), so `MinerFleet.from_spec(load_spec(path))` serves exactly what the metagraph
advertises.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

from horde_common.protocol.miner import ExecutorClass, Receipt
from horde_localnet import keys

from .behaviours import DEFAULT_RECONNECT_MODE, Behaviour, BehaviourSpec, ReconnectMode
from .miner import MinerConfig, SimulatedMiner, run_in_thread
from .solver import ExecutionResult, warm_up

DEFAULT_EXECUTORS: dict[ExecutorClass, int] = {ExecutorClass.SPIN_UP_4MIN_GPU_24GB: 1}


def parse_executors(value: Mapping[ExecutorClass | str, int] | None) -> dict[ExecutorClass, int]:
    if value is None:
        return dict(DEFAULT_EXECUTORS)
    out: dict[ExecutorClass, int] = {}
    for cls, count in value.items():
        try:
            executor_class = ExecutorClass(str(cls))
        except ValueError:
            raise ValueError(f"unknown executor class {cls!r}") from None
        out[executor_class] = int(count)
    return out


class MinerFleet:
    """`count` miners (dev key indices `first_index`..), each a WebSocket server.

    `base_port=0` gives every miner a free ephemeral port (tests); otherwise miner i listens on
    `base_port + i`. `behaviours` maps a miner index to a behaviour (`"slow:5"`, `Behaviour.DECLINE`,
    ...); the others are honest. `known_validators=None` accepts every validator.
    `cpu_workers=0` cracks jobs in threads (the default: a localnet job is ~2 ms of CPU, less than
    the cost of shipping it to a process), `n > 0` in a pool of n spawned processes (the main
    module must be import-safe, i.e. guarded by `if __name__ == "__main__"`).
    `reconnect` is what a validator's new connection gets for its unfinished jobs (`ReconnectMode`):
    `"real"` (default) pushes their messages at once, before authentication, as the November 2024
    miner does; `"legacy"` waits for the re-authentication.
    """

    def __init__(
        self,
        count: int,
        base_port: int = 0,
        executors: Mapping[ExecutorClass | str, int] | None = None,
        behaviours: Mapping[int, BehaviourSpec | Behaviour | str] | None = None,
        known_validators: Iterable[str] | None = None,
        *,
        host: str = "127.0.0.1",
        first_index: int = 0,
        not_serving: Iterable[int] = (),
        spin_up_delay: float = 0.0,
        executor_wait: float | None = None,
        cpu_workers: int = 0,
        run_scripts: bool = False,
        send_machine_specs: bool = True,
        raw_manifests: Mapping[int, list[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
        reconnect: ReconnectMode | str = DEFAULT_RECONNECT_MODE,
    ) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        self.host = host
        self.base_port = base_port
        self.cpu_workers = cpu_workers
        self._pool: Executor | None = None
        executor_counts = parse_executors(executors)
        specs = {int(i): BehaviourSpec.parse(b) for i, b in (behaviours or {}).items()}
        known = None if known_validators is None else frozenset(known_validators)
        try:
            reconnect_mode = ReconnectMode(str(reconnect))
        except ValueError:
            known_modes = ", ".join(m.value for m in ReconnectMode)
            raise ValueError(f"unknown reconnect mode {reconnect!r} (known: {known_modes})") from None
        skipped = set(not_serving)
        self.miners: list[SimulatedMiner] = []
        for i in range(first_index, first_index + count):
            if i in skipped:
                continue
            config = MinerConfig(
                executors=dict(executor_counts),
                behaviour=specs.get(i, BehaviourSpec()),
                known_validators=known,
                spin_up_delay=spin_up_delay,
                run_scripts=run_scripts,
                send_machine_specs=send_machine_specs,
                raw_manifest=(raw_manifests or {}).get(i),
                clock=clock,
                reconnect=reconnect_mode,
            )
            if executor_wait is not None:
                config.executor_wait = executor_wait
            self.miners.append(
                SimulatedMiner(
                    i,
                    keys.miner_keypair(i),
                    host=host,
                    port=0 if base_port == 0 else base_port + i,
                    config=config,
                    runner=self._run_job,
                )
            )

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> MinerFleet:
        """The fleet a localnet metagraph file describes (`horde_localnet.chain_spec.LocalnetSpec`).

        Reads `miners.count/host/base_port/not_serving` and the fleet-only keys `miners.executors`,
        `miners.behaviours` (index -> behaviour) and `miners.reconnect` (`real`/`legacy`); the known
        validators are the file's validators.
        """
        m = spec.miners
        extra = m.model_extra or {}
        kwargs: dict[str, Any] = {
            "count": m.count,
            "base_port": m.base_port,
            "host": m.host,
            "executors": extra.get("executors"),
            "behaviours": extra.get("behaviours"),
            "known_validators": [keys.validator_hotkey(v.index) for v in spec.validators],
            "not_serving": m.not_serving,
        }
        if extra.get("reconnect") is not None:
            kwargs["reconnect"] = extra["reconnect"]
        kwargs.update(overrides)
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.cpu_workers > 0 and self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.cpu_workers, mp_context=multiprocessing.get_context("spawn")
            )
            # Spawn the workers now, so that a broken pool fails `start()` rather than the first jobs.
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, warm_up) for _ in range(self.cpu_workers))
            )
        results = await asyncio.gather(*(m.start() for m in self.miners), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.miners), return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def __aenter__(self) -> MinerFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run_job(
        self, fn: Callable[[dict[str, Any]], ExecutionResult], job: dict[str, Any]
    ) -> ExecutionResult:
        if self._pool is None:
            return await run_in_thread(fn, job)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, job)

    # --------------------------------------------------------------------------------------- queries

    @property
    def ports(self) -> list[int]:
        return [m.port for m in self.miners]

    @property
    def hotkeys(self) -> list[str]:
        return [m.hotkey for m in self.miners]

    def miner(self, index: int) -> SimulatedMiner:
        """The miner with dev key index `index`."""
        for m in self.miners:
            if m.index == index:
                return m
        raise KeyError(index)

    def by_hotkey(self, hotkey: str) -> SimulatedMiner:
        for m in self.miners:
            if m.hotkey == hotkey:
                return m
        raise KeyError(hotkey)

    @property
    def receipts(self) -> list[Receipt]:
        return [r for m in self.miners for r in m.receipts]
