"""Synthetic batch benchmark: one shard against the simulator fleet, like reference-measurements.md.

For each size (miners × 8 `always_on.gpu-24gb` executors, weights version 4, localnet hashcat
difficulty so that the simulator really cracks every job, in about a millisecond), three processes
share this machine's cores:

* the **miner fleet** (`--serve-fleet`): N simulated miners, all `instant` (no simulated spin-up or
  run time), cracking in a small process pool;
* the **validator** (`--validator`): `run_shard` exactly as the job-runner runs it (job generation in
  its process pool, real Postgres, every row and event written), with no scheduler (the release
  fallback is taken at once), reporting its own timings, CPU and peak RSS;
* this driver, which only starts, waits and collects.

Reported per size:
* batch wall time: first connect to last row written (as in the reference measurements);
* validator overhead: wall time minus simulated work. Instant miners simulate no work, so the
  overhead is the whole wall time, cracking included (the work a real GPU would do in parallel);
* job-request release skew: max − min of the moments the `V0JobRequest`s were sent;
* validator CPU (main process; the generation workers separately) and peak RSS of its main process;
* how many jobs completed and how many were stored as anything else.

Run: `uv run python bench/batch.py [--sizes 64,256,512] [--executors 8]`.
Writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "batch.json"
EXECUTOR_CLASS = "always_on.gpu-24gb"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# Reference validator, same machine class (reference-measurements.md): jobs -> (batch s, skew ms, RSS MB).
REFERENCE = {64: (0.98, 7, 181), 256: (4.66, 34, 227), 512: (8.9, 81, 290)}


# ------------------------------------------------------------------------------------------ fleet


def serve_fleet(count: int, base_port: int, executors: int, cpu_workers: int) -> None:
    """Child process: the instant miner fleet on base_port..base_port+count-1, until SIGTERM."""
    import logging

    from horde_localnet.miners import MinerFleet

    logging.basicConfig(level=logging.ERROR)

    async def main() -> None:
        fleet = MinerFleet(
            count,
            base_port=base_port,
            executors={EXECUTOR_CLASS: executors},
            behaviours=dict.fromkeys(range(count), "instant"),
            cpu_workers=cpu_workers,
            send_machine_specs=True,
        )
        await fleet.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("READY", flush=True)
        await stop.wait()
        await fleet.stop()

    asyncio.run(main())


# -------------------------------------------------------------------------------------- validator


def run_validator(count: int, base_port: int, database_url: str) -> None:
    """Child process: one shard against the fleet; prints one JSON line with the measurements."""
    t_start = time.monotonic()
    from horde_common.bus.messages import MinerEndpoint
    from horde_common.db import create_engine, session_factory
    from horde_common.telemetry import configure_logging
    from horde_job_runner.synthetic.batch import run_shard
    from horde_job_runner.synthetic.generation import PoolJobFactory, shutdown_pool, warm_up
    from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
    from horde_job_runner.synthetic.persistence import BatchStore
    from horde_localnet import keys

    configure_logging("job-runner", "WARNING", stream=sys.stderr)
    if os.environ.get("BENCH_GC_OFF"):
        import gc

        gc.disable()
    imports_s = time.monotonic() - t_start
    warm_up()
    miners = [
        MinerEndpoint(
            hotkey=keys.miner_keypair(i).ss58_address, uid=i, address="127.0.0.1", port=base_port + i
        )
        for i in range(count)
    ]

    async def main() -> dict[str, Any]:
        engine = create_engine(database_url, pool_size=10)
        store = BatchStore(session_factory(engine))
        batch_id, _ = await store.create_batch()
        deps = BatchDeps(
            keypair=keys.validator_keypair(0),
            store=store,
            dynamic=DynamicValues(),
            difficulty="localnet",
            timeouts=BatchTimeouts(),
            job_factory=PoolJobFactory(),
        )
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = await run_shard(ShardRequest(batch_id=batch_id, miners=miners, weights_version=4), deps)
        after = resource.getrusage(resource.RUSAGE_SELF)
        await engine.dispose()
        stats = result.stats
        stage = stats["stage_mono"]
        first_connect = stage["_multi_get_miner_manifest"]

        def since(name: str) -> float | None:
            return round(stage[name] - first_connect, 3) if name in stage else None

        statuses: dict[str, int] = {}
        for job in result.jobs:
            key = "excluded" if job.excluded_from_scoring else job.status
            statuses[key] = statuses.get(key, 0) + 1
        return {
            "ok": result.ok,
            "persisted": result.persisted,
            "error": result.error,
            "jobs": len(result.jobs),
            "statuses": statuses,
            "wall_s": round(stats["finished_mono"] - first_connect, 3),
            "skew_ms": round(stats.get("send_skew_s", 0.0) * 1000, 2),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3),
            "persist_s": round(stats.get("persist_s", 0.0), 3),
            "stages_s": {
                name: since(name)
                for name in (
                    "_get_total_executor_count",
                    "_multi_send_initial_job_request",
                    "_report_ready",
                    "_multi_send_job_request",
                    "_score_jobs",
                    "_multi_close_client",
                    "_db_persist",
                )
            },
            "loop": stats.get("loop"),
            "longest_stalls": stats.get("longest_stalls"),
            "pacer_yields": stats.get("pacer_yields"),
        }

    profile_to = os.environ.get("BENCH_PROFILE")
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        out = profiler.runcall(asyncio.run, main())
        profiler.dump_stats(profile_to)
    else:
        out = asyncio.run(main())
    out["generation_workers_cpu_s"] = round(_pool_cpu_s(), 3)
    shutdown_pool()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["imports_s"] = round(imports_s, 2)
    print(json.dumps(out), flush=True)


def _pool_cpu_s() -> float:
    """CPU seconds of the generation workers (children of the forkserver, not of this process)."""
    import psutil

    from horde_job_runner.synthetic import generation

    pool = generation._pool
    total = 0.0
    for proc in (getattr(pool, "_processes", None) or {}).values():
        try:
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


# ----------------------------------------------------------------------------------------- driver


def _free_range(count: int) -> int:
    """A base port with `count` consecutive free ports."""
    for base in range(21000, 60000 - count, 997):
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


async def _create_db(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the fleet and its cracking workers)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def bench_one(count: int, executors: int, cpu_workers: int) -> dict[str, Any]:
    from horde_common.db.migrate import upgrade

    name = f"horde_bench_batch_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_db(name))
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    upgrade(url)
    base = _free_range(count)
    me = str(Path(__file__).resolve())
    fleet = subprocess.Popen(
        [sys.executable, me, "--serve-fleet", str(count), str(base), str(executors), str(cpu_workers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fleet.stdout is not None
        line = fleet.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"the fleet did not start: {line!r}")
        fleet_before = _tree_cpu_s(fleet.pid)
        proc = subprocess.run(
            [sys.executable, me, "--validator", str(count), str(base), url],
            capture_output=True,
            text=True,
            timeout=600,
        )
        fleet_cpu = _tree_cpu_s(fleet.pid) - fleet_before
        if proc.returncode != 0:
            raise RuntimeError(f"validator failed: {proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        fleet.send_signal(signal.SIGTERM)
        try:
            fleet.wait(30)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.wait()
        asyncio.run(_drop_db(name))
    result["simulator_cpu_s"] = round(fleet_cpu, 3)
    result["miners"] = count
    result["executors_per_miner"] = executors
    result["simulated_work_s"] = 0.0  # instant miners
    result["overhead_s"] = round(result["wall_s"] - result["simulated_work_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="64,256,512", help="miner counts")
    parser.add_argument("--executors", type=int, default=8, help="always_on.gpu-24gb executors per miner")
    parser.add_argument("--fleet-cpu-workers", type=int, default=2, help="simulator cracking processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median run is reported")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    runs = []
    for count in [int(s) for s in args.sizes.split(",") if s.strip()]:
        attempts = []
        for i in range(max(1, args.repeat)):
            with console.status(f"{count} miners × {args.executors} executors, run {i + 1}/{args.repeat}…"):
                attempts.append(bench_one(count, args.executors, args.fleet_cpu_workers))
        # The machine is shared (other processes come and go): report the median run by wall time,
        # keep every run in the JSON.
        attempts.sort(key=lambda r: r["wall_s"])
        median = dict(attempts[len(attempts) // 2])
        median["all_runs"] = [
            {k: r[k] for k in ("wall_s", "skew_ms", "cpu_s", "simulator_cpu_s", "peak_rss_mb")}
            for r in attempts
        ]
        runs.append(median)

    table = Table(title="synthetic batch (one shard, instant simulated miners, same 2 cores)")
    for col in (
        "miners × executors",
        "jobs completed",
        "batch wall s",
        "overhead s",
        "release skew ms",
        "validator CPU s",
        "gen. workers CPU s",
        "simulator CPU s",
        "peak RSS MB",
        "reference (wall s / skew ms / RSS MB)",
    ):
        table.add_column(col, justify="right")
    for r in runs:
        jobs = r["miners"] * r["executors_per_miner"]
        ref = REFERENCE.get(jobs)
        ref_text = "—" if ref is None else f"{ref[0]} / {ref[1]} / {ref[2]}"
        table.add_row(
            f"{r['miners']} × {r['executors_per_miner']} = {jobs}",
            f"{r['statuses'].get('COMPLETED', 0)}/{r['jobs']}",
            f"{r['wall_s']:.2f}",
            f"{r['overhead_s']:.2f}",
            f"{r['skew_ms']:.1f}",
            f"{r['cpu_s']:.2f}",
            f"{r['generation_workers_cpu_s']:.2f}",
            f"{r['simulator_cpu_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            ref_text,
        )
    console.print(table)
    goal = next((r for r in runs if r["miners"] == 256 and r["executors_per_miner"] == 8), None)
    if goal is not None:
        console.print(
            f"goals at 256×8: overhead {goal['overhead_s']:.2f} s (≤ 5), skew {goal['skew_ms']:.1f} ms (≤ 100), "
            f"RSS {goal['peak_rss_mb']:.0f} MB (≤ 300)"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "synthetic batch shard",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "executor_class": EXECUTOR_CLASS,
                "weights_version": 4,
                "difficulty": "localnet",
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"results in {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-fleet":
        serve_fleet(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--validator":
        run_validator(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main()
