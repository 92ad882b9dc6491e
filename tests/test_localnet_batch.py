"""Acceptance: on `horde localnet up`, the scheduler plans and runs a synthetic batch end to end.

The real command in a subprocess (as `test_localnet.py`), with a 100-block cycle (20 s at the
localnet's 0.2 s blocks, so this validator's slot comes within seconds) and a metagraph whose miners
misbehave in known ways; the test waits (bounded polls of the database) for the first batch to
complete, then compares `horde batches --json` and each miner's job statuses with the behaviours.
The localnet cross-validates by default, so a batch may hold LLM jobs once prompt samples are ready:
their verdicts are read from the answers file, not stdout, and each must have its own sample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from horde_common.crossval import ANSWERS_MISSING
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS

sys.path.insert(0, str(Path(__file__).parent))  # the shared harness beside this file

from localnet_harness import (
    Localnet,
    completed_batches,
    horde,
    hotkey_of,
    job_statuses,
    localnet_fixture,  # noqa: F401  (the `localnet` fixture)
    localnets_fixture,  # noqa: F401  (the factory it uses)
    poll,
    sql,
    write_metagraph,
)

# Up (~20 s), the slot (< one 20 s cycle), the batch (60 s of preparation before the first
# initial requests, docs/scheduling.md §8.2, then seconds), on a shared 2-core machine.
BATCH_WITHIN_S = 240.0
pytestmark = pytest.mark.timeout(420)

# Miner index -> behaviour (horde_localnet.miners.behaviours); the others are honest.
BEHAVIOURS = {1: "wrong_answer", 2: "job_fail", 3: "decline"}
# What each behaviour leaves in `synthetic_jobs`, for every executor the validator tests.
EXPECTED_STATUS = {"honest": "COMPLETED", "wrong_answer": "FAILED", "job_fail": "FAILED", "decline": "FAILED"}
# ... and the verdict in each job's comment (empty for a job that passed).
EXPECTED_COMMENT = {
    "honest": "",
    "wrong_answer": "does not match",
    "job_fail": "returncode=1",
    "decline": "declined",
}
# An LLM job is judged by the answers file it uploads: `wrong_answer` prints a random stdout and
# uploads nothing, so its LLM jobs fail for missing answers.
EXPECTED_LLM_COMMENT = {**EXPECTED_COMMENT, "wrong_answer": ANSWERS_MISSING}
MINERS = 8  # the packaged metagraph's fleet
# LLM jobs of a batch with no sample linked, or sharing one (each must consume its own sample).
UNLINKED_LLM_JOBS_SQL = """
SELECT j.job_uuid, count(s.id) AS samples FROM synthetic_jobs AS j
LEFT JOIN prompt_samples AS s ON s.synthetic_job_id = j.id
WHERE j.batch_id = $1 AND j.executor_class = $2
GROUP BY j.job_uuid HAVING count(s.id) <> 1
"""


def test_a_planned_batch_completes_with_the_miners_behaviours(localnet: Localnet, tmp_path: Path) -> None:
    metagraph = write_metagraph(tmp_path / "metagraph.yaml", BEHAVIOURS)
    localnet.env["SCHEDULER_CYCLE_LENGTH"] = "100"
    localnet.up("--metagraph", str(metagraph))
    db_url = localnet.env["DATABASE_URL"]

    first = poll(lambda: completed_batches(db_url), within=BATCH_WITHIN_S, what="a completed batch")[0]["id"]

    listed = horde(["batches", "--json", "--limit", "1000"], localnet.env, tmp_path, timeout=30)
    assert listed.returncode == 0, listed.stderr
    (entry,) = [b for b in json.loads(listed.stdout) if b["id"] == first]
    assert entry["state"] == "completed"
    assert entry["block"] is not None and entry["cycle"] is not None  # planned at a slot, not a debug run
    assert entry["miners"] == MINERS and entry["jobs"]["pending"] == 0

    jobs = sql(
        db_url, "SELECT miner_hotkey, executor_class, comment FROM synthetic_jobs WHERE batch_id = $1", first
    )
    for row in jobs:
        behaviour = next((b for i, b in BEHAVIOURS.items() if hotkey_of(i) == row["miner_hotkey"]), "honest")
        llm_job = row["executor_class"] == str(LLM_EXECUTOR_CLASS)
        expected_comment = (EXPECTED_LLM_COMMENT if llm_job else EXPECTED_COMMENT)[behaviour]
        assert expected_comment in row["comment"], (behaviour, row["executor_class"], row["comment"])
        assert behaviour != "honest" or row["comment"] == ""
    assert sql(db_url, UNLINKED_LLM_JOBS_SQL, first, str(LLM_EXECUTOR_CLASS)) == []
    statuses = job_statuses(db_url, first, with_llm=True)  # this test checks the LLM jobs too
    assert set(statuses) == {hotkey_of(i) for i in range(MINERS)}
    for i in range(MINERS):
        expected = EXPECTED_STATUS[BEHAVIOURS.get(i, "honest")]
        for executor_class, got in statuses[hotkey_of(i)].items():
            assert set(got) == {expected}, (i, BEHAVIOURS.get(i, "honest"), executor_class, got)
    honest = MINERS - len(BEHAVIOURS)
    assert entry["jobs"]["ok"] == sum(len(s) for i in range(MINERS) if i not in BEHAVIOURS
                                      for s in statuses[hotkey_of(i)].values())  # fmt: skip
    assert entry["jobs"]["ok"] >= honest


# The default localnet: the production cycle of 722 blocks at 0.2 s (2.4 min, docs/scheduling.md
# §7.5); this validator's slot in the first cycle comes about 75 s after the chain starts, and the
# batch takes about a minute more.
DEFAULT_BATCH_WITHIN_S = 300.0


def test_the_default_localnet_runs_batches(localnet: Localnet, tmp_path: Path) -> None:
    """No settings: `horde localnet up` alone shows a batch completing, every honest miner passing."""
    localnet.up()
    db_url = localnet.env["DATABASE_URL"]
    first = poll(lambda: completed_batches(db_url), within=DEFAULT_BATCH_WITHIN_S, what="a completed batch")
    listed = horde(["batches", "--json"], localnet.env, tmp_path, timeout=30)
    assert listed.returncode == 0, listed.stderr
    (entry,) = [b for b in json.loads(listed.stdout) if b["id"] == first[0]["id"]]
    assert entry["state"] == "completed" and entry["cycle"] is not None
    assert entry["miners"] == MINERS and entry["jobs"]["failed"] == 0 and entry["jobs"]["ok"] > 0
    assert sql(db_url, UNLINKED_LLM_JOBS_SQL, first[0]["id"], str(LLM_EXECUTOR_CLASS)) == []
