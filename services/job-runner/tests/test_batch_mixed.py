"""Mixed outcomes: the rows a batch of honest and misbehaving miners stores, manifest counting and
capping, events that must not repeat.

Synthetic batch shards end to end: real sockets against the miner simulator, real Postgres (the
behaviours of docs/synthetic-batch.md and docs/miner-protocol.md §3). Every test uses its own
dev-miner indices, so the "previous batch" of the manifest multiplier (docs/miner-protocol.md §3.3) is
always the test's own. Timeouts are shrunk through `BatchTimeouts`; nothing sleeps to synchronise.
"""

from __future__ import annotations

from functools import partial

import pytest
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection, serve

from horde_common.bus.messages import MinerEndpoint
from horde_common.db.models import (
    JobFinishedReceipt,
    MinerManifest,
    SyntheticJob,
    SystemEvent,
)
from horde_job_runner.synthetic.model import BatchTimeouts, DynamicValues
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.batch_checks import (
    AO,
    FAST,
    LLM,
    SPIN,
    by_miner,
    events,
    free_port,
    kinds,
    miner_verifies,
    receipts,
    rows,
)
from testing.miner_fleet import endpoints, run_shard_over

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
run_batch = partial(run_shard_over, timeouts=FAST)


async def test_mixed_batch_stores_the_right_rows(store: BatchStore) -> None:
    """§6 #7: honest, decline, job failure, timeout, wrong answer and two miners without manifest."""
    behaviours = {
        130: "honest",
        131: "decline",
        132: "job_fail",
        133: "timeout",
        134: "wrong_answer",
        135: "unknown_validator",
    }
    async with MinerFleet(6, executors={AO: 2}, behaviours=behaviours, first_index=130) as fleet:
        unreachable = MinerEndpoint(
            hotkey=keys.miner_keypair(136).ss58_address, uid=136, address="127.0.0.1", port=free_port()
        )
        batch_id, result = await run_batch(store, [*endpoints(fleet), unreachable])
        assert result.ok and result.persisted
        hk = {i: fleet.miner(i).hotkey for i in behaviours}

        jobs = by_miner(await rows(store, SyntheticJob, batch_id))
        assert set(jobs) == {hk[i] for i in (130, 131, 132, 133, 134)}  # none for 135 and 136
        summary = {
            i: sorted((j.status, j.score, j.comment.split(":")[0]) for j in jobs[hk[i]])
            for i in range(130, 135)
        }
        assert summary == {
            130: [("COMPLETED", pytest.approx(1.3), "")] * 2,
            131: [("FAILED", 0.0, "declined")] * 2,
            132: [("FAILED", 0.0, "failed")] * 2,
            133: [("FAILED", 0.0, "timed out")] * 2,
            134: [("FAILED", 0.0, "result does not match expected answer")] * 2,
        }
        assert {j.comment for j in jobs[hk[132]]} == {"failed: returncode=1"}
        assert not any(j.excluded_from_scoring for js in jobs.values() for j in js)

        manifests = await rows(store, MinerManifest, batch_id)
        online = {m.miner_hotkey: (m.executor_count, m.online_executor_count) for m in manifests}
        assert online == {hk[130]: (2, 2), hk[131]: (2, 0), hk[132]: (2, 0), hk[133]: (2, 0), hk[134]: (2, 0)}

        finished = await receipts(
            store, JobFinishedReceipt, [str(j.job_uuid) for js in jobs.values() for j in js]
        )
        assert sorted(r.miner_hotkey for r in finished) == sorted(
            [hk[130]] * 2 + [hk[132]] * 2 + [hk[134]] * 2
        )
        failed_receipts = [r for r in finished if r.miner_hotkey == hk[132]]
        assert {(r.score_str, r.time_took_us) for r in failed_receipts} == {("0", 0)}

        # No job request after a decline; the timeout miner got its request but no Finished receipt.
        sent = {
            i: [j.job_request is not None for j in fleet.miner(i).jobs_of(VALIDATOR.ss58_address)]
            for i in range(130, 135)
        }
        assert sent == {130: [True] * 2, 131: [False] * 2, 132: [True] * 2, 133: [True] * 2, 134: [True] * 2}
        assert fleet.miner(133).receipts_of_type("JobFinishedReceipt") == []
        for i in range(130, 135):
            assert all(miner_verifies(r) for r in fleet.miner(i).receipts)

        evs = await events(store, batch_id)
        per_miner: dict[str, list[tuple[str, str]]] = {}
        for e in evs:
            if e.type != "VALIDATOR_TELEMETRY":
                per_miner.setdefault(e.data.get("miner_hotkey", "-"), []).append((e.type, e.subtype))
        F = "MINER_SYNTHETIC_JOB_FAILURE"
        assert per_miner[hk[130]] == [("MINER_SYNTHETIC_JOB_SUCCESS", "SUCCESS")] * 2
        assert per_miner[hk[131]] == [(F, "JOB_NOT_STARTED")] * 2
        assert per_miner[hk[132]] == [(F, "FAILURE")] * 2
        assert per_miner[hk[133]] == [(F, "JOB_EXECUTION_TIMEOUT")] * 2
        assert per_miner[hk[134]] == [(F, "FAILURE")] * 2
        assert per_miner[hk[135]] == [(F, "UNAUTHORIZED"), (F, "MANIFEST_ERROR")]
        assert per_miner[unreachable.hotkey] == [(F, "MINER_CONNECTION_ERROR")]
        assert "-" not in per_miner  # nothing unattributed, in particular no VALIDATOR_FAILURE
        refused = [e for e in evs if e.subtype == "JOB_NOT_STARTED"]
        assert {e.long_description for e in refused} == {"refused"}
        wrong = [e for e in evs if e.data.get("miner_hotkey") == hk[134]]
        assert {e.data["executor_class"] for e in wrong} == {AO}


