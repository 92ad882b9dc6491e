"""Acceptance: on `horde localnet up`, organic jobs go from the facilitator simulator through the
facilitator-gateway and the job-runner to a simulated miner, and their statuses come back.

One localnet for the module. `horde localnet submit-job` (the real command, in a subprocess) for a
V0 job naming dev miner 0 and for a V2 job, once the validator has manifests (one
`horde debug run-synthetic-jobs` against the localnet's miners at localnet difficulty, which stores
them as a shard does): its default `python -c print(1)` job is not run by the simulated miners but
described (docs/organic.md §9), and that description is its stdout. Then the same with jobs the
simulated miners solve for real (a hashcat command over an inline volume, posted to the
simulator's `POST /jobs`), whose answer is checked. The facilitator
simulator's JSON (`GET /jobs`) must show `accepted` then `completed` for the job's uuid, and nothing
else (docs/organic.md, "Running organic jobs: outcomes").
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harnesses beside this file

from localnet_harness import horde, poll, sql
from organic_harness import OrganicNet, hashcat_job, make_organic_net, sim_job, sim_jobs, submit

from horde_localnet.config import DEFAULT_TOPOLOGY
from horde_localnet.keys import miner_hotkey

pytestmark = pytest.mark.timeout(300)

# Bounds a job that goes wrong instead of the default 5 minutes (docs/organic.md §3.8); an honest
# simulated miner answers in milliseconds.
DYNAMIC = {"DYNAMIC_ORGANIC_JOB_TIMEOUT": 20, "DYNAMIC_ORGANIC_JOB_WAIT_TIMEOUT": 20}
# From submission to the final status: a job of milliseconds, its statuses through the outbox, the
# bus and the gateway; seconds on a loaded 2-core machine, far below the job timeout above.
JOB_WITHIN_S = 60.0
# `submit-job --wait`: its own bound, above JOB_WITHIN_S; the subprocess gets a margin on top.
WAIT_S = 60
V2_CLASS = "spin_up-4min.gpu-24gb"  # the class the localnet miners run synthetic jobs of
# What a simulated miner answers for `submit-job`'s default job (the facilitator simulator's default
# image and arguments), which it describes instead of running (docs/organic.md §9).
SUBMIT_JOB_STDOUT = "simulated: python:3.11-slim python -c 'print(1)'\n"
MINERS = DEFAULT_TOPOLOGY.miner_count


@pytest.fixture(scope="module", name="organic")
def organic_fixture(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrganicNet]:
    """One localnet for the module, with short organic timeouts, and its metagraph synced (a V0
    job needs its miner's address from the newest snapshot)."""
    with make_organic_net(make_database, tmp_path_factory.mktemp("organic"), DYNAMIC) as onet:
        onet.net.up()
        poll(
            lambda: sql(onet.db, "SELECT count(*) AS n FROM neurons")[0]["n"] > 0,
            within=60,
            what="a metagraph snapshot",
        )
        yield onet


def submit_job_cli(onet: OrganicNet, *args: str) -> tuple[str, str, int]:
    """`horde localnet submit-job ARGS --wait WAIT_S`: the job uuid it printed, its output, exit code."""
    proc = horde(["localnet", "submit-job", *args, "--wait", str(WAIT_S)], onet.net.env, onet.net.cwd,
                 timeout=WAIT_S + 30)  # fmt: skip
    output = proc.stdout + proc.stderr
    found = re.search(r"job ([0-9a-f-]{36}) submitted", output)
    assert found, output
    return found.group(1), output, proc.returncode


def final_record(job_uuid: str) -> dict[str, Any]:
    """The simulator's record of the job once it holds a final status."""
    poll(
        lambda: any(s in ("completed", "failed", "rejected") for s in sim_jobs()[job_uuid]["statuses"]),
        within=JOB_WITHIN_S,
        what=f"a final status for job {job_uuid}",
    )
    return sim_job(job_uuid)


def row(onet: OrganicNet, job_uuid: str) -> dict[str, Any]:
    (found,) = sql(
        onet.db,
        "SELECT status, miner_hotkey, stdout, comment FROM organic_jobs WHERE job_uuid = $1::uuid",
        job_uuid,
    )
    return found


def assert_completed(record: dict[str, Any], stdout: str | None = None) -> None:
    """`accepted` then `completed`, nothing else; the completed update carries the miner's output."""
    updates = record["status_updates"]
    assert [u["status"] for u in updates] == ["accepted", "completed"], [
        (u["status"], (u["metadata"] or {}).get("comment")) for u in updates
    ]
    response = updates[1]["metadata"]["miner_response"]
    assert response["job_uuid"] == record["uuid"]
    assert response["message_type"] == "V0JobFinishedRequest"
    if stdout is not None:
        assert response["docker_process_stdout"] == stdout


def store_manifests(onet: OrganicNet) -> None:
    """One synthetic batch against the localnet's miners, in-process (`horde debug run-synthetic-jobs`),
    so the validator holds fresh manifests with online executors: the V2 candidates."""
    hotkeys = ",".join(str(miner_hotkey(i)) for i in range(MINERS))
    env = {
        **onet.net.env,
        "DEBUG_MINER_KEY": hotkeys,
        "DEBUG_MINER_PORT": str(DEFAULT_TOPOLOGY.miner_base_port),
        "DEBUG_MINER_COUNT": str(MINERS),
        "HOTKEY_SEED": "//horde-validator-0",  # the localnet validator (horde_localnet.keys)
        "SYNTHETIC_HASHCAT_DIFFICULTY": "localnet",  # as the localnet services: jobs the miners solve
    }
    proc = horde(["debug", "run-synthetic-jobs", "--json"], env, onet.net.cwd, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    online = sql(
        onet.db,
        "SELECT count(DISTINCT miner_hotkey) AS n FROM miner_manifests"
        " WHERE executor_class = $1 AND online_executor_count > 0",
        V2_CLASS,
    )[0]["n"]
    assert online == MINERS, f"{online} of {MINERS} miners with online {V2_CLASS} executors"


def test_submit_job_v0_completes_on_a_simulated_miner(organic: OrganicNet) -> None:
    job_uuid, output, code = submit_job_cli(organic, "--version", "V0")
    record = final_record(job_uuid)
    assert_completed(record, stdout=SUBMIT_JOB_STDOUT)
    assert code == 0, output
    assert "completed" in output
    found = row(organic, job_uuid)
    assert found["status"] == "COMPLETED" and found["miner_hotkey"] == str(miner_hotkey(0)), found
    assert found["stdout"] == SUBMIT_JOB_STDOUT


def test_submit_job_v2_completes_on_a_simulated_miner(organic: OrganicNet) -> None:
    store_manifests(organic)
    job_uuid, output, code = submit_job_cli(organic, "--version", "V2", "--executor-class", V2_CLASS)
    record = final_record(job_uuid)
    assert_completed(record, stdout=SUBMIT_JOB_STDOUT)
    assert code == 0, output
    assert "attempt 1  completed" in output
    found = row(organic, job_uuid)
    assert found["status"] == "COMPLETED", found
    assert found["miner_hotkey"] in {str(miner_hotkey(i)) for i in range(MINERS)}


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_a_solvable_job_completes_with_the_miners_answer(organic: OrganicNet, version: str) -> None:
    """A hashcat job over an inline volume: the simulated miner cracks it, and the facilitator hears
    the password as the job's stdout."""
    if version == "V2" and not sql(
        organic.db, "SELECT 1 FROM miner_manifests WHERE online_executor_count > 0 LIMIT 1"
    ):
        store_manifests(organic)
    spec, answer = hashcat_job(3 if version == "V1" else None, version=version)
    job_uuid = submit(spec)
    assert_completed(final_record(job_uuid), stdout=answer)
    found = row(organic, job_uuid)
    assert found["status"] == "COMPLETED" and found["stdout"] == answer, found
    if version == "V1":
        assert found["miner_hotkey"] == str(miner_hotkey(3))
