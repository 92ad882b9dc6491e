"""Acceptance: on `horde localnet up`, the trusted simulated miner fills the LLM prompt pipeline and
the next batch runs LLM jobs on the simulated LLM executors and scores them.

The real command in a subprocess (as `test_localnet_batch.py`), with 100-block cycles (20 s) and a
metagraph where miner 1 uploads wrong LLM answers (docs/crossval.md §8.1). The localnet runs the
prompt loops every 10 s with small DYNAMIC_* values (docs/operations.md §9.1), so the test waits
(bounded polls of the database) for series, workloads and trusted answers, compares them with
`horde crossval status`, then waits for a completed batch with LLM jobs: honest miners pass, miner 1
fails, and every LLM job's sample is marked used.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harness beside this file

from localnet_harness import (
    Localnet,
    horde,
    hotkey_of,
    listening,
    localnets_fixture,  # noqa: F401  (the factory the `localnet` fixture below uses)
    poll,
    sql,
    write_metagraph,
)

from horde_cli.localnet import LOCALNET_DYNAMIC_CONFIG
from horde_localnet import llm
from horde_localnet.config import DEFAULT_TOPOLOGY

# Up (~20 s, counted by the fixture's own bound); then the first prompt generation job runs at once
# on the trusted miner, sampling and answering within two 10 s loop periods: seconds of work, with
# headroom for a shared 2-core machine.
PIPELINE_WITHIN_S = 90.0
# The next batch after the samples are ready: < one 20 s cycle to its slot, 60 s of preparation
# before the initial requests (docs/scheduling.md §8.2), the jobs, the answers downloads, scoring.
LLM_BATCH_WITHIN_S = 150.0
# Samples are linked to their jobs once the shard's rows are stored, around the batch's completion.
USED_WITHIN_S = 30.0
pytestmark = pytest.mark.timeout(330)

LLM_CLASS = "always_on.llm.a6000"
BEHAVIOURS = {1: "wrong_llm_answers"}  # the others are honest
MINERS = 8  # the packaged metagraph's fleet, one LLM executor each
# Listened on by the localnet beyond the harness's ports: the trusted miner and the facilitator sim.
EXTRA_PORTS = [DEFAULT_TOPOLOGY.trusted_miner_port, DEFAULT_TOPOLOGY.facilitator_port]
LOG_TAIL_LINES = 40


@pytest.fixture(name="localnet")
def localnet_fixture(localnets: Callable[[], Localnet]) -> Iterator[Localnet]:
    """One localnet; stopped here (before the harness's own check of its ports) so that the trusted
    miner's and the facilitator's ports can be checked free too, whatever the test did."""
    busy = [p for p in EXTRA_PORTS if listening(p)]
    if busy:
        pytest.fail(f"localnet ports already in use (a localnet running?): {busy}")
    net = localnets()
    yield net
    down = net.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [p for p in EXTRA_PORTS if listening(p)]


def _dynamic(key: str) -> int:
    return int(json.loads(LOCALNET_DYNAMIC_CONFIG.read_text())[key]["items"][-1]["value"])


def _pipeline(db_url: str) -> dict[str, Any] | None:
    """The prompt tables' counts once series, workloads and answered samples all exist."""
    (row,) = sql(
        db_url,
        "SELECT (SELECT count(*) FROM prompt_series) AS series,"
        " (SELECT count(*) FROM solve_workloads) AS workloads,"
        " (SELECT count(*) FROM prompt_samples s JOIN solve_workloads w ON w.id = s.workload_id"
        "  WHERE w.finished_at IS NOT NULL) AS answered_samples",
    )
    return row if row["series"] and row["workloads"] and row["answered_samples"] else None


def _llm_batch(db_url: str) -> int | None:
    rows = sql(
        db_url,
        "SELECT b.id FROM synthetic_job_batches b WHERE b.completed_at IS NOT NULL AND EXISTS"
        " (SELECT 1 FROM synthetic_jobs j WHERE j.batch_id = b.id AND j.executor_class = $1)"
        " ORDER BY b.id LIMIT 1",
        LLM_CLASS,
    )
    return int(rows[0]["id"]) if rows else None


def _status(localnet: Localnet, cwd: Path) -> dict[str, Any]:
    proc = horde(["crossval", "status", "--json"], localnet.env, cwd, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status: dict[str, Any] = json.loads(proc.stdout)
    return status


def _evidence(localnet: Localnet) -> str:
    """What a failure report needs: the pipeline's rows and events, the batches, the logs' tails."""
    db_url = localnet.env["DATABASE_URL"]
    parts: list[str] = []
    queries = {
        "pipeline": "SELECT (SELECT count(*) FROM prompt_series) AS series,"
        " (SELECT count(*) FROM solve_workloads) AS workloads,"
        " (SELECT count(*) FROM solve_workloads WHERE finished_at IS NULL) AS unanswered,"
        " (SELECT count(*) FROM prompt_samples) AS samples,"
        " (SELECT count(*) FROM prompt_samples WHERE synthetic_job_id IS NOT NULL) AS used",
        "events": "SELECT timestamp, type, subtype, left(long_description, 300) AS d, data::text AS data"
        " FROM system_events WHERE type LIKE 'LLM%' OR subtype LIKE '%PROMPT%' OR subtype = 'FAILURE'"
        " ORDER BY id DESC LIMIT 30",
        "dynamic_config": "SELECT key, items::text AS items FROM dynamic_config WHERE key LIKE '%PROMPT%'",
        "batches": "SELECT b.id, b.completed_at, j.executor_class, j.status, count(*) AS n,"
        " min(left(j.comment, 120)) AS comment FROM synthetic_job_batches b"
        " LEFT JOIN synthetic_jobs j ON j.batch_id = b.id"
        " GROUP BY b.id, b.completed_at, j.executor_class, j.status ORDER BY b.id",
    }
    for name, query in queries.items():
        try:
            parts.append(f"--- {name}: {sql(db_url, query)}")
        except Exception as exc:  # evidence only: a broken query must not hide the failure
            parts.append(f"--- {name}: {exc!r}")
    logs = localnet.cwd / ".horde" / "logs"
    for name in ("cross-validator", "job-runner", "scheduler", "miners", "s3"):
        path = logs / f"{name}.log"
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
    return "\n".join(parts)


def test_the_trusted_miner_feeds_llm_jobs_that_are_scored(localnet: Localnet, tmp_path: Path) -> None:
    metagraph = write_metagraph(tmp_path / "metagraph.yaml", BEHAVIOURS)
    localnet.env["SCHEDULER_CYCLE_LENGTH"] = "100"
    localnet.up("--metagraph", str(metagraph))
    try:
        _check(localnet, tmp_path)
    except BaseException:
        print(_evidence(localnet))  # shown by pytest with the failure
        raise


def _check(localnet: Localnet, tmp_path: Path) -> None:
    db_url = localnet.env["DATABASE_URL"]

    # 1. Series, workloads and trusted answers appear.
    counts = poll(lambda: _pipeline(db_url), within=PIPELINE_WITHIN_S, what="series, workloads, answers")
    series = sql(db_url, "SELECT s3_url FROM prompt_series")
    bucket_prefix = f"{DEFAULT_TOPOLOGY.s3_url}/{DEFAULT_TOPOLOGY.s3_bucket_prompts}/"
    assert all(s["s3_url"].startswith(bucket_prefix) for s in series), series[:3]
    lines = httpx.get(series[0]["s3_url"], timeout=10).text.split("\n")  # public, unsigned (§3)
    assert len(lines) == _dynamic("DYNAMIC_NUMBER_OF_PROMPTS_IN_SERIES")
    answered = sql(
        db_url,
        "SELECT w.seed, p.content, p.answer FROM prompts p JOIN prompt_samples s ON s.id = p.sample_id"
        " JOIN solve_workloads w ON w.id = s.workload_id WHERE w.finished_at IS NOT NULL",
    )
    assert answered and all(r["answer"] == llm.answer(int(r["seed"]), r["content"]) for r in answered)

    # 2. `horde crossval status` shows them.
    status = _status(localnet, tmp_path)
    (now,) = sql(db_url, "SELECT count(*) AS series FROM prompt_series")
    assert status["series"] == now["series"] >= counts["series"]
    assert status["workloads"]["total"] >= counts["workloads"]
    samples = status["samples"]
    assert samples["ready"] + samples["used"] + samples["taken"] >= counts["answered_samples"]
    assert status["last_trusted_job"] is not None, status
    table = horde(["crossval", "status"], localnet.env, tmp_path, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "prompt series" in table.stdout and str(status["series"]) in table.stdout, table.stdout

    # 3. A batch runs LLM jobs, one per miner's LLM executor, and scores them.
    batch = poll(
        lambda: _llm_batch(db_url), within=LLM_BATCH_WITHIN_S, what="a completed batch with LLM jobs"
    )
    jobs = sql(
        db_url,
        "SELECT id, miner_hotkey, executor_class, status, score, comment FROM synthetic_jobs"
        " WHERE batch_id = $1",
        batch,
    )
    llm_jobs = [j for j in jobs if j["executor_class"] == LLM_CLASS]
    assert sorted(j["miner_hotkey"] for j in llm_jobs) == sorted(hotkey_of(i) for i in range(MINERS))
    for job in llm_jobs:
        behaviour = next((b for i, b in BEHAVIOURS.items() if hotkey_of(i) == job["miner_hotkey"]), "honest")
        if behaviour == "honest":
            assert (job["status"], job["comment"]) == ("COMPLETED", ""), job
            assert job["score"] > 0, job
        else:
            assert job["status"] == "FAILED" and "does not match" in job["comment"], job
            assert job["score"] == 0, job
    # Wrong LLM answers leave the miner's other jobs alone.
    others = [
        j["status"] for j in jobs if j["executor_class"] != LLM_CLASS and j["miner_hotkey"] == hotkey_of(1)
    ]
    assert others and set(others) == {"COMPLETED"}, others

    # 4. Every LLM job's sample is used (linked to its job), and only LLM jobs have samples.
    ids = [j["id"] for j in llm_jobs]

    def linked() -> int | None:
        rows = sql(db_url, "SELECT count(*) AS n FROM prompt_samples WHERE synthetic_job_id = ANY($1)", ids)
        return rows[0]["n"] if rows[0]["n"] == len(ids) else None

    poll(linked, within=USED_WITHIN_S, what="the LLM jobs' samples marked used")
    (wrong,) = sql(
        db_url,
        "SELECT count(*) AS n FROM prompt_samples s JOIN synthetic_jobs j ON j.id = s.synthetic_job_id"
        " WHERE j.executor_class <> $1",
        LLM_CLASS,
    )
    assert wrong["n"] == 0
    assert _status(localnet, tmp_path)["samples"]["used"] >= len(ids)