async def test_manifest_counting_capping_and_stagger(store: BatchStore) -> None:
    """§3.4–§3.7 / §7.4–§7.6: count ≤ 0 ignored, integer 0 = default class, repeats summed, unknown
    integer classes reported, caps applied, LLM executors get no jobs, initial requests staggered."""
    raw = [
        {"executor_class": 0, "count": 1},
        {"executor_class": AO, "count": 2},
        {"executor_class": AO, "count": 1},
        {"executor_class": SPIN, "count": -3},
        {"executor_class": 7, "count": 5},
        {"executor_class": LLM, "count": 4},
    ]
    caps = DynamicValues(miner_max_executors_per_class={AO: 2, LLM: 3})
    async with MinerFleet(
        1, executors={AO: 3, SPIN: 1, LLM: 4}, raw_manifests={140: raw}, first_index=140
    ) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet), dynamic=caps)
        miner = fleet.miners[0]
        started = {
            str(r.payload.executor_class): r.payload.ttl for r in miner.receipts_of_type("JobStartedReceipt")
        }  # type: ignore[union-attr]
    assert started == {SPIN: 240, AO: 2}  # ttl = max(spin-up, 2) of the class, whatever our test windows
    jobs = await rows(store, SyntheticJob, batch_id)
    assert sorted(j.executor_class for j in jobs) == [AO, AO, SPIN]
    assert all(j.status == "COMPLETED" for j in jobs)
    manifests = {
        m.executor_class: (m.executor_count, m.online_executor_count)
        for m in await rows(store, MinerManifest, batch_id)
    }
    assert manifests == {SPIN: (1, 1), AO: (2, 2), LLM: (3, 0)}

    evs = await events(store, batch_id)
    assert ("MINER_SYNTHETIC_JOB_FAILURE", "MANIFEST_ERROR") in kinds(evs)
    assert [e.data["llm_executor_count"] for e in evs if e.subtype == "INSUFFICIENT_PROMPTS"] in ([3], [])
    # Stagger: the always-on jobs (1.0 s window here) go out ~0.5 s after the spin-up one (1.5 s).
    sent = {
        e.data["job_uuid"]: (e.data["executor_class"], e.data["times"]["initial_sent"])
        for e in evs
        if e.subtype == "SYNTHETIC_JOB"
    }
    spin_at = [t for c, t in sent.values() if c == SPIN]
    ao_at = [t for c, t in sent.values() if c == AO]
    assert min(ao_at) - max(spin_at) == pytest.approx(0.5, abs=0.2)


async def test_insufficient_prompts_event_is_not_repeated(store: BatchStore) -> None:
    """§6 #9: no LLM jobs without prompt samples; the INSUFFICIENT_PROMPTS event at most once a day."""
    async with MinerFleet(1, executors={LLM: 1, AO: 1}, first_index=145) as fleet:
        first_id, first = await run_batch(store, endpoints(fleet))
        second_id, _ = await run_batch(store, endpoints(fleet))
    assert [j.executor_class for j in first.jobs] == [AO]
    counts = [
        sum(1 for e in await events(store, b) if e.subtype == "INSUFFICIENT_PROMPTS")
        for b in (first_id, second_id)
    ]
    assert sum(counts) <= 1  # an earlier test of this module may already have recorded today's
    async with store.sessions() as session:
        total = (
            await session.scalars(select(SystemEvent).where(SystemEvent.subtype == "INSUFFICIENT_PROMPTS"))
        ).all()
    assert len(total) == 1


async def test_no_manifest_from_a_silent_miner_is_a_manifest_timeout(store: BatchStore) -> None:
    """§6 #2 / §7.3: connected, authenticated, but no manifest within the window → no rows."""

    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    server = await serve(silent, "127.0.0.1", 0)
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        hotkey = keys.miner_keypair(150).ss58_address
        timeouts = BatchTimeouts(**{**FAST.__dict__, "manifest": 0.5})
        batch_id, result = await run_batch(
            store, [MinerEndpoint(hotkey=hotkey, uid=0, address="127.0.0.1", port=port)], timeouts=timeouts
        )
    finally:
        server.close(close_connections=True)
        await server.wait_closed()
    assert result.persisted and result.jobs == []
    assert await rows(store, SyntheticJob, batch_id) == []
    assert await rows(store, MinerManifest, batch_id) == []
    assert kinds(await events(store, batch_id)) == [("MINER_SYNTHETIC_JOB_FAILURE", "MANIFEST_TIMEOUT")]
