"""`horde weights` and `horde debug set-scores` run as operators run them (a subprocess) against real
Postgres and, for set-scores, the localnet chain simulator over a real socket; `bench/weights.py
--quick` runs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.chain import LocalChainClient
from horde_common.db.models import Cycle, SyntheticJob, SyntheticJobBatch, SystemEvent, Weights
from horde_common.db.models import Neuron as NeuronRow
from horde_localnet import keys
from horde_localnet.chain import RunningChain, running_chain
from horde_localnet.chain_spec import LocalnetSpec, load_spec
from horde_localnet.config import DEFAULT_METAGRAPH_PATH
from testing.fixtures_db import truncate

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NETUID = 12
SPIN = "spin_up-4min.gpu-24gb"
REPO = Path(__file__).resolve().parents[3]
TABLES = "synthetic_jobs, synthetic_job_batches, cycles, neurons, weights, system_events, dynamic_config"


def horde(*args: str, database_url: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", *args],
        env={**os.environ, "COLUMNS": "200", "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
async def sessions(sessions: Sessions) -> AsyncIterator[Sessions]:
    """The module's database (`db_url`, testing/fixtures_db.py), emptied before each test."""
    await truncate(sessions, f"{TABLES} CASCADE")
    yield sessions


# --- horde weights ---------------------------------------------------------------------------------


async def _seed_weights(sessions: Sessions) -> list[int]:
    """A direct set, a pending set, then commits: committed, revealed, reveal failed, commit failed."""
    rows = [
        ("set", "set", T0, T0 + timedelta(seconds=12), None),
        ("set", "pending", T0, None, None),
        ("commit", "committed", T0, T0 + timedelta(seconds=5), None),
        ("commit", "revealed", T0, T0 + timedelta(seconds=5), T0 + timedelta(minutes=72)),
        ("commit", "failed", T0, T0 + timedelta(seconds=5), None),
        ("commit", "failed", T0, None, None),
    ]
    ids = []
    async with sessions.begin() as s:
        for k, (mode, status, created, set_at, revealed) in enumerate(rows):
            row = Weights(
                batch_id=None,
                block=1000 + k,
                mode=mode,
                status=status,
                uids=[0, 1, 2],
                weights=[1, 2, 3],
                version_key=2,
                created_at=created,
                set_at=set_at,
                revealed_at=revealed,
            )
            s.add(row)
            await s.flush()
            ids.append(row.id)
    return ids


async def test_weights_list(sessions: Sessions, db_url: str) -> None:
    empty = horde("weights", database_url=db_url)
    assert empty.returncode == 0, empty.stderr
    assert "no weights written yet" in empty.stdout

    ids = await _seed_weights(sessions)
    out = horde("weights", "--json", database_url=db_url)
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    assert [e["id"] for e in entries] == ids[::-1]
    by_block = {e["block"]: e for e in entries}
    assert [by_block[1000 + k]["reveal"] for k in range(6)] == [
        None,
        None,
        "committed",
        "revealed",
        "failed",
        "not committed",
    ]
    assert by_block[1003]["updated_at"] == (T0 + timedelta(minutes=72)).isoformat()
    assert by_block[1001]["updated_at"] == T0.isoformat()
    assert by_block[1000]["uids"] == 3 and by_block[1000]["status"] == "set"

    limited = json.loads(horde("weights", "--json", "--limit", "2", database_url=db_url).stdout)
    assert [e["id"] for e in limited] == ids[:-3:-1]

    table = horde("weights", database_url=db_url)
    assert table.returncode == 0, table.stderr
    for word in ("pending", "committed", "revealed", "not committed", "12-01 12:00:12", "12-01 13:12:00"):
        assert word in table.stdout, (word, table.stdout)


def _dead_database_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/horde"


