"""Start-up benchmark: how fast the operator's commands answer and the services become ready.

Measured (each as the median of `--repeat` runs, every run kept in the JSON):

* `horde --help`: wall time of the whole process (goal ≤ 0.4 s);
* `horde debug run-synthetic-jobs`: from process start to its first miner connect, seen by a tiny
  WebSocket server of ours that only records when the connection arrives (goal ≤ 1.0 s);
* each of the five services: from process start to its first `/readyz` 200 (goal ≤ 3 s), against
  the real Postgres and RabbitMQ of this machine (a fresh database and vhost);
* a debug batch against 1 simulated miner with 8 `always_on.gpu-24gb` executors that answers at
  once (`instant`): from the miner's first connect to the JSON on stdout, which the command prints
  only after the rows are persisted (goal ≤ 0.3 s). The command connects to its miners first and
  imports the batch's modules (SQLAlchemy, the ORM models, the shard) while they answer, so this
  window holds those imports too; the row below it gives the batch alone, from the command's own
  `timings_s` (database check and batch row, then `run_shard` from its connects to its persisted
  rows), for the same runs.

Run: `uv run python bench/startup.py` (writes bench/results/startup.json). `--label before` writes
bench/results/startup-before.json instead; the table shows those "before" figures beside the
current ones whenever that file exists. To measure another tree's code with this environment, put
its package directories first on PYTHONPATH (they shadow the editable workspace packages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
# Goals of issue 6 §3, in seconds.
GOALS = {"help": 0.4, "first_connect": 1.0, "readyz": 3.0, "batch_1x8": 0.3}
# Generous bounds so that a broken build fails the bench instead of hanging it.
STEP_TIMEOUT_S = 60.0
# readyz is polled this often: fine enough for a 3 s goal, cheap enough not to slow the service.
POLL_INTERVAL_S = 0.02
HORDE = str(Path(sys.executable).parent / "horde")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the child's process group (it runs in its own session), SIGKILL it after `grace_s`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie still counts as a member of its group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def bench_help(repeat: int) -> dict[str, Any]:
    walls, cpus = [], []
    for _ in range(repeat):
        t0 = time.monotonic()
        proc = subprocess.Popen([HORDE, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.monotonic() - t0)
        cpus.append(usage.ru_utime + usage.ru_stime)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"horde --help exited {proc.returncode}")
    return {"wall_s": _median(walls), "cpu_s": _median(cpus), "runs": [round(w, 3) for w in walls]}


# ------------------------------------------------------------------ debug command: first connect


def _cli_env(url: str, **extra: str) -> dict[str, str]:
    from horde_localnet import keys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUG_MINER_", "HOTKEY_", "DATABASE_"))}
    env.update(
        DATABASE_URL=url,
        HOTKEY_SEED=keys.validator_seed(0),
        SYNTHETIC_HASHCAT_DIFFICULTY="localnet",
        **extra,
    )
    return env


async def _first_connect_once(url: str) -> float:
    import websockets

    from horde_localnet import keys

    arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        if not arrived.done():
            arrived.set_result(time.monotonic())
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        env = _cli_env(url, DEBUG_MINER_KEY=keys.miner_keypair(0).ss58_address, DEBUG_MINER_PORT=str(port))
        t0 = time.monotonic()
        # Popen returns at once; an asyncio child would need its transport closed on this loop.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [HORDE, "debug", "run-synthetic-jobs"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return await asyncio.wait_for(arrived, STEP_TIMEOUT_S) - t0
        finally:
            await asyncio.to_thread(_stop_group, proc)
            proc.wait()


def bench_first_connect(url: str, repeat: int) -> dict[str, Any]:
    runs = [asyncio.run(_first_connect_once(url)) for _ in range(repeat)]
    return {"wall_s": _median(runs), "runs": [round(r, 3) for r in runs]}


# ------------------------------------------------------------------------- debug batch, 1 × 8


async def _batch_once(url: str) -> dict[str, Any]:
    from horde_localnet.miners import MinerFleet

    index = 900  # a dev miner index no other bench or test uses
    fleet = MinerFleet(
        1, executors={"always_on.gpu-24gb": 8}, behaviours={index: "instant"}, first_index=index
    )
    miner = fleet.miners[0]
    first: list[float] = []
    original = miner._process_request

    def stamped(connection: Any, request: Any) -> Any:
        if not first:
            first.append(time.monotonic())
        return original(connection, request)

    miner._process_request = stamped  # type: ignore[method-assign]
    async with fleet:
        env = _cli_env(url, DEBUG_MINER_KEY=miner.hotkey, DEBUG_MINER_PORT=str(miner.port))
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            HORDE,
            "debug",
            "run-synthetic-jobs",
            "--json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STEP_TIMEOUT_S)
        stored = time.monotonic()
        # Read both pipes to their end, so that their transports close on this loop.
        _, err = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), proc.stderr.read()), STEP_TIMEOUT_S
        )
        code = await asyncio.wait_for(proc.wait(), STEP_TIMEOUT_S)
        exited = time.monotonic()
    if code != 0 or not first:
        raise RuntimeError(f"debug batch failed (exit {code}): {err.decode()[-2000:]}")
    payload = json.loads(line)
    jobs = payload["jobs"]
    completed = sum(j["status"] == "COMPLETED" for j in jobs)
    timings = payload.get("timings_s") or {}  # absent from commands older than this bench
    batch_alone = timings.get("prepare", 0.0) + timings.get("shard", 0.0) if timings else None
    return {
        "connect_to_stored_s": round(stored - first[0], 3),
        "batch_alone_s": None if batch_alone is None else round(batch_alone, 3),
        "command_timings_s": timings,
        "start_to_connect_s": round(first[0] - t0, 3),
        "command_wall_s": round(exited - t0, 3),
        "jobs": len(jobs),
        "completed": completed,
    }


def bench_batch(url: str, repeat: int) -> dict[str, Any]:
    runs = [asyncio.run(_batch_once(url)) for _ in range(repeat)]
    runs.sort(key=lambda r: r["connect_to_stored_s"])
    median = dict(runs[len(runs) // 2])
    median["runs"] = runs
    return median


# ---------------------------------------------------------------------------- services /readyz


def _readyz_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# `python -m horde_<service>` with the port replaced, so that the bench never collides with a
# localnet on the standard ports: the same imports and the same `run_service` as in production.
SERVICE_MAIN = (
    "import dataclasses, sys\n"
    "from horde_common.service import run_service\n"
    "from {module}.app import SPEC\n"
    "run_service(dataclasses.replace(SPEC, port={port}))\n"
)


def _service_env(url: str, amqp_url: str) -> dict[str, str]:
    from horde_cli.localnet import localnet_env
    from horde_localnet.config import DEFAULT_TOPOLOGY

    env = {**os.environ, **localnet_env(DEFAULT_TOPOLOGY)}
    env.update(DATABASE_URL=url, AMQP_URL=amqp_url, SERVICE_HOST="127.0.0.1", DEBUG_TOKEN="bench")
    return env


def _readyz_once(name: str, env: dict[str, str]) -> float | str:
    from horde_common.service_ports import service_module

    port = _free_port()
    code = SERVICE_MAIN.format(module=service_module(name), port=port)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.monotonic() - t0 < STEP_TIMEOUT_S:
            if proc.poll() is not None:
                return f"exited with {proc.returncode}"
            if _readyz_ok(port):
                return time.monotonic() - t0
            time.sleep(POLL_INTERVAL_S)
        return "not ready in time"
    finally:
        _stop_group(proc)
        proc.wait()


def bench_services(url: str, amqp_url: str, repeat: int) -> dict[str, Any]:
    from horde_common.service_ports import SERVICE_PORTS

    env = _service_env(url, amqp_url)
    out: dict[str, Any] = {}
    for name in SERVICE_PORTS:
        runs = [_readyz_once(name, env) for _ in range(repeat)]
        times = [r for r in runs if isinstance(r, float)]
        errors = [r for r in runs if isinstance(r, str)]
        out[name] = {
            "wall_s": _median(times) if times else None,
            "runs": [round(r, 3) if isinstance(r, float) else r for r in runs],
            "error": errors[0] if errors else None,
        }
    return out


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=STEP_TIMEOUT_S)


def measure(repeat: int) -> dict[str, Any]:
    from horde_common.db.migrate import upgrade

    run_id = uuid.uuid4().hex[:8]
    db = f"horde_bench_startup_{run_id}"
    vhost = f"horde_bench_startup_{run_id}"
    asyncio.run(_admin(f'CREATE DATABASE "{db}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{db}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        upgrade(url)
        return {
            "help": bench_help(max(repeat, 5)),
            "first_connect": bench_first_connect(url, repeat),
            "batch_1x8": bench_batch(url, repeat),
            "readyz": bench_services(url, f"{AMQP_BASE}/{vhost}", repeat),
        }
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


def _fmt(value: float | None, goal: float) -> str:
    return "—" if value is None else f"[{'green' if value <= goal else 'red'}]{value:.3f}[/]"


def _rows(r: dict[str, Any]) -> list[tuple[str, float | None, float]]:
    return [
        ("horde --help (wall s)", r["help"]["wall_s"], GOALS["help"]),
        ("debug command → first miner connect (s)", r["first_connect"]["wall_s"], GOALS["first_connect"]),
        (
            "debug batch 1×8: connect → rows stored (s)",
            r["batch_1x8"]["connect_to_stored_s"],
            GOALS["batch_1x8"],
        ),
        (
            "  of which the batch alone, after the imports (s)",
            r["batch_1x8"].get("batch_alone_s"),
            GOALS["batch_1x8"],
        ),
        *((f"{n}: start → /readyz 200 (s)", s["wall_s"], GOALS["readyz"]) for n, s in r["readyz"].items()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--label", default="after", help='"before" writes startup-before.json')
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    with console.status("measuring start-up…"):
        results = measure(args.repeat)
    before_path = RESULTS_DIR / "startup-before.json"
    out_path = before_path if args.label == "before" else RESULTS_DIR / "startup.json"
    before = None
    if args.label != "before" and before_path.exists():
        before = json.loads(before_path.read_text())["results"]

    table = Table(title=f"start-up ({args.label}; median of {args.repeat} runs, {os.cpu_count()} cores)")
    table.add_column("measurement")
    if before is not None:
        table.add_column("before", justify="right")
    table.add_column(args.label, justify="right")
    table.add_column("goal", justify="right")
    before_rows = {n: v for n, v, _ in _rows(before)} if before is not None else {}
    for name, value, goal in _rows(results):
        cells = [name]
        if before is not None:
            cells.append(_fmt(before_rows.get(name), goal))
        cells += [_fmt(value, goal), f"≤ {goal}"]
        table.add_row(*cells)
    console.print(table)
    for name, s in results["readyz"].items():
        if s["error"]:
            console.print(f"[yellow]{name}: {s['error']}[/]")
    batch = results["batch_1x8"]
    console.print(
        f"debug batch: {batch['completed']}/{batch['jobs']} jobs completed, command wall {batch['command_wall_s']} s"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}
    payload = {
        "benchmark": "start-up",
        "label": args.label,
        "machine": machine,
        # What was measured: PYTHONPATH shadows the workspace packages when measuring another tree.
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "goals_s": GOALS,
        "results": results,
    }
    out_path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"results in {out_path}")


if __name__ == "__main__":
    main()
