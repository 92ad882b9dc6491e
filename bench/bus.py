"""Bus benchmark: publish -> RabbitMQ -> consume through the real `Broker`, confirms + persistent.

Publisher and consumer run in two processes by default, like two services do (`--same-process` puts
both on one event loop). Against a private vhost (created with rabbitmqctl, deleted afterwards):
- throughput: 10,000 messages published as fast as confirms allow, consumed concurrently;
- paced: 1,000 msg/s for a few seconds, the latency a service sees at a realistic rate.
Latency is end to end: message creation (`sent_at`) to the consumer's handler, same host clock.
Prints a table and writes bench/results/bus.json. Run: `uv run python bench/bus.py [--help]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from horde_common.bus.broker import Broker
from horde_common.bus.messages import ChainMetagraphSynced
from horde_common.bus.router import BusRouter, HandlerContext

RESULTS = Path(__file__).parent / "results" / "bus.json"
QUEUE = "weights.chain.metagraph.synced"  # a real quorum work queue of the topology


@contextlib.contextmanager
def private_vhost(base_url: str) -> Iterator[str]:
    """A throw-away vhost when rabbitmqctl is at hand (so the bench never touches real queues)."""
    if shutil.which("rabbitmqctl") is None:
        yield base_url
        return
    vhost = f"horde_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"{base_url.rstrip('/')}/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


def install_uvloop(enabled: bool) -> str:
    if enabled:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
            return "uvloop"
    return "asyncio"


class Sink:
    """The consumer side: records end-to-end latency and signals when `expected` messages arrived."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.expected = 0
        self.done = asyncio.Event()

    def reset(self, expected: int) -> None:
        self.latencies_ms = []
        self.expected = expected
        self.done = asyncio.Event()

    def router(self) -> BusRouter:
        router = BusRouter()

        @router.handler(QUEUE)
        async def on_message(msg: ChainMetagraphSynced, ctx: HandlerContext) -> None:
            self.latencies_ms.append((time.time() - msg.sent_at.timestamp()) * 1000)
            if len(self.latencies_ms) >= self.expected:
                self.done.set()

        return router

    async def collect(self, expected: int, limit_s: float) -> list[float]:
        """Latencies of the next `expected` messages (call `reset` before publishing them)."""
        await asyncio.wait_for(self.done.wait(), limit_s)
        return self.latencies_ms


class RemoteSink:
    """The same interface, backed by a consumer process (see `consumer_process`)."""

    def __init__(self, pipe: Connection) -> None:
        self._pipe = pipe

    def reset(self, expected: int) -> None:
        self._pipe.send(expected)
        assert self._pipe.recv() == "armed"

    async def collect(self, expected: int, limit_s: float) -> list[float]:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._pipe.poll, limit_s):
            raise TimeoutError(f"consumer did not receive {expected} messages in {limit_s} s")
        latencies: list[float] = self._pipe.recv()
        return latencies


def consumer_process(url: str, prefetch: int, uvloop: bool, pipe: Connection) -> None:
    install_uvloop(uvloop)

    async def serve() -> None:
        sink = Sink()
        consumer = Broker(url, service="weights", prefetch=prefetch)
        await consumer.start(sink.router())
        pipe.send("ready")
        loop = asyncio.get_running_loop()
        while (expected := await loop.run_in_executor(None, pipe.recv)) is not None:
            sink.reset(expected)
            pipe.send("armed")
            pipe.send(await sink.collect(expected, 300))
        await consumer.stop(grace_s=1)

    asyncio.run(serve())


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else 0.0
    )


async def throughput_run(producer: Broker, sink: Sink | RemoteSink, n: int, window: int) -> dict[str, Any]:
    sink.reset(n)
    in_flight = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with in_flight:
            await producer.publish(ChainMetagraphSynced(block=i, neuron_count=256))

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    published = time.perf_counter() - start
    latencies = await sink.collect(n, 300)
    elapsed = time.perf_counter() - start
    return {
        "messages": n,
        "publish_window": window,
        "publish_msgs_per_s": round(n / published),
        "msgs_per_s": round(n / elapsed),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }


async def paced_run(producer: Broker, sink: Sink | RemoteSink, rate: int, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    sink.reset(n)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(producer.publish(ChainMetagraphSynced(block=i, neuron_count=256)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    latencies = await sink.collect(n, 120)
    elapsed = loop.time() - start
    return {
        "rate": rate,
        "messages": n,
        "achieved_msgs_per_s": round(n / elapsed),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
    }


async def run(url: str, args: argparse.Namespace, pipe: Connection | None) -> dict[str, Any]:
    local: Sink | None = None
    consumer: Broker | None = None
    if pipe is None:
        local = Sink()
        consumer = Broker(url, service="weights", prefetch=args.prefetch)
        await consumer.start(local.router())
    sink: Sink | RemoteSink = local if local is not None else RemoteSink(pipe)  # type: ignore[arg-type]
    producer = Broker(url, service="scheduler")
    await producer.connect()
    try:
        await throughput_run(producer, sink, min(2000, args.messages), args.window)  # warm-up
        throughput = await throughput_run(producer, sink, args.messages, args.window)
        paced = await paced_run(producer, sink, args.rate, args.seconds)
    finally:
        await producer.stop(grace_s=1)
        if consumer is not None:
            await consumer.stop(grace_s=1)
    return {"throughput": throughput, "paced": paced}


def main(args: argparse.Namespace) -> dict[str, Any]:
    base = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
    loop_name = install_uvloop(not args.no_uvloop)
    with private_vhost(base) as url:
        if args.same_process:
            result = asyncio.run(run(url, args, None))
        else:
            parent, child = mp.get_context("spawn").Pipe()
            proc = mp.get_context("spawn").Process(
                target=consumer_process, args=(url, args.prefetch, not args.no_uvloop, child), daemon=True
            )
            proc.start()
            try:
                if not parent.poll(60) or parent.recv() != "ready":
                    raise RuntimeError("consumer process did not start")
                result = asyncio.run(run(url, args, parent))
            finally:
                parent.send(None)
                proc.join(10)
    result["settings"] = {
        "processes": 1 if args.same_process else 2,
        "event_loop": loop_name,
        "prefetch": args.prefetch,
        "publish_window": args.window,
        "confirms": True,
        "persistent": True,
        "queue": "quorum",
    }
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}
    return result


def report(result: dict[str, Any]) -> None:
    t, p, s = result["throughput"], result["paced"], result["settings"]
    table = Table(
        title=f"horde bus: publish (confirms, persistent) -> quorum queue -> consume "
        f"({s['processes']} process(es), {s['event_loop']})"
    )
    for col in ("run", "messages", "msgs/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "run" else "right")
    table.add_row("throughput", str(t["messages"]), str(t["msgs_per_s"]), str(t["p50_ms"]), str(t["p99_ms"]))
    table.add_row(
        f"paced {p['rate']}/s",
        str(p["messages"]),
        str(p["achieved_msgs_per_s"]),
        str(p["p50_ms"]),
        str(p["p99_ms"]),
    )
    console = Console()
    console.print(table)
    console.print(f"publish-only rate: {t['publish_msgs_per_s']} msg/s; results in {RESULTS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=200, help="publishes awaiting their confirm at once")
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--same-process", action="store_true", help="publisher and consumer on one loop")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="the default asyncio loop even if uvloop exists"
    )
    result = main(parser.parse_args())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
