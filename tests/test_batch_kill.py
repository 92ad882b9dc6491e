"""Acceptance: a job-runner SIGKILLed mid-shard costs its shard, not the batch, and nothing is re-sent.

A localnet with two job-runner replicas (short shard lease TTL: `--lease-ttl`, a constructor argument
of the job-runner runtime), `SHARD_SIZE=4` (two shards) and one batch at a time
(`DEBUG_DONT_STAGGER_VALIDATORS`). Every miner answers 15 s late (`slow:15`, inside the job timeout),
so a shard is mid-run for seconds after its miners got their initial requests. Once they all have
(their JobStarted receipts), the runner holding shard 1 is killed. RabbitMQ redelivers its request to
the other replica at once; that delivery waits for the dead lease to lapse and fails the shard
(docs/scheduling.md §8; `horde_job_runner/synthetic/shard_lease.py`), instead of the scheduler's
shard deadline minutes later.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harness beside this file

from localnet_harness import (
    Localnet,
    hotkey_of,
    job_statuses,
    localnet_fixture,  # noqa: F401  (the `localnet` fixture)
    localnets_fixture,  # noqa: F401  (the factory it uses)
    poll,
    sql,
    started_receipts,
    write_metagraph,
)

pytestmark = pytest.mark.timeout(600)
MINERS = 8
EXECUTORS_TESTED = 2  # per miner: its two `spin_up-4min.gpu-24gb` executors (the metagraph's)
LEASE_TTL_S = 5.0  # the replicas' lease: a heartbeat every 1.7 s, a dead lease lapses within 5 s
SLOW_S = 15  # each answer held back this long: the window in which the runner is killed
# Up (~20 s), the batch at once, 60 s of preparation (docs/scheduling.md §8.2) before the initial
# requests, on a shared 2-core machine.
CONTACTED_WITHIN_S = 240.0
# From the kill to the batch's completion: the dead lease lapses (one TTL), the redelivery sees it
# (a re-read every TTL/3, `lease_wait_bound`), the shard fails; meanwhile the other shard gets its
# slow answers (15 s) and stores them. Far below the 13 minutes of the scheduler's shard deadline.
COMPLETED_AFTER_KILL_S = 90.0


def first_batch_shards(db_url: str) -> list[dict[str, object]] | None:
    """Both shards of the first batch with shards, once both are claimed."""
    rows = sql(
        db_url,
        "SELECT batch_id, shard_index, state, lease_owner, initial_sent_at, miner_hotkeys FROM batch_shards"
        " WHERE batch_id = (SELECT min(batch_id) FROM batch_shards) ORDER BY shard_index",
    )
    if len(rows) == 2 and all(r["lease_owner"] and r["initial_sent_at"] for r in rows):
        return rows
    return None


def all_contacted() -> bool:
    return all(len(started_receipts(i)) >= EXECUTORS_TESTED for i in range(MINERS))


def test_a_killed_runner_fails_its_shard_and_the_batch_completes(localnet: Localnet, tmp_path: Path) -> None:
    metagraph = write_metagraph(tmp_path / "metagraph.yaml", dict.fromkeys(range(MINERS), f"slow:{SLOW_S}"))
    localnet.env.update({"DEBUG_DONT_STAGGER_VALIDATORS": "true", "SHARD_SIZE": "4"})
    localnet.up("--metagraph", str(metagraph), "--job-runners", "2", "--lease-ttl", str(LEASE_TTL_S))
    db = localnet.env["DATABASE_URL"]

    shards = poll(lambda: first_batch_shards(db), within=CONTACTED_WITHIN_S, what="both shards claimed")
    batch_id = int(shards[0]["batch_id"])  # type: ignore[call-overload]
    poll(all_contacted, within=CONTACTED_WITHIN_S, what="every miner's initial requests")

    lost = sql(
        db,
        "SELECT lease_owner, miner_hotkeys FROM batch_shards WHERE batch_id = $1 AND shard_index = 1",
        batch_id,
    )[0]
    victim = int(lost["lease_owner"].split(":")[1])  # host:pid:uuid
    children = json.loads((localnet.cwd / ".horde" / "localnet.json").read_text())
    assert victim in {pid for name, pid in children.items() if name.startswith("job-runner")}, children
    other = set(json.loads(shards[0]["miner_hotkeys"]))  # type: ignore[arg-type]
    lost_miners = set(json.loads(lost["miner_hotkeys"]))
    batch = sql(db, "SELECT completed_at FROM synthetic_job_batches WHERE id = $1", batch_id)[0]
    assert batch["completed_at"] is None, "killed too late: the batch was already over"
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)  # one of this localnet's job-runners (checked above)

    completed = poll(
        lambda: sql(db, "SELECT completed_at FROM synthetic_job_batches WHERE id = $1", batch_id)[0][
            "completed_at"
        ],
        within=COMPLETED_AFTER_KILL_S,
        what="the batch completed after the kill",
    )
    assert time.monotonic() - killed_at < COMPLETED_AFTER_KILL_S
    states = sql(
        db, "SELECT shard_index, state FROM batch_shards WHERE batch_id = $1 ORDER BY shard_index", batch_id
    )
    assert [(r["shard_index"], r["state"]) for r in states] == [(0, "completed"), (1, "failed")]

    # The lost shard's miners carry the validator's failure, and no job row blames them.
    failures = sql(
        db,
        "SELECT data FROM system_events WHERE type = 'VALIDATOR_FAILURE' AND (data->>'batch_id')::int = $1",
        batch_id,
    )
    named = [json.loads(f["data"]) for f in failures]
    assert any(
        set(d.get("miner_hotkeys") or []) == lost_miners and d.get("shard_index") == 1 for d in named
    ), named
    statuses = job_statuses(db, batch_id)
    assert set(statuses) == other
    assert all(set(s) == {"COMPLETED"} for classes in statuses.values() for s in classes.values())

    # No miner got two initial requests for one executor: one JobStarted receipt per executor tested.
    assert {hotkey_of(i) for i in range(MINERS)} == other | lost_miners
    for i in range(MINERS):
        receipts = [r for r in started_receipts(i) if datetime.fromisoformat(r["timestamp"]) <= completed]
        uuids = [r["job_uuid"] for r in receipts]
        assert len(uuids) == len(set(uuids)) == EXECUTORS_TESTED, (i, receipts)
