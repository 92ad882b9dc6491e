"""Hostile manifests (issue 6 §1): absurd executor counts and huge manifests.

Each miner here is a real WebSocket server on a real socket that ignores authentication and answers
with a crafted `V0ExecutorManifestRequest`; the shard runs against real Postgres. The fault must be
recorded against the miner, the shard must end within its normal deadlines, and the validator's
process tree must stay small. To measure that tree alone (not this test session's memory), the two
acceptance cases run the shard in a fresh validator process (`python -c`), with the real generator
pool, which reports its own tree's peak RSS and then stops its pool and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psutil
import pytest
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection, serve

from horde_common.bus.messages import MinerEndpoint
from horde_common.db.models import MinerManifest, SyntheticJob, SystemEvent
from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
from horde_job_runner.synthetic.persistence import BatchStore
from horde_job_runner.synthetic.scoring import MAX_EXECUTORS_PER_CLASS, MAX_EXECUTORS_PER_MINER, cap_manifest
from horde_localnet import keys

pytestmark = pytest.mark.timeout(180)

AO = "always_on.gpu-24gb"
SPIN = "spin_up-4min.gpu-24gb"
LLM = "always_on.llm.a6000"
BILLION = 10**9

FAST: dict[str, Any] = {
    "manifest": 3.0,
    "receipt_send": 2.0,
    "close": 1.0,
    "job_wait_extra": 1.0,
    "spin_up": {AO: 1.0, SPIN: 1.0, LLM: 1.0},
    "job_timeout": 2.0,
    "persist_backoff": 0.01,
}
# The bound for the validator's process tree while a hostile manifest is handled.
TREE_RSS_LIMIT = 300 * 2**20
# Extra memory a refused 100,000-entry manifest may cost (issue 6 §1).
EXTRA_MEMORY_LIMIT = 50 * 2**20
# A fresh validator process imports everything and may start its pool on a busy 2-core machine.
CHILD_EXIT_S = 90.0

# The validator process: runs one shard with the real pool (`PoolJobFactory`), samples the RSS of
# its own process tree every 20 ms, stops the pool and prints one RESULT line.
VALIDATOR_PROCESS = r"""
import asyncio, json, sys, time
import psutil
from horde_common.bus.messages import MinerEndpoint
from horde_common.db import create_engine, session_factory
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import PoolJobFactory
from horde_job_runner.synthetic.generation_pool import GenerationPool
from horde_job_runner.synthetic.model import BatchDeps, BatchTimeouts, DynamicValues, ShardRequest
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys


def tree_rss():
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


async def no_sleep(delay):
    await asyncio.sleep(0)


async def main(args):
    engine = create_engine(args["db_url"])
    pool = GenerationPool()  # this validator's own, as the service instance's
    if args["warm"]:
        await pool.start()  # as the service does when it starts
    baseline = peak = tree_rss()

    async def sample():
        nonlocal peak
        while True:
            peak = max(peak, tree_rss())
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    started = time.monotonic()
    endpoint = MinerEndpoint(hotkey=args["hotkey"], uid=0, address="127.0.0.1", port=args["port"])
    result = await run_shard(
        ShardRequest(batch_id=args["batch_id"], miners=[endpoint], weights_version=4),
        BatchDeps(
            keypair=keys.validator_keypair(0),
            store=BatchStore(session_factory(engine)),
            dynamic=DynamicValues(),
            difficulty="localnet",
            timeouts=BatchTimeouts(**args["timeouts"]),
            job_factory=PoolJobFactory(pool),
            sleep=no_sleep,
        ),
    )
    elapsed = time.monotonic() - started
    sampler.cancel()
    peak = max(peak, tree_rss())
    descendants = [p.pid for p in psutil.Process().children(recursive=True)]
    await engine.dispose()
    await asyncio.to_thread(pool.shutdown)
    out = {"persisted": result.persisted, "jobs": len(result.jobs), "elapsed": elapsed,
           "baseline": baseline, "peak": peak, "descendants": descendants}
    print("RESULT " + json.dumps(out), flush=True)


