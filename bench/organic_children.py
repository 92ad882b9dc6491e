"""Child processes of the organic benchmark (`bench/organic.py`); each is started by the driver.

* `fleet COUNT BASE_PORT EXECUTORS TIMES_FILE`: the simulated miners, `wrong_answer` behaviour
  (accept, ready and finish at once with an arbitrary stdout: organic outputs are never checked,
  so for an organic job this is an instant miner that runs nothing). Each miner stamps, per job,
  when it got the initial request, sent its ready, got the job request and sent its final answer
  (wrapping the simulator's own methods in this process; the simulator is not changed). On SIGTERM
  the stamps go to TIMES_FILE as JSON.
* `facilitator PORT RATE COUNT WARMUP TIMEOUT OUT_FILE`: the facilitator simulator
  (`horde_localnet.facilitator`) with a paced feeder of V2 jobs. It prints `READY`, `LINKED` once
  the gateway authenticated, then waits for `GO` on stdin; sends WARMUP jobs at 20/s and waits
  for their final statuses (connections, caches, the first queries: not measured), prints
  `MEASURE_START`, sends COUNT jobs at RATE on an absolute schedule (job i is due at t0 + i/RATE,
  so a slow send does not lower the offered rate), prints `SENT`, waits until every job has a final
  status or TIMEOUT seconds passed since the last send, writes every measured job's send time and
  status frames (with the simulator's receive times) to OUT_FILE, prints `DONE` and serves on
  until SIGTERM.
* `service NAME PORT`: the `facilitator-gateway` or `job-runner` service, its own `SPEC` on PORT
  (what `python -m horde_cli.localnet job-runner --port P` runs for a replica). With
  `BENCH_WHAT_IF` set (`bench/organic.py --what-if`), library defaults are changed in this process
  before the service starts, to measure a suggested change without editing the code:
  `relay-poll=S` (the outbox relay's poll interval, 1 s), `no-pre-ping` (the engine's
  `pool_pre_ping`), `pool=N` (the engine's pool size, 5).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

EXECUTOR_CLASS = "always_on.gpu-24gb"
WARMUP_RATE = 20.0  # jobs/s of the unmeasured warm-up
# Messages stamped in the miners (by class name) and the key each gets in the stamps file.
STAMPED = {
    "V0AcceptJobRequest": "accept_sent",
    "V0ExecutorReadyRequest": "ready_sent",
    "V0JobFinishedRequest": "finished_sent",
    "V0JobFailedRequest": "finished_sent",
}
FINAL = frozenset({"completed", "failed", "rejected"})
# How often the facilitator child checks for jobs still without a final status (a monitor, not a
# synchronisation: the measurement uses the simulator's own receive times).
DRAIN_CHECK_S = 0.1


# ------------------------------------------------------------------------------------------ fleet


def serve_fleet(count: int, base_port: int, executors: int, times_file: str) -> None:
    import logging

    from horde_localnet.miners import MinerFleet
    from horde_localnet.miners.delivery import JobDelivery
    from horde_localnet.miners.lifecycle import JobLifecycle

    logging.basicConfig(level=logging.ERROR)
    stamps: dict[str, dict[str, float]] = {}
    on_initial = JobLifecycle.on_initial_job_request
    on_job_request = JobLifecycle.on_job_request
    send_job_message = JobDelivery.send_job_message

    def stamped_initial(self: Any, conn: Any, msg: Any) -> None:
        stamps.setdefault(msg.job_uuid, {})["initial_received"] = time.time()
        on_initial(self, conn, msg)

    async def stamped_job_request(self: Any, conn: Any, msg: Any) -> None:
        stamps.setdefault(msg.job_uuid, {})["job_request_received"] = time.time()
        await on_job_request(self, conn, msg)

    async def stamped_send(self: Any, job: Any, message: Any, **kwargs: Any) -> bool:
        sent = await send_job_message(self, job, message, **kwargs)
        key = STAMPED.get(type(message).__name__)
        if key is not None:
            stamps.setdefault(job.job_uuid, {})[key] = time.time()
        return sent

    JobLifecycle.on_initial_job_request = stamped_initial  # type: ignore[method-assign]
    JobLifecycle.on_job_request = stamped_job_request  # type: ignore[method-assign]
    JobDelivery.send_job_message = stamped_send  # type: ignore[method-assign]

    async def main() -> None:
        fleet = MinerFleet(
            count,
            base_port=base_port,
            executors={EXECUTOR_CLASS: executors},
            behaviours=dict.fromkeys(range(count), "wrong_answer"),
        )
        await fleet.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("READY", flush=True)
        await stop.wait()
        await asyncio.to_thread(Path(times_file).write_text, json.dumps(stamps))
        await fleet.stop()

    asyncio.run(main())


# ------------------------------------------------------------------------------------ facilitator


async def _feed(sim: Any, rate: float, count: int) -> list[str]:
    """Submit `count` V2 jobs at `rate` a second on an absolute schedule; their uuids."""
    from horde_localnet.facilitator import JobSpec

    spec = JobSpec(version="V2", executor_class=EXECUTOR_CLASS)
    loop = asyncio.get_running_loop()
    start = loop.time()
    uuids = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        record = sim.add_job(spec)
        await sim.dispatch()
        uuids.append(record.uuid)
    return uuids


def _has_final(sim: Any, job_uuid: str) -> bool:
    record = sim.jobs.get(job_uuid)
    return record is not None and any(s["status"] in FINAL for s in record.statuses)


async def _drain(sim: Any, uuids: list[str], within: float) -> int:
    """Wait until every job has a final status, at most `within` s; how many are still without."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = set(uuids)
    while pending:
        pending = {u for u in pending if not _has_final(sim, u)}
        if not pending or loop.time() >= deadline:
            break
        await asyncio.sleep(DRAIN_CHECK_S)
    return len(pending)


