"""Acceptance: a stream of organic jobs survives a crash of either organic service, or a RabbitMQ
restart, with every job ending in exactly one final status at the facilitator.

One localnet for the module (`horde localnet up`; the facilitator simulator, the gateway and the
job-runner are its child processes). Each test posts a stream of `STREAM` jobs to the facilitator
simulator at `RATE` a second (V1 hashcat jobs over an inline volume, spread over the eight simulated
miners, each of which holds its answer back `SLOW_S`, so several jobs are in flight at any time).
Once `DISRUPT_AFTER` of them have a final status at the simulator (and the stream is still going),
the test disrupts the stream:

a. SIGKILL the facilitator-gateway, then start it again;
b. SIGKILL the job-runner, then start it again;
c. `rabbitmqctl stop_app` / `start_app`: the services must reconnect on their own.

Then it waits until all jobs have a final status and nothing is left to happen to them (no row
`PENDING`, the outbox drained, the organic queues empty), and checks the simulator's record of
each job (`GET /jobs`): exactly one final status (`completed`, `failed` or `rejected`), and it is the
last status heard; none lost, none duplicated (docs/organic.md, "Facilitator gateway" and "Running
organic jobs: the job"). The organic job timeout is short (dynamic config), so a job that cannot be
resumed fails in bounded time instead of five minutes.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared harnesses beside this file

from localnet_harness import POLL_S, poll, sql, write_metagraph
from organic_harness import (
    FACILITATOR_HTTP,
    OrganicNet,
    finals,
    hashcat_job,
    make_organic_net,
    rabbitmqctl,
    sim_jobs,
    submit,
)

from horde_common.service_ports import SERVICE_PORTS
from horde_localnet.config import DEFAULT_TOPOLOGY

pytestmark = pytest.mark.timeout(240)

STREAM = 50  # jobs per test
RATE = 10.0  # jobs a second: a 5 s stream, the disruption in its middle (see `Stream`)
DISRUPT_AFTER = 10  # final statuses seen before the disruption: some (of the first half) are over
SLOW_S = 1  # each simulated miner holds its answer back this long: ~10 jobs in flight at 10/s
MINERS = DEFAULT_TOPOLOGY.miner_count  # 2 executors each: 16 at once, above the ~10 in flight
# The organic job timeout and wait (docs/organic.md §3.8: 300 s each by default): well above a job
# (SLOW_S), short enough that a job cut off by the disruption fails within the test's bounds.
JOB_TIMEOUT_S = 10
DYNAMIC = {"DYNAMIC_ORGANIC_JOB_TIMEOUT": JOB_TIMEOUT_S, "DYNAMIC_ORGANIC_JOB_WAIT_TIMEOUT": JOB_TIMEOUT_S}
# From the start of the stream to DISRUPT_AFTER final statuses: ~1 s of stream plus SLOW_S.
FIRST_FINALS_WITHIN_S = 30.0
# From the end of the disruption to the last final status: the rest of the stream, a redelivered
# job's timeout (JOB_TIMEOUT_S) and the gateway's retries of a status (a minute at most while the
# link is down, docs/organic.md "Facilitator gateway"), on a loaded 2-core machine.
ALL_FINAL_WITHIN_S = 90.0
# From the last final status until the rows, the outbox and the queues are quiet.
SETTLED_WITHIN_S = 30.0
AMQP_PORT = 5672
# Job requests the facilitator may have written to the gateway's socket in the few milliseconds
# between reading and storing one, at 10 jobs/s: one, two at the very most.
IN_FLIGHT_AT_KILL = 2
# `rabbitmqctl start_app` returns once the app runs; the listener follows within seconds.
AMQP_BACK_WITHIN_S = 30.0


@pytest.fixture(scope="module", name="organic")
def organic_fixture(
    make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrganicNet]:
    """One localnet for the three tests, its miners slow by SLOW_S, the metagraph synced."""
    cwd = tmp_path_factory.mktemp("organic-kill")
    metagraph = write_metagraph(cwd / "metagraph.yaml", dict.fromkeys(range(MINERS), f"slow:{SLOW_S}"))
    with make_organic_net(make_database, cwd, DYNAMIC) as onet:
        onet.net.up("--metagraph", str(metagraph))
        poll(
            lambda: sql(onet.db, "SELECT count(*) AS n FROM neurons")[0]["n"] > 0,
            within=60,
            what="a metagraph snapshot",
        )
        yield onet


class Stream:
    """`STREAM` jobs posted at `RATE` a second from a thread; `uuids` grows as they are accepted.

    The second half waits for `disrupting` (set just before the disruption), so on a slow machine
    the disruption still lands mid-stream, with jobs posted while it goes on."""

    def __init__(self) -> None:
        self.uuids: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.disrupting = threading.Event()
        self._thread = threading.Thread(target=self._run, name="organic-stream", daemon=True)

    def _run(self) -> None:
        try:
            start = time.monotonic()
            for i in range(STREAM):
                if i == STREAM // 2:
                    self.disrupting.wait(FIRST_FINALS_WITHIN_S + 10)  # the test disrupts first
                    start = time.monotonic() - i / RATE
                if self._stop.is_set():
                    return
                spec, _ = hashcat_job(i % MINERS)
                self.uuids.append(submit(spec))
                # Pacing the traffic (not synchronisation): the next job is due at start + (i+1)/RATE.
                self._stop.wait(max(0.0, start + (i + 1) / RATE - time.monotonic()))
        except BaseException as exc:  # re-raised in the test by `join`
            self.error = exc

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.disrupting.set()
        self._thread.join(timeout=30)

    def join(self) -> list[str]:
        self._thread.join(timeout=STREAM / RATE + 60)
        assert not self._thread.is_alive(), "the stream did not finish posting"
        if self.error is not None:
            raise self.error
        assert len(self.uuids) == STREAM
        return list(self.uuids)

    def snapshot(self) -> dict[str, int]:
        """Jobs posted so far, with a final status, and accepted but not over (in flight)."""
        jobs, uuids = sim_jobs(), list(self.uuids)
        heard = [jobs[u]["statuses"] for u in uuids if u in jobs]
        return {
            "posted": len(uuids),
            "final": sum(1 for s in heard if finals(s)),
            "accepted_not_final": sum(1 for s in heard if s and not finals(s)),
        }


def describe(onet: OrganicNet, uuids: list[str], jobs: dict[str, dict[str, Any]]) -> str:
    """Per job not yet over: what the simulator and the database know of it."""
    rows = {
        str(r["job_uuid"]): r
        for r in sql(
            onet.db,
            "SELECT job_uuid, status, attempt, comment FROM organic_jobs WHERE job_uuid = ANY($1::uuid[])",
            uuids,
        )
    }
    lines = []
    for u in uuids:
        job = jobs.get(u, {})
        if finals(job.get("statuses", [])):
            continue
        r = rows.get(u)
        db = "no row" if r is None else f"row {r['status']} attempt {r['attempt']} {r['comment'][:120]!r}"
        lines.append(f"job {u}: simulator {job.get('state')} {job.get('statuses')}; {db}")
    return "\n".join(lines)


def wait_finals(onet: OrganicNet, uuids: Callable[[], list[str]], at_least: int, within: float) -> None:
    """Until `at_least` of the jobs `uuids()` have a final status at the simulator; on timeout the
    failure names every job not over yet, with what the simulator and the database know of it."""
    deadline = time.monotonic() + within
    while True:
        jobs, posted = sim_jobs(), uuids()
        if sum(1 for u in posted if u in jobs and finals(jobs[u]["statuses"])) >= at_least:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"fewer than {at_least} of {len(posted)} jobs with a final status within {within:.0f} s:\n"
                + describe(onet, posted, jobs)
            )
        time.sleep(POLL_S)  # the pause between two checks of a bounded poll


def assert_one_final_each(uuids: list[str], *, identical_repeats_allowed: int = 0) -> None:
    """Exactly one final status per job, and nothing heard after it.

    `identical_repeats_allowed`: how many jobs may have heard their final status twice, as an exact
    repeat (same status and metadata). Only the gateway test allows one: a gateway killed after a
    frame reached its socket and before it recorded that (the ledger insert right after the write,
    docs/organic.md "Facilitator gateway") sends that frame again after the restart. The facilitator
    wire has no message id to deduplicate on, so this one frame in flight at the kill is at least
    once; it is never a different status, and no job is ever without one.
    """
    jobs = sim_jobs()
    problems = []
    repeated = []
    for u in uuids:
        statuses = jobs[u]["statuses"]
        got = finals(statuses)
        if len(got) != 1:
            same = jobs[u].get("identical_finals")  # the simulator's count of exact repeats
            if len(got) == 2 and same == 1 and statuses[-2:] == got:
                repeated.append(f"job {u} heard its final status twice, identical: {statuses}")
                continue
            problems.append(f"job {u} got {len(got)} final statuses: {statuses} ({same} identical repeats)")
        elif statuses[-1] not in got:
            problems.append(f"job {u} heard a status after its final one: {statuses}")
    if len(repeated) > identical_repeats_allowed:
        problems.extend(repeated)
    outcome = {s: sum(1 for u in uuids if finals(jobs[u]["statuses"])[:1] == [s]) for s in
               ("completed", "failed", "rejected")}  # fmt: skip
    print(f"outcomes {outcome}; identical repeats {repeated}")  # shown with -s or on failure
    assert not problems, f"{len(problems)} of {len(uuids)} jobs ({outcome}):\n" + "\n".join(problems)


def run_stream_with(
    onet: OrganicNet,
    disrupt: Callable[[], None],
    *,
    identical_repeats_allowed: int = 0,
    after_disruption: Callable[[list[str]], None] | None = None,
) -> None:
    """The stream, `disrupt()` in its middle, then the checks of the module docstring."""
    with Stream() as stream:
        wait_finals(onet, lambda: list(stream.uuids), DISRUPT_AFTER, FIRST_FINALS_WITHIN_S)
        assert stream.error is None, stream.error
        at = stream.snapshot()
        assert at["posted"] < STREAM, f"disrupted too late, the stream was already posted: {at}"
        assert at["accepted_not_final"] > 0, f"disrupted with no job in flight: {at}"
        stream.disrupting.set()
        disrupt()
        print(f"disrupted at {at}")  # shown with -s: what the disruption hit
        uuids = stream.join()
    if after_disruption is not None:
        after_disruption(uuids)
    wait_finals(onet, lambda: uuids, STREAM, ALL_FINAL_WITHIN_S)
    poll(lambda: onet.settled(uuids), within=SETTLED_WITHIN_S, what="rows, outbox and queues quiet")
    rows = sql(onet.db, "SELECT count(*) AS n FROM organic_jobs WHERE job_uuid = ANY($1::uuid[])", uuids)
    assert rows[0]["n"] == STREAM
    assert_one_final_each(uuids, identical_repeats_allowed=identical_repeats_allowed)


def sim_connections() -> list[dict[str, Any]]:
    """The simulator's authenticated validator connections (`connection` serial, `connected_at`)."""
    body: dict[str, Any] = httpx.get(f"{FACILITATOR_HTTP}/stats", timeout=10).json()
    return list(body["connected_validators"])


