"""Synthetic batch benchmark across job-runner replicas: one batch, its miners split into shards, one
validator process per shard, released together (`bench/batch.py --replicas N`).

The scheduler's part is played by this driver: it starts one `--replica` process per shard (each runs
`run_shard` as the job-runner does, with its own generation pool, against the same database and
batch), waits until every shard reported its executors ready (the `batch.shard.ready` hook), then
writes the release to every replica at once (the `batch.released` broadcast: a line on each one's
stdin). Each configuration (1 replica, then N) runs the same batch size against the same fleet
behaviour, so the figures compare:

* overhead: wall time from the first replica's first connect to the last replica's rows written
  (the miners answer at once, so all of it is the validator's);
* release skew across replicas: max - min of the moments the `V0JobRequest`s were sent, from the
  `time_started` of every job's JobFinished receipt in the database (one wall clock: one machine);
* the release as each replica saw it (`released` by the driver, or its own deadline fallback).

Run: `uv run python bench/batch.py --replicas 2 [--sizes 512] [--executors 8] [--difficulty
production|localnet]` (or `bench/batch_replicas.py` with the same flags). Writes
bench/results/batch-replicas-<difficulty>.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # `batch` (this benchmark's fleet and database helpers)

import batch as single

RESULTS_DIR = Path(__file__).parent / "results"
# How long a replica waits for the driver's release before taking its own fallback, and how long the
# driver waits for every replica's ready: far above a 4096-job shard's preparation on 2 cores.
RELEASE_WAIT_S = 300.0
# A whole replica run, generation to rows written, on a shared 2-core machine.
REPLICA_TIMEOUT_S = 900.0


# ------------------------------------------------------------------------------------------ replica


def run_replica(
    lo: int,
    hi: int,
    base_port: int,
    database_url: str,
    difficulty: str,
    batch_id: int,
    index: int,
    count: int,
) -> None:
    """Child process: shard `index` of `count` (miners lo..hi-1), released through stdin; one JSON line."""
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
    pool = GenerationPool()
    pool.warm_up()
    miners = [
        MinerEndpoint(
            hotkey=keys.miner_keypair(i).ss58_address, uid=i, address="127.0.0.1", port=base_port + i
        )
        for i in range(lo, hi)
    ]

    class StdinRelease:
        """The release broadcast: the driver's `RELEASE` line on stdin (read in a thread)."""

        def __init__(self) -> None:
            self.line: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            loop = asyncio.get_running_loop()

            def deliver(line: str) -> None:
                if not self.line.done():
                    self.line.set_result(line)

            def read() -> None:
                loop.call_soon_threadsafe(deliver, sys.stdin.readline())

            threading.Thread(target=read, daemon=True).start()

        async def wait(self, batch_id: int, timeout_s: float) -> datetime | None:
            try:
                await asyncio.wait_for(asyncio.shield(self.line), timeout_s)
            except TimeoutError:
                return None
            return datetime.now(UTC)

    async def publish_ready(msg: Any) -> None:
        print(f"READY {msg.shard_index} {msg.ready_executor_count}", flush=True)

    async def main() -> dict[str, Any]:
        engine = create_engine(database_url, pool_size=10)
        deps = BatchDeps(
            keypair=keys.validator_keypair(0),
            store=BatchStore(session_factory(engine)),
            dynamic=DynamicValues(),
            difficulty=difficulty,
            timeouts=BatchTimeouts(),
            job_factory=PoolJobFactory(pool),
            release_waiter=StdinRelease(),
            publish_ready=publish_ready,
        )
        request = ShardRequest(
            batch_id=batch_id,
            miners=miners,
            weights_version=4,
            shard_index=index,
            shard_count=count,
            release_deadline=datetime.now(UTC) + timedelta(seconds=RELEASE_WAIT_S),
        )
        result = await run_shard(request, deps)
        await engine.dispose()
        stats = result.stats
        offset = time.time() - time.monotonic()  # this process's monotonic clock -> wall clock
        return {
            "shard": index,
            "ok": result.ok,
            "jobs": len(result.jobs),
            "release": stats.get("release"),
            "start_wall": stats["stage_mono"]["_multi_get_miner_manifest"] + offset,
            "end_wall": stats["finished_mono"] + offset,
            "skew_in_shard_ms": round(stats.get("send_skew_s", 0.0) * 1000, 2),
            "error": result.error,
            "statuses": dict(
                Counter("excluded" if j.excluded_from_scoring else j.status for j in result.jobs)
            ),
        }

    out = asyncio.run(main())
    pool.shutdown()
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- driver


async def _create_batch(url: str) -> int:
    from horde_common.db import create_engine, session_factory
    from horde_job_runner.synthetic.persistence import BatchStore

    engine = create_engine(url)
    try:
        batch_id, _ = await BatchStore(session_factory(engine)).create_batch()
    finally:
        await engine.dispose()
    return int(batch_id)


async def _send_times(url: str, batch_id: int) -> list[datetime]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch(
            "SELECT r.time_started FROM job_finished_receipts r JOIN synthetic_jobs j USING (job_uuid)"
            " WHERE j.batch_id = $1",
            batch_id,
        )
    finally:
        await conn.close()
    return [r["time_started"] for r in rows]