@pytest.mark.parametrize("argv", [["weights"], ["debug", "set-scores", "--dry-run"]])
def test_unreachable_database_is_one_line(argv: list[str]) -> None:
    started = time.monotonic()
    out = horde(*argv, database_url=_dead_database_url(), timeout=30)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("database unreachable:"), out.stderr
    assert time.monotonic() - started < 15  # interpreter start plus at most the 5 s connect timeout


# --- horde debug set-scores ------------------------------------------------------------------------


def _chain_spec(**extra: Any) -> LocalnetSpec:
    """The default localnet subnet on fast blocks, no rate limit, commit-reveal off (mode `auto`)."""
    spec = load_spec(DEFAULT_METAGRAPH_PATH)
    chain = {"block_interval": 0.02, "weights_rate_limit": 0, "commit_reveal_enabled": False, **extra}
    return spec.model_copy(update={"chain": spec.chain.model_copy(update=chain)})


async def _prepare(sessions: Sessions, rc: RunningChain) -> int:
    """The chain's metagraph as the newest snapshot and a finished batch of a cycle that has ended:
    miners 0-3 pass both spin-up jobs, 4-5 one of two, 6-7 none."""
    head = rc.sim.current_block()
    async with sessions.begin() as s:
        for n in rc.sim.metagraph(NETUID).neurons:
            s.add(NeuronRow(block=head, uid=n.uid, hotkey=n.hotkey, coldkey=n.coldkey, stake=n.stake))
        cycle = Cycle(start=head - 800, stop=head - 78)
        s.add(cycle)
        await s.flush()
        now = datetime.now(UTC)
        batch = SyntheticJobBatch(
            cycle_id=cycle.id, block=head - 700, started_at=now - timedelta(hours=1), completed_at=now
        )
        s.add(batch)
        await s.flush()
        for i in range(8):
            passed = 2 if i < 4 else 1 if i < 6 else 0
            for k in range(2):
                score = 1.0 if k < passed else 0.0
                s.add(
                    SyntheticJob(
                        job_uuid=uuid.uuid4(),
                        batch_id=batch.id,
                        miner_hotkey=keys.miner_hotkey(i),
                        executor_class=SPIN,
                        status="COMPLETED" if score else "FAILED",
                        score=score,
                    )
                )
        return batch.id


async def _state(sessions: Sessions, batch_id: int) -> tuple[bool, list[Weights], list[str]]:
    async with sessions() as s:
        scored = await s.scalar(select(SyntheticJobBatch.scored).where(SyntheticJobBatch.id == batch_id))
        rows = list((await s.scalars(select(Weights).order_by(Weights.id))).all())
        events = list((await s.scalars(select(SystemEvent.subtype))).all())
    return bool(scored), rows, events


