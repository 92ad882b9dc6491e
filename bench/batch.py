"""Synthetic batch benchmark: one shard against the simulator fleet, like docs/performance.md.

For each size (miners × 8 `always_on.gpu-24gb` executors, weights version 4) and difficulty, three
processes share this machine's cores:

* the **miner fleet** (`--serve-fleet`): N simulated miners that answer at once (no simulated
  spin-up or run time). At `localnet` difficulty they are `instant` miners that really crack every
  job (about a millisecond each, in a small process pool). At `production` difficulty no simulator
  can crack a job, so they are `wrong_answer` miners: accept, ready, a plausible wrong stdout and
  machine specs at once, which runs the validator's whole path (receipts, verification, scoring,
  persistence) and leaves its own cost in plain view;
* the **validator** (`--validator`): `run_shard` exactly as the job-runner runs it (job generation in
  its process pool, real Postgres, every row and event written), with no scheduler (the release
  fallback is taken at once), reporting its own timings, CPU and peak RSS;
* this driver, which only starts, waits and collects.

Reported per size:
* batch wall time: first connect to last row written (as in the reference measurements);
* job-request release skew: max − min of the moments the `V0JobRequest`s were sent;
* CPU per job of the validator's main process, and separately of its generation workers (the
  processes under it, read before and after the shard); CPU time, not wall time, is the figure to
  trust on a shared machine;
* how many jobs completed, the persist time, the simulator's CPU and the validator's peak RSS.

Run: `uv run python bench/batch.py [--difficulty localnet|production|both] [--sizes 64,256,512]
[--repeat 3] [--label NAME] [--compare-with OLD_TREE] [--py-spy DIR]`. `--compare-with` runs each
attempt twice, alternating an older tree of the packages ('before') with this one ('after'), so
that both see the same load. Writes bench/results/batch-<difficulty>.json (one entry per label;
the table shows every stored label). `--replicas N [--sizes 512]`: one batch split over 1, then N
job-runner replicas released together, their overhead and release skew (`bench/batch_replicas.py`).
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

RESULTS_DIR = Path(__file__).parent / "results"
EXECUTOR_CLASS = "always_on.gpu-24gb"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# Reference validator, same machine class (docs/performance.md): jobs -> (batch s, skew ms, RSS MB).
REFERENCE = {64: (0.98, 7, 181), 256: (4.66, 34, 227), 512: (8.9, 81, 290)}


# ------------------------------------------------------------------------------------------ fleet


def serve_fleet(count: int, base_port: int, executors: int, cpu_workers: int, behaviour: str) -> None:
    """Child process: the miner fleet (all `behaviour`) on base_port..base_port+count-1, until SIGTERM."""
    import logging

    from horde_localnet.miners import MinerFleet

    logging.basicConfig(level=logging.ERROR)

    async def main() -> None:
        fleet = MinerFleet(
            count,
            base_port=base_port,
            executors={EXECUTOR_CLASS: executors},
            behaviours=dict.fromkeys(range(count), behaviour),
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


def run_validator(count: int, base_port: int, database_url: str, difficulty: str) -> None:
    """Child process: one shard against the fleet; prints one JSON line with the measurements."""
    t_start = time.monotonic()
    from horde_common.bus.messages import MinerEndpoint
    from horde_common.db import create_engine, session_factory
    from horde_common.telemetry import configure_logging
    from horde_job_runner.synthetic.batch import run_shard
    from horde_job_runner.synthetic.generation import PoolJobFactory
    from horde_job_runner.synthetic.generation_pool import GenerationPool
    from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
    from horde_job_runner.synthetic.persistence import BatchStore
    from horde_localnet import keys

    configure_logging("job-runner", "WARNING", stream=sys.stderr)
    if os.environ.get("BENCH_GC_OFF"):
        import gc

        gc.disable()
    imports_s = time.monotonic() - t_start
    pool = GenerationPool()  # this validator's generation workers, started before the shard
    pool.warm_up()
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
            difficulty=difficulty,
            timeouts=BatchTimeouts(),
            job_factory=PoolJobFactory(pool),
        )
        workers_before = _pool_cpu_s()
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = await run_shard(ShardRequest(batch_id=batch_id, miners=miners, weights_version=4), deps)
        after = resource.getrusage(resource.RUSAGE_SELF)
        workers_cpu = _pool_cpu_s() - workers_before
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
            "generation_workers_cpu_s": round(workers_cpu, 3),
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
    pool.shutdown()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["imports_s"] = round(imports_s, 2)
    print(json.dumps(out), flush=True)


def _pool_cpu_s() -> float:
    """CPU seconds so far of this process's descendants: the forkserver and the generation workers
    it forked (grandchildren, so `RUSAGE_CHILDREN` does not see them). Read before and after the
    shard; the difference is the generation cost of the shard (the forkserver itself is idle then).
    """
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            times = proc.cpu_times()
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


# The simulated miners' behaviour per difficulty. Localnet: `instant` miners crack every job for real
# (about a millisecond each). Production: no simulator can crack a production job, so the miners
# answer at once with a wrong answer (`wrong_answer`: accept, ready, a plausible stdout, machine
# specs), which runs the validator's whole path (receipts, verification, scoring, persistence) and
# leaves its own cost in plain view, as in the measurement against 0.0.18 miners.
BEHAVIOUR = {"localnet": "instant", "production": "wrong_answer"}


def bench_one(
    count: int,
    executors: int,
    cpu_workers: int,
    difficulty: str,
    py_spy: Path | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """One shard; `code`: a directory put first on the fleet's and the validator's PYTHONPATH (an
    older tree of the packages, for an A/B under the same load)."""
    from horde_common.db.migrate import upgrade

    name = f"horde_bench_batch_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_db(name))
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    upgrade(url)
    base = _free_range(count)
    me = str(Path(__file__).resolve())
    behaviour = BEHAVIOUR[difficulty]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    fleet = subprocess.Popen(
        [
            sys.executable,
            me,
            "--serve-fleet",
            str(count),
            str(base),
            str(executors),
            str(cpu_workers),
            behaviour,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert fleet.stdout is not None
        line = fleet.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"the fleet did not start: {line!r}")
        fleet_before = _tree_cpu_s(fleet.pid)
        command = [sys.executable, me, "--validator", str(count), str(base), url, difficulty]
        if py_spy is not None:
            # Sample the validator's main process only (its workers are profiled apart, if at all).
            command = [
                "py-spy",
                "record",
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                str(py_spy),
                "--",
                *command,
            ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        fleet_cpu = _tree_cpu_s(fleet.pid) - fleet_before
        if proc.returncode != 0:
            raise RuntimeError(f"validator failed: {proc.stderr[-3000:]}")
        json_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        result: dict[str, Any] = json.loads(json_lines[-1])
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
    result["difficulty"] = difficulty
    result["miner_behaviour"] = behaviour
    result["simulated_work_s"] = 0.0  # instant miners
    result["overhead_s"] = round(result["wall_s"] - result["simulated_work_s"], 3)
    jobs = max(1, result["jobs"])
    result["main_cpu_ms_per_job"] = round(result["cpu_s"] * 1000 / jobs, 3)
    result["workers_cpu_ms_per_job"] = round(result["generation_workers_cpu_s"] * 1000 / jobs, 3)
    return result


def _results_path(difficulty: str) -> Path:
    return RESULTS_DIR / f"batch-{difficulty}.json"


def _load(difficulty: str) -> dict[str, Any]:
    path = _results_path(difficulty)
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {
        "benchmark": "synthetic batch shard",
        "executor_class": EXECUTOR_CLASS,
        "weights_version": 4,
        "difficulty": difficulty,
        "miner_behaviour": BEHAVIOUR[difficulty],
        "labels": {},
    }


def _median_run(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median main-process CPU (CPU time, unlike wall time, hardly depends on the
    neighbours on this shared machine; the median of few runs still does a little), with every run
    kept in `all_runs`."""
    attempts = sorted(attempts, key=lambda r: r["cpu_s"])
    median = dict(attempts[(len(attempts) - 1) // 2])
    keys = (
        "wall_s",
        "skew_ms",
        "cpu_s",
        "generation_workers_cpu_s",
        "persist_s",
        "simulator_cpu_s",
        "peak_rss_mb",
    )
    median["all_runs"] = [{k: r[k] for k in keys} for r in attempts]
    median["min_main_cpu_ms_per_job"] = round(min(r["main_cpu_ms_per_job"] for r in attempts), 3)
    median["min_workers_cpu_ms_per_job"] = round(min(r["workers_cpu_ms_per_job"] for r in attempts), 3)
    return median


def _bench_size(
    console: Any, count: int, args: argparse.Namespace, difficulty: str
) -> dict[str, list[dict[str, Any]]]:
    """Every attempt at one size, by label: `args.label`, or `before`/`after` alternating with
    `--compare-with` (so that both see the same load)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for i in range(max(1, args.repeat)):
        variants = (
            [("before", args.compare_with), ("after", None)] if args.compare_with else [(args.label, None)]
        )
        for label, code in variants:
            with console.status(
                f"{difficulty} {label}: {count} miners × {args.executors} executors, run {i + 1}/{args.repeat}…"
            ):
                spy = None
                if args.py_spy and i == 0:
                    spy = Path(args.py_spy) / f"validator-{difficulty}-{label}-{count}x{args.executors}.txt"
                    spy.parent.mkdir(parents=True, exist_ok=True)
                run = bench_one(count, args.executors, args.fleet_cpu_workers, difficulty, spy, code)
                out.setdefault(label, []).append(run)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="64,256,512", help="miner counts")
    parser.add_argument("--executors", type=int, default=8, help="always_on.gpu-24gb executors per miner")
    parser.add_argument("--fleet-cpu-workers", type=int, default=2, help="simulator cracking processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the median run is reported")
    parser.add_argument(
        "--difficulty",
        choices=("localnet", "production", "both"),
        default="both",
        help="hashcat difficulty: localnet (instant miners crack every job), production (miners answer "
        "at once with a wrong answer), or both",
    )
    parser.add_argument(
        "--label",
        default="current",
        help="stored under this label in bench/results/batch-<difficulty>.json (e.g. before, after); "
        "the table shows every stored label",
    )
    parser.add_argument(
        "--py-spy", default=None, help="directory: sample the first validator run with py-spy"
    )
    parser.add_argument(
        "--compare-with",
        default=None,
        help="a directory holding an older tree of horde_common, horde_localnet and horde_job_runner: "
        "each run is made twice, alternating, as 'before' (that tree first on PYTHONPATH) and 'after'",
    )
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=220)
    difficulties = ["localnet", "production"] if args.difficulty == "both" else [args.difficulty]
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    stored: dict[str, dict[str, Any]] = {}
    for difficulty in difficulties:
        by_label: dict[str, list[dict[str, Any]]] = {}
        for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
            for label, attempts in _bench_size(console, size, args, difficulty).items():
                by_label.setdefault(label, []).append(_median_run(attempts))
        data = _load(difficulty)
        for label, new_runs in by_label.items():
            # Sizes measured now replace the same sizes of an earlier invocation; others are kept.
            measured = {(r["miners"], r["executors_per_miner"]) for r in new_runs}
            kept = [
                r
                for r in data["labels"].get(label, {}).get("runs", [])
                if (r["miners"], r["executors_per_miner"]) not in measured
            ]
            runs = sorted([*kept, *new_runs], key=lambda r: r["miners"] * r["executors_per_miner"])
            data["labels"][label] = {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": machine,
                "code": "an older tree (--compare-with)"
                if label == "before" and args.compare_with
                else "this tree",
                "runs": runs,
            }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        _results_path(difficulty).write_text(json.dumps(data, indent=2) + "\n")
        stored[difficulty] = data

    table = Table(title="synthetic batch (one shard, simulated miners answering at once, same 2 cores)")
    for col in (
        "difficulty (miners)",
        "label",
        "miners × executors",
        "jobs completed",
        "batch wall s",
        "release skew ms",
        "main CPU s",
        "main CPU ms/job",
        "gen. workers CPU ms/job",
        "persist s",
        "simulator CPU s",
        "peak RSS MB",
        "reference (wall s / skew ms / RSS MB)",
    ):
        table.add_column(col, justify="right")
    for difficulty, data in stored.items():
        for label, entry in data["labels"].items():
            for r in entry["runs"]:
                jobs = r["miners"] * r["executors_per_miner"]
                ref = REFERENCE.get(jobs)
                ref_text = "—" if ref is None else f"{ref[0]} / {ref[1]} / {ref[2]}"
                table.add_row(
                    f"{difficulty} ({r.get('miner_behaviour', BEHAVIOUR[difficulty])})",
                    label,
                    f"{r['miners']} × {r['executors_per_miner']} = {jobs}",
                    f"{r['statuses'].get('COMPLETED', 0)}/{r['jobs']}",
                    f"{r['wall_s']:.2f}",
                    f"{r['skew_ms']:.1f}",
                    f"{r['cpu_s']:.2f}",
                    f"{r['cpu_s'] * 1000 / max(1, r['jobs']):.2f}",
                    f"{r['generation_workers_cpu_s'] * 1000 / max(1, r['jobs']):.2f}",
                    f"{r.get('persist_s', 0.0):.3f}",
                    f"{r['simulator_cpu_s']:.2f}",
                    f"{r['peak_rss_mb']:.0f}",
                    ref_text,
                )
    console.print(table)
    for difficulty in stored:
        console.print(f"results in {_results_path(difficulty)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-fleet":
        serve_fleet(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--validator":
        run_validator(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif "--replicas" in sys.argv:  # one batch over job-runner replicas (bench/batch_replicas.py)
        from batch_replicas import main as replicas_main

        replicas_main(sys.argv[1:])
    else:
        main()