def _read_line(proc: subprocess.Popen[str], prefix: str, deadline: float) -> str:
    """The next stdout line of `proc` starting with `prefix` (bounded by `deadline`, monotonic)."""
    assert proc.stdout is not None
    box: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(prefix):
                box.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not box:
        raise RuntimeError(f"replica {proc.pid}: no {prefix!r} line (exit code {proc.poll()})")
    return box[0]


def bench_replicas(count: int, executors: int, replicas: int, difficulty: str) -> dict[str, Any]:
    """One batch of `count` miners split over `replicas` validator processes, released together."""
    from horde_common.db.migrate import upgrade

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = f"horde_bench_replicas_{uuid.uuid4().hex[:8]}"
    asyncio.run(single._create_db(name))
    url = (
        single.PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        + f"/{name}"
    )
    upgrade(url)
    base = single._free_range(count)
    me = str(Path(__file__).resolve())
    behaviour = single.BEHAVIOUR[difficulty]
    fleet = subprocess.Popen(
        [sys.executable, str(Path(single.__file__).resolve()), "--serve-fleet", str(count), str(base),
         str(executors), "2", behaviour],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    procs: list[subprocess.Popen[str]] = []
    logs = open(RESULTS_DIR / "batch-replicas.log", "a")  # the replicas' stderr; closed in the finally
    try:
        assert fleet.stdout is not None
        if fleet.stdout.readline().strip() != "READY":
            raise RuntimeError("the fleet did not start")
        batch_id = asyncio.run(_create_batch(url))
        cuts = [count * r // replicas for r in range(replicas + 1)]
        for r in range(replicas):
            argv = [me, "--replica", str(cuts[r]), str(cuts[r + 1]), str(base), url, difficulty]
            argv += [str(batch_id), str(r), str(replicas)]
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=logs,  # the replicas' warnings (every wrong answer is one): kept apart
                    text=True,
                )
            )
        deadline = time.monotonic() + RELEASE_WAIT_S
        for proc in procs:
            _read_line(proc, "READY", deadline)
        for proc in procs:  # the broadcast: back to back, as RabbitMQ fans out `batch.released`
            assert proc.stdin is not None
            proc.stdin.write("RELEASE\n")
            proc.stdin.flush()
        deadline = time.monotonic() + REPLICA_TIMEOUT_S
        shards = [json.loads(_read_line(proc, "{", deadline)) for proc in procs]
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
        sent = asyncio.run(_send_times(url, batch_id))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        fleet.terminate()
        try:
            fleet.wait(30)
        except subprocess.TimeoutExpired:
            fleet.kill()
            fleet.wait()
        asyncio.run(single._drop_db(name))
        logs.close()
    return {
        "replicas": replicas,
        "miners": count,
        "executors_per_miner": executors,
        "difficulty": difficulty,
        "miner_behaviour": behaviour,
        "jobs": sum(s["jobs"] for s in shards),
        "requests_sent": len(sent),
        "overhead_s": round(max(s["end_wall"] for s in shards) - min(s["start_wall"] for s in shards), 3),
        "skew_ms": round((max(sent) - min(sent)).total_seconds() * 1000, 2) if sent else None,
        "skew_in_shard_ms": [s["skew_in_shard_ms"] for s in shards],
        "releases": [s["release"] for s in shards],
        "ok": all(s["ok"] for s in shards),
        "shards": [{k: s[k] for k in ("shard", "jobs", "statuses", "error")} for s in shards],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=2, help="job-runner replicas compared with one")
    parser.add_argument("--sizes", default="512", help="miner counts")
    parser.add_argument("--executors", type=int, default=8, help="always_on.gpu-24gb executors per miner")
    parser.add_argument("--difficulty", choices=("localnet", "production"), default="production")
    args, _ = parser.parse_known_args(argv)  # `bench/batch.py`'s other flags do not apply here

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    runs = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        for replicas in sorted({1, args.replicas}):
            with console.status(f"{size} miners × {args.executors} executors on {replicas} replica(s)…"):
                runs.append(bench_replicas(size, args.executors, replicas, args.difficulty))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"batch-replicas-{args.difficulty}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "synthetic batch over job-runner replicas",
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count()},
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    table = Table(title="one batch, shards over job-runner replicas, released together (same machine)")
    for col in ("miners × executors", "replicas", "requests sent", "overhead s", "release skew ms",
                "skew in each shard ms", "release", "ok"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            f"{r['miners']} × {r['executors_per_miner']}",
            str(r["replicas"]),
            f"{r['requests_sent']}/{r['jobs']}",
            f"{r['overhead_s']:.2f}",
            "—" if r["skew_ms"] is None else f"{r['skew_ms']:.1f}",
            ", ".join(f"{s:.1f}" for s in r["skew_in_shard_ms"]),
            ", ".join(str(x) for x in r["releases"]),
            str(r["ok"]),
        )
    console.print(table)
    console.print(f"results in {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--replica":
        a = sys.argv[2:]
        run_replica(int(a[0]), int(a[1]), int(a[2]), a[3], a[4], int(a[5]), int(a[6]), int(a[7]))
    else:
        main()