asyncio.run(main(json.loads(sys.argv[1])))
"""


def manifest_frame(entries: list[dict[str, Any]]) -> str:
    return json.dumps(
        {"message_type": "V0ExecutorManifestRequest", "manifest": {"executor_classes": entries}}
    )


class HostileMiner:
    """Answers the first frame (the validator's authentication, whatever it says) with `manifest`,
    then keeps every later frame without answering."""

    def __init__(self, manifest: str) -> None:
        self.manifest = manifest
        self.received: list[str | bytes] = []
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        async for frame in ws:
            self.received.append(frame)
            if len(self.received) == 1:
                await ws.send(self.manifest)


@asynccontextmanager
async def hostile_miner(manifest: str) -> AsyncIterator[HostileMiner]:
    miner = HostileMiner(manifest)
    server = await serve(miner.handler, "127.0.0.1", 0, max_size=2**20)
    try:
        miner.port = next(iter(server.sockets)).getsockname()[1]
        yield miner
    finally:
        server.close(close_connections=True)
        await asyncio.wait_for(server.wait_closed(), 10)


async def run_validator_process(
    db_url: str, batch_id: int, miner: HostileMiner, hotkey: str, timeouts: dict[str, Any], *, warm: bool
) -> dict[str, Any]:
    """Run the shard in a fresh validator process; returns its RESULT (and `wall`, its lifetime)."""
    args = {
        "db_url": db_url,
        "batch_id": batch_id,
        "port": miner.port,
        "hotkey": hotkey,
        "timeouts": timeouts,
        "warm": warm,
    }
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VALIDATOR_PROCESS,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHILD_EXIT_S)
    except TimeoutError:
        # The validator overran: end it and whatever it started (its workers hold our pipes).
        with contextlib.suppress(psutil.Error):
            for descendant in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    descendant.kill()
        proc.kill()
        await proc.wait()
        raise AssertionError(f"the validator process did not exit within {CHILD_EXIT_S:g} s") from None
    wall = time.monotonic() - started
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = [line for line in out.decode().splitlines() if line.startswith("RESULT ")]
    assert lines, (out.decode()[-2000:], err.decode()[-2000:])
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall"] = wall
    return result


async def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still running after up to `timeout_s` (polled: an orphan's exit has no event here;
    a zombie left for PID 1 to reap runs nothing and holds no memory)."""

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    alive = [p for p in pids if running(p)]
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        alive = [p for p in alive if running(p)]
    return alive


async def rows(store: BatchStore, model: Any, batch_id: int) -> list[Any]:
    async with store.sessions() as session:
        return list((await session.scalars(select(model).where(model.batch_id == batch_id))).all())


async def events(store: BatchStore, batch_id: int) -> list[SystemEvent]:
    async with store.sessions() as session:
        result = await session.scalars(
            select(SystemEvent)
            .where(SystemEvent.data["batch_id"].as_integer() == batch_id)
            .where(SystemEvent.type != "VALIDATOR_TELEMETRY")
            .order_by(SystemEvent.id)
        )
        return list(result.all())


# ----------------------------------------------------------------------------------- capping rules


def test_caps_every_class_and_the_miner_total() -> None:
    ao, spin, llm = ExecutorClass(AO), ExecutorClass(SPIN), ExecutorClass(LLM)
    # Unlisted classes get the absolute ceiling: the miner's fault, reported with both counts.
    capped = cap_manifest({ao: BILLION}, {})
    assert capped.counts == {ao: MAX_EXECUTORS_PER_CLASS}
    assert capped.excess == {ao: (BILLION, MAX_EXECUTORS_PER_CLASS)}
    # A dynamic cap is policy, not a fault; the per-miner ceiling holds over every class, in the
    # fixed class order whatever the manifest's order.
    capped = cap_manifest({llm: BILLION, ao: BILLION, spin: BILLION}, {LLM: 5})
    assert capped.counts == {spin: 128, ao: 128}
    assert sum(capped.counts.values()) == MAX_EXECUTORS_PER_MINER
    assert capped.excess == {spin: (BILLION, 128), ao: (BILLION, 128), llm: (BILLION, 0)}
    # Honest manifests are untouched and nothing is reported.
    assert cap_manifest({ao: 8, spin: 3, llm: 7}, {LLM: 5}).counts == {ao: 8, spin: 3, llm: 5}
    assert cap_manifest({ao: 8, spin: 3, llm: 7}, {LLM: 5}).excess == {}
    # A dynamic cap above the class ceiling is the operator's choice; the miner total still holds.
    assert cap_manifest({ao: 300}, {AO: 1000}).counts == {ao: MAX_EXECUTORS_PER_MINER}


# ------------------------------------------------------------------------------ a billion executors


async def test_a_billion_executors_are_capped_before_generation(db_url: str, store: BatchStore) -> None:
    """10^9 `always_on.gpu-24gb` executors, unlisted in the dynamic caps, through the real pool:
    128 jobs, a capped manifest row, the excess a MANIFEST_ERROR of the miner, within deadlines,
    a small process tree, and no process left once the validator exits."""
    hotkey = keys.miner_keypair(600).ss58_address
    batch_id, _ = await store.create_batch()
    async with hostile_miner(manifest_frame([{"executor_class": AO, "count": BILLION}])) as miner:
        child = await run_validator_process(db_url, batch_id, miner, hotkey, FAST, warm=True)
    print(f"10^9 executors: shard {child['elapsed']:.2f} s, tree peak {child['peak'] / 2**20:.0f} MB")
    assert child["persisted"] and child["jobs"] == MAX_EXECUTORS_PER_CLASS
    # Normal deadlines: manifest, spin-up, close and persist; far from the 60 s generation bound.
    assert child["elapsed"] < FAST["manifest"] + 10.0
    assert child["peak"] < TREE_RSS_LIMIT, f"process tree peaked at {child['peak'] / 2**20:.0f} MB"
    assert child["descendants"] and await wait_gone(child["descendants"], 10.0) == []

    manifests = await rows(store, MinerManifest, batch_id)
    assert [(m.miner_hotkey, m.executor_class, m.executor_count) for m in manifests] == [
        (hotkey, AO, MAX_EXECUTORS_PER_CLASS)
    ]
    jobs = await rows(store, SyntheticJob, batch_id)
    assert len(jobs) == MAX_EXECUTORS_PER_CLASS and {j.executor_class for j in jobs} == {AO}
    # The miner never accepted: its jobs fail, on the miner.
    assert {j.status for j in jobs} == {"FAILED"} and not any(j.excluded_from_scoring for j in jobs)

    evs = await events(store, batch_id)
    assert not [e for e in evs if e.type == "VALIDATOR_FAILURE"]
    assert all(e.data.get("miner_hotkey") == hotkey for e in evs)
    (error,) = [e for e in evs if e.subtype == "MANIFEST_ERROR"]
    assert error.type == "MINER_SYNTHETIC_JOB_FAILURE"
    assert error.data["claimed"] == {AO: BILLION}
    assert error.data["capped"] == {AO: MAX_EXECUTORS_PER_CLASS}


async def test_every_class_at_a_billion_is_held_to_the_miner_ceiling(store: BatchStore) -> None:
    hotkey = keys.miner_keypair(601).ss58_address
    frame = manifest_frame(
        [
            {"executor_class": LLM, "count": BILLION},
            {"executor_class": AO, "count": BILLION},
            {"executor_class": 0, "count": BILLION},  # the default (spin-up) class
        ]
    )
    batch_id, _ = await store.create_batch()
    async with hostile_miner(frame) as miner:
        endpoint = MinerEndpoint(hotkey=hotkey, uid=0, address="127.0.0.1", port=miner.port)
        result = await run_shard(
            ShardRequest(batch_id=batch_id, miners=[endpoint], weights_version=4),
            BatchDeps(
                keypair=keys.validator_keypair(0),
                store=store,
                dynamic=DynamicValues(),
                difficulty="localnet",
                timeouts=BatchTimeouts(**FAST),
                job_factory=InlineJobFactory(),
            ),
        )
    assert result.persisted
    manifests = {m.executor_class: m.executor_count for m in await rows(store, MinerManifest, batch_id)}
    assert manifests == {SPIN: 128, AO: 128}
    assert len(await rows(store, SyntheticJob, batch_id)) == MAX_EXECUTORS_PER_MINER
    (error,) = [e for e in await events(store, batch_id) if e.subtype == "MANIFEST_ERROR"]
    assert error.data["claimed"] == {SPIN: BILLION, AO: BILLION, LLM: BILLION}
    assert error.data["capped"] == {SPIN: 128, AO: 128, LLM: 0}


# --------------------------------------------------------------------------- 100,000 class entries


async def test_a_manifest_of_100000_entries_is_refused_cheaply(db_url: str, store: BatchStore) -> None:
    """~5 MB of manifest: refused when parsed (too large for a manifest), no jobs, no rows, the
    miner blamed at once (MANIFEST_ERROR, well before the manifest deadline), and under 50 MB of
    extra memory."""
    hotkey = keys.miner_keypair(602).ss58_address
    frame = manifest_frame([{"executor_class": AO, "count": 1}] * 100_000)
    assert len(frame) > 4_000_000
    timeouts = {**FAST, "manifest": 30.0}
    batch_id, _ = await store.create_batch()
    async with hostile_miner(frame) as miner:
        child = await run_validator_process(db_url, batch_id, miner, hotkey, timeouts, warm=False)
        replies = [json.loads(f) for f in miner.received[1:]]
    extra = child["peak"] - child["baseline"]
    print(
        f"100,000 entries: shard {child['elapsed']:.2f} s, tree peak {child['peak'] / 2**20:.0f} MB, +{extra / 2**20:.0f} MB"
    )
    assert child["persisted"] and child["jobs"] == 0
    assert child["elapsed"] < timeouts["manifest"] / 2, "settled on the refused frame, not the deadline"
    assert child["peak"] < TREE_RSS_LIMIT
    assert extra < EXTRA_MEMORY_LIMIT, f"+{extra / 2**20:.0f} MB"
    # The miner was told why, in a GenericError that does not echo its frame.
    assert [r["message_type"] for r in replies] == ["GenericError"]
    assert "too large for V0ExecutorManifestRequest" in replies[0]["details"]
    assert len(replies[0]["details"]) < 1000

    assert await rows(store, SyntheticJob, batch_id) == []
    assert await rows(store, MinerManifest, batch_id) == []
    evs = await events(store, batch_id)
    assert [(e.type, e.subtype, e.data.get("miner_hotkey")) for e in evs] == [
        ("MINER_SYNTHETIC_JOB_FAILURE", "MANIFEST_ERROR", hotkey)
    ]
    assert "manifest rejected: frame of length" in evs[0].long_description