def serve_facilitator(port: int, rate: float, count: int, warmup: int, timeout: float, out: str) -> None:
    import logging

    from horde_localnet.facilitator import running_facilitator

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with running_facilitator(port=port) as running:
            sim = running.sim
            print("READY", flush=True)
            if not await sim.wait_until(lambda: bool(sim.links), 180.0):
                print("NO_VALIDATOR", flush=True)
                return
            print("LINKED", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() != "GO":
                return
            warm = await _feed(sim, WARMUP_RATE, warmup)
            warm_lost = await _drain(sim, warm, timeout)
            print("MEASURE_START", flush=True)
            uuids = await _feed(sim, rate, count)
            print("SENT", flush=True)
            lost = await _drain(sim, uuids, timeout)
            print("DRAINED", flush=True)
            measured = set(uuids)
            jobs = {
                u: {
                    "sent_at": sim.jobs[u].sent_at,
                    "state": sim.jobs[u].state,
                    "statuses": [[s["status"], s["received_at"]] for s in sim.jobs[u].statuses],
                }
                for u in uuids
                if u in sim.jobs
            }
            unknown = sum(1 for r in sim.jobs.values() if r.state == "unknown" and r.uuid not in measured)
            result = {
                "jobs": jobs,
                "warmup": {"count": warmup, "without_final": warm_lost},
                "without_final": lost,
                "status_frames_for_unknown_jobs": unknown,
                "counters": dict(sim.counters),
            }
            await asyncio.to_thread(Path(out).write_text, json.dumps(result))
            print("DONE", flush=True)
            await stop.wait()

    asyncio.run(main())


# --------------------------------------------------------------------------------------- services


def _apply_what_if(spec: str) -> None:
    """Change library defaults in this process only (see the module docstring)."""
    options = dict(item.partition("=")[::2] for item in spec.split(",") if item.strip())
    if "relay-poll" in options:
        from horde_common.bus.outbox import OutboxRelay

        poll_s, init = float(options["relay-poll"]), OutboxRelay.__init__

        def relay_init(self: Any, publisher: Any, sessions: Any, *, batch_size: int = 500, **_: Any) -> None:
            init(self, publisher, sessions, batch_size=batch_size, poll_interval_s=poll_s)

        OutboxRelay.__init__ = relay_init  # type: ignore[method-assign]
    if "no-pre-ping" in options or "pool" in options:
        from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

        import horde_common.db
        import horde_common.db.base

        pre_ping = "no-pre-ping" not in options
        size = int(options.get("pool") or 5)

        def create_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
            return create_async_engine(
                url, pool_size=max(size, pool_size), max_overflow=10, pool_pre_ping=pre_ping
            )

        horde_common.db.base.create_engine = create_engine
        horde_common.db.create_engine = create_engine  # type: ignore[attr-defined]


def serve(name: str, port: int) -> None:
    import dataclasses
    import os

    what_if = os.environ.get("BENCH_WHAT_IF")
    if what_if:
        _apply_what_if(what_if)
    from horde_common.service import run_service

    if name == "facilitator-gateway":
        from horde_facilitator_gateway.app import SPEC
    elif name == "job-runner":
        from horde_job_runner.app import SPEC
    else:
        raise SystemExit(f"not a service of this bench: {name!r}")
    run_service(dataclasses.replace(SPEC, port=port))


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "fleet":
        serve_fleet(int(args[0]), int(args[1]), int(args[2]), args[3])
    elif what == "facilitator":
        serve_facilitator(int(args[0]), float(args[1]), int(args[2]), int(args[3]), float(args[4]), args[5])
    elif what == "service":
        serve(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown child {what!r}")