async def test_set_scores_dry_run_then_a_real_run(sessions: Sessions, db_url: str) -> None:
    async with running_chain(_chain_spec()) as rc:
        batch_id = await _prepare(sessions, rc)
        env: dict[str, Any] = {"database_url": db_url, "LOCALNET_CHAIN_URL": rc.url}
        # The chain serves on this event loop: the command runs in a thread meanwhile.
        dry = await asyncio.to_thread(horde, "debug", "set-scores", "--dry-run", "--json", **env)
        assert dry.returncode == 0, dry.stderr
        doc = json.loads(dry.stdout)
        assert (doc["dry_run"], doc["status"], doc["run"]) == (True, "planned", None)
        assert doc["batch_id"] == batch_id
        by_uid = {r["uid"]: r for r in doc["rows"]}
        honest = [by_uid[2 + i] for i in range(4)]  # uids: 2 validators, then the miners
        assert all(r["hotkey"] == keys.miner_hotkey(i) for i, r in enumerate(honest))
        assert {r["value"] for r in honest} == {65535}
        assert min(r["weight"] for r in honest) > by_uid[6]["weight"] > 0
        # MinAllowedWeights 0: only positive weights are kept (miners 6-7 and the validators are not).
        assert set(by_uid) == set(range(2, 8))
        assert 0 < by_uid[6]["score"] < by_uid[2]["score"]
        assert abs(doc["weight_sum"] - 1.0) < 1e-6
        assert doc["value_sum"] == sum(r["value"] for r in doc["rows"])
        assert await _state(sessions, batch_id) == (False, [], [])  # nothing written

        table = await asyncio.to_thread(horde, "debug", "set-scores", "--dry-run", **env)
        assert table.returncode == 0, table.stderr
        for word in (keys.miner_hotkey(0), "65535", "sum", f"batch {batch_id}"):
            assert word in table.stdout, (word, table.stdout)
        assert "dry run: nothing written" in table.stderr

        no_key = await asyncio.to_thread(horde, "debug", "set-scores", **env, HOTKEY_SEED="")
        assert no_key.returncode == 2 and "config error" in no_key.stderr
        real = await asyncio.to_thread(
            horde, "debug", "set-scores", "--json", **env, HOTKEY_SEED=keys.validator_seed(0)
        )
        assert real.returncode == 0, real.stderr
        written = json.loads(real.stdout)
        assert written["run"]["status"] == "written" and written["run"]["batch_id"] == batch_id
        scored, rows, events = await _state(sessions, batch_id)
        assert scored and events == ["SET_WEIGHTS_SUCCESS"]
        assert [(r.id, r.status, r.batch_id) for r in rows] == [
            (written["run"]["weights_id"], "set", batch_id)
        ]
        async with LocalChainClient(rc.url) as chain:
            [record] = (await chain.weights(NETUID, hotkey=keys.validator_hotkey(0))).records
        # What landed is what the dry run showed: the u16 values, zeros dropped (mode `auto`).
        assert dict(zip(record.uids, record.weights, strict=True)) == {
            r["uid"]: r["value"] for r in doc["rows"] if r["value"]
        }
        again = await asyncio.to_thread(
            horde, "debug", "set-scores", **env, HOTKEY_SEED=keys.validator_seed(0)
        )
        assert again.returncode == 3, again.stderr  # nothing left to score
        assert "nothing_to_score" in again.stderr


async def test_set_scores_dry_run_commit_mode_with_the_floor(sessions: Sessions, db_url: str) -> None:
    """MinAllowedWeights above the scored miners: every uid gets the floor (validators unscored);
    mode `commit-reveal-v2` quantises with zeros kept and reports the commit window."""
    async with running_chain(_chain_spec(min_allowed_weights=8)) as rc:
        batch_id = await _prepare(sessions, rc)
        dry = await asyncio.to_thread(
            horde,
            "debug",
            "set-scores",
            "--dry-run",
            "--json",
            database_url=db_url,
            LOCALNET_CHAIN_URL=rc.url,
            WEIGHTS_MODE="commit-reveal-v2",
        )
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert (doc["status"], doc["mode"], doc["batch_id"]) == ("planned", "commit-reveal-v2", batch_id)
    assert isinstance(doc["in_commit_window"], bool)
    assert doc["rules"] == {"min_allowed_weights": 8, "max_weight_limit_u16": 65535}
    by_uid = {r["uid"]: r for r in doc["rows"]}
    assert set(by_uid) == set(range(10))
    assert by_uid[0]["score"] is None and by_uid[1]["score"] is None
    # The floor is a positive weight that rounds to 0; a commit keeps the uid with its 0.
    assert by_uid[0]["weight"] == by_uid[9]["weight"] > 0
    assert by_uid[0]["value"] == by_uid[9]["value"] == 0
    assert max(r["value"] for r in doc["rows"]) == 65535
    assert await _state(sessions, batch_id) == (False, [], [])


def test_the_weights_bench_runs_quick(tmp_path: Path) -> None:
    out = tmp_path / "weights.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "weights.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(out.read_text())["results"]["256"]["stages"]
    assert set(stages) == {"score", "process", "set u16", "commit", "run"}
    assert all(s["median_ms"] > 0 for s in stages.values())