def test_a_killed_gateway_loses_and_duplicates_no_status(organic: OrganicNet) -> None:
    """Besides the statuses: a job request the facilitator wrote to the killed gateway's socket
    that the gateway had not stored yet (it reads, validates and commits in a few milliseconds) is
    gone with that process. The facilitator protocol has no acknowledgement of a job request, so
    only the facilitator can send it again: this test does, as a facilitator that re-sends a job
    that got no status from a connection that died would, and the gateway's uuid check makes any
    re-send safe. At most `IN_FLIGHT_AT_KILL` such requests are allowed, and each must then end
    like the others."""
    new_connection_at: list[float] = []

    def kill_gateway() -> None:
        before = {c["connection"] for c in sim_connections()}
        organic.kill("facilitator-gateway")
        organic.restart("facilitator-gateway")
        new = poll(
            lambda: [c for c in sim_connections() if c["connection"] not in before] or None,
            within=FIRST_FINALS_WITHIN_S,
            what="the restarted gateway's facilitator connection",
        )
        new_connection_at.append(min(c["connected_at"] for c in new))

    def resend_lost_in_flight(uuids: list[str]) -> None:
        stored = {
            str(r["job_uuid"])
            for r in sql(
                organic.db, "SELECT job_uuid FROM organic_jobs WHERE job_uuid = ANY($1::uuid[])", uuids
            )
        }
        jobs = sim_jobs()
        lost = [
            u
            for u in uuids
            if u not in stored
            and jobs[u]["state"] == "sent"
            and not jobs[u]["statuses"]
            and jobs[u]["sent_at"] is not None
            and jobs[u]["sent_at"] < new_connection_at[0]  # sent to the connection that was killed
        ]
        print(f"job requests lost in flight at the kill: {lost}")
        assert len(lost) <= IN_FLIGHT_AT_KILL, lost
        for u in lost:
            answer = httpx.post(f"{FACILITATOR_HTTP}/jobs/{u}/resend", timeout=10)
            assert answer.status_code == 200, answer.text

    # The one frame the gateway may have written just before the kill (see `assert_one_final_each`).
    run_stream_with(
        organic, kill_gateway, identical_repeats_allowed=1, after_disruption=resend_lost_in_flight
    )


def test_a_killed_job_runner_loses_and_duplicates_no_status(organic: OrganicNet) -> None:
    def kill_job_runner() -> None:
        organic.kill("job-runner")
        organic.restart("job-runner")

    run_stream_with(organic, kill_job_runner)


def amqp_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", AMQP_PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.exclusive  # scripts/test runs it alone: other sessions' tests need the broker
def test_a_rabbitmq_restart_loses_and_duplicates_no_status(organic: OrganicNet) -> None:
    def restart_rabbitmq() -> None:
        try:
            stopped = rabbitmqctl("stop_app")
            assert stopped.returncode == 0, stopped.stderr
        finally:
            started = rabbitmqctl("start_app")  # whatever happened: never leave the broker down
        assert started.returncode == 0, started.stderr
        poll(amqp_listening, within=AMQP_BACK_WITHIN_S, what="RabbitMQ listening again")

    run_stream_with(organic, restart_rabbitmq)
    for name in ("facilitator-gateway", "job-runner"):  # reconnected on their own, and say so
        ready = httpx.get(f"http://127.0.0.1:{SERVICE_PORTS[name]}/readyz", timeout=10)
        assert ready.status_code == 200, (name, ready.text)
