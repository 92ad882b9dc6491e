"""Synthetic batch shards end to end: real sockets against the miner simulator, real Postgres.

The behaviours of docs/synthetic-batch.md and docs/miner-protocol.md §3. Every test uses its own
dev-miner indices, so the "previous batch" of the manifest multiplier (docs/miner-protocol.md §3.3) is
always the test's own. Timeouts are
shrunk through `BatchTimeouts`; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from sqlalchemy import select
from websockets.asyncio.server import ServerConnection, serve

from horde_common.bus.messages import MinerEndpoint
from horde_common.crypto import verify
from horde_common.db import create_engine, session_factory
from horde_common.db.models import (
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    MinerManifest,
    SyntheticJob,
    SystemEvent,
)
from horde_common.protocol.miner import Receipt
from horde_job_runner.synthetic.batch import run_shard
from horde_job_runner.synthetic.generation import InlineJobFactory
from horde_job_runner.synthetic.model import (
    BatchDeps,
    BatchTimeouts,
    DynamicValues,
    ShardRequest,
    ShardResult,
)
from horde_job_runner.synthetic.persistence import BatchStore, ShardRows
from horde_localnet import keys
from horde_localnet.miners import MinerFleet

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
SPIN = "spin_up-4min.gpu-24gb"
LLM = "always_on.llm.a6000"

FAST = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=1.0,
    spin_up={AO: 1.0, SPIN: 1.5, LLM: 1.5},
    job_timeout=2.0,
    persist_backoff=0.01,
)


# ------------------------------------------------------------------------------------------ fixtures


async def no_sleep(delay: float) -> None:
    await asyncio.sleep(0)


def endpoints(fleet: MinerFleet) -> list[MinerEndpoint]:
    return [
        MinerEndpoint(hotkey=m.hotkey, uid=m.index, address="127.0.0.1", port=m.port) for m in fleet.miners
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_batch(
    store: BatchStore,
    miners: list[MinerEndpoint],
    *,
    weights_version: int = 4,
    timeouts: BatchTimeouts = FAST,
    dynamic: DynamicValues | None = None,
    **deps: Any,
) -> tuple[int, ShardResult]:
    batch_id, _ = await store.create_batch()
    result = await run_shard(
        ShardRequest(batch_id=batch_id, miners=miners, weights_version=weights_version),
        BatchDeps(
            keypair=VALIDATOR,
            store=deps.pop("use_store", store),
            dynamic=dynamic or DynamicValues(),
            difficulty="localnet",
            timeouts=timeouts,
            job_factory=InlineJobFactory(),
            sleep=no_sleep,
            **deps,
        ),
    )
    return batch_id, result


async def rows(store: BatchStore, model: Any, batch_id: int) -> list[Any]:
    async with store.sessions() as session:
        return list((await session.scalars(select(model).where(model.batch_id == batch_id))).all())


async def receipts(store: BatchStore, model: Any, job_uuids: Iterable[str]) -> list[Any]:
    wanted = [uuid.UUID(j) for j in job_uuids]
    async with store.sessions() as session:
        return list((await session.scalars(select(model).where(model.job_uuid.in_(wanted)))).all())


async def events(store: BatchStore, batch_id: int) -> list[SystemEvent]:
    async with store.sessions() as session:
        result = await session.scalars(
            select(SystemEvent)
            .where(SystemEvent.data["batch_id"].as_integer() == batch_id)
            .order_by(SystemEvent.id)
        )
        return list(result.all())


def kinds(evs: Iterable[SystemEvent], *, telemetry: bool = False) -> list[tuple[str, str]]:
    return [(e.type, e.subtype) for e in evs if telemetry or e.type != "VALIDATOR_TELEMETRY"]


def by_miner(jobs: Iterable[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for job in jobs:
        out.setdefault(job.miner_hotkey, []).append(job)
    return out


def miner_verifies(receipt: Receipt) -> bool:
    """What a November-2024 miner does: re-parse the JSON it received, re-serialise it with
    `json.dumps(sort_keys=True)` and check the validator's signature; plus our counter-signature."""
    wire = json.loads(receipt.payload.model_dump_json())
    blob = json.dumps(wire, sort_keys=True)
    copy = Receipt.model_validate_json(receipt.model_dump_json())
    return (
        verify(wire["validator_hotkey"], blob, receipt.validator_signature)
        and copy.verify_validator_signature()
        and copy.verify_miner_signature()
    )


# ------------------------------------------------------------------------------------ the happy path


async def test_honest_miners_complete_with_the_multiplier_and_signed_receipts(store: BatchStore) -> None:
    async with MinerFleet(2, executors={AO: 2}, first_index=100) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet))
        assert result.ok and result.persisted

        jobs = await rows(store, SyntheticJob, batch_id)
        assert len(jobs) == 4
        assert len({j.job_uuid for j in jobs}) == 4 and all(j.job_uuid.version == 4 for j in jobs)
        for job in jobs:
            assert (job.status, job.score, job.comment) == ("COMPLETED", pytest.approx(1.3), "")
            assert job.score_manifest_multiplier == pytest.approx(1.3)  # no previous batch row: 1.3
            assert not job.excluded_from_scoring
            assert job.executor_class == AO
            assert (job.miner_address, job.miner_address_ip_version) == ("127.0.0.1", 4)
            assert job.miner_port == fleet.by_hotkey(job.miner_hotkey).port
            assert job.job_description.startswith("Hashcat V2SyntheticJob")
            assert job.time_took_us is not None and job.time_took_us > 0

        manifests = await rows(store, MinerManifest, batch_id)
        assert sorted(
            (m.miner_hotkey, m.executor_class, m.executor_count, m.online_executor_count) for m in manifests
        ) == sorted((hk, AO, 2, 2) for hk in fleet.hotkeys)

        uuids = [str(j.job_uuid) for j in jobs]
        started = await receipts(store, JobStartedReceipt, uuids)
        accepted = await receipts(store, JobAcceptedReceipt, uuids)
        finished = await receipts(store, JobFinishedReceipt, uuids)
        assert len(started) == len(accepted) == len(finished) == 4
        for r in (*started, *accepted, *finished):
            assert r.miner_signature is None and r.validator_hotkey == VALIDATOR.ss58_address
            assert r.validator_signature.startswith("0x")
        assert {(r.max_timeout, r.is_organic, r.ttl, r.executor_class) for r in started} == {
            (53, False, 2, AO)
        }
        assert {r.ttl for r in accepted} == {360}
        took = {j.job_uuid: j.time_took_us for j in jobs}
        for r in finished:
            assert r.score_str == "1.3"
            assert r.time_took_us == took[r.job_uuid]

        for miner in fleet.miners:
            # The simulator verified, counter-signed and kept every receipt; verify them again here.
            assert miner.rejected_receipts == []
            types = sorted(str(r.payload.receipt_type) for r in miner.receipts)
            assert (
                types == ["JobAcceptedReceipt"] * 2 + ["JobFinishedReceipt"] * 2 + ["JobStartedReceipt"] * 2
            )
            assert all(miner_verifies(r) for r in miner.receipts)
            for r in miner.receipts_of_type("JobAcceptedReceipt"):
                assert r.payload.time_accepted <= r.payload.timestamp  # type: ignore[union-attr]
            # The first frame on the connection was the authentication; v4 volume only in the initial request.
            assert miner.received[0] == (VALIDATOR.ss58_address, "V0AuthenticateRequest")
            for job in miner.jobs_of(VALIDATOR.ss58_address):
                assert job.initial.volume is not None
                assert job.job_request is not None and job.job_request.volume is None
                first_password = job.job_request.docker_run_cmd[1]
                assert first_password.startswith(f"{miner.hotkey}-")
                assert first_password not in job.initial.model_dump_json()
                assert job.score_str == "1.3"

        evs = await events(store, batch_id)
        assert kinds(evs) == [("MINER_SYNTHETIC_JOB_SUCCESS", "SUCCESS")] * 4
        stages = [e.data["stage"] for e in evs if e.subtype == "CHECKPOINT" and "stage" in e.data]
        assert stages[0] == "BATCH_BEGIN" and stages[-1] == "BATCH_END"
        assert "_multi_send_job_request" in stages
        telemetry = [e for e in evs if e.subtype in ("SYNTHETIC_BATCH", "SYNTHETIC_JOB")]
        assert sorted(e.subtype for e in telemetry) == ["SYNTHETIC_BATCH"] + ["SYNTHETIC_JOB"] * 4
        assert result.stats["send_skew_s"] < 0.5


async def test_dance_multiplier_follows_the_previous_online_count(store: BatchStore) -> None:
    """§3.15 / §7.11: absent → ×1.3; same count again → no multiplier; ratio ≥ 1.4 → ×1.3."""
    async with MinerFleet(1, executors={AO: 2}, first_index=110) as fleet:
        _, first = await run_batch(store, endpoints(fleet))
        _, second = await run_batch(store, endpoints(fleet))
    assert [j.score for j in first.jobs] == [pytest.approx(1.3)] * 2
    assert [(j.status, j.score) for j in second.jobs] == [("COMPLETED", 1.0)] * 2
    async with MinerFleet(1, executors={AO: 3}, first_index=110) as fleet:
        batch_id, third = await run_batch(store, endpoints(fleet))
    assert [j.score for j in third.jobs] == [pytest.approx(1.3)] * 3  # 3 after 2: ratio 1.5 >= 1.4
    assert [m.online_executor_count for m in await rows(store, MinerManifest, batch_id)] == [3]


async def test_weights_version_1_scores_one_over_time_without_multiplier(store: BatchStore) -> None:
    """v1 jobs: volume in the job request, score 1/time_took, no multiplier (weights version < 2)."""
    async with MinerFleet(1, executors={AO: 1}, first_index=120) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet), weights_version=1)
        (miner_job,) = fleet.miners[0].jobs_of(VALIDATOR.ss58_address)
        assert miner_job.initial.volume is None and miner_job.job_request is not None
        assert miner_job.job_request.volume is not None
        (receipt,) = fleet.miners[0].receipts_of_type("JobFinishedReceipt")
    (job,) = await rows(store, SyntheticJob, batch_id)
    assert job.status == "COMPLETED" and job.score_manifest_multiplier is None
    assert job.score == pytest.approx(1e6 / job.time_took_us, rel=1e-3)
    # §6 #8: score × time_took ≈ 1 when checked against the Finished receipt's time_took_us.
    assert float(receipt.payload.score_str) * receipt.payload.time_took_us / 1e6 == pytest.approx(
        1.0, rel=1e-3
    )  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ mixed outcomes


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


# ---------------------------------------------------------------------------------- edge cases


async def test_reconnect_reauthenticates_and_collects_the_redelivered_result(store: BatchStore) -> None:
    """§6 #17 with quirk B.1 fixed: the miner drops the link on the job request; we reconnect,
    authenticate again, and the miner re-delivers the outcome: the job completes."""
    async with MinerFleet(1, executors={AO: 1}, behaviours={160: "disconnect"}, first_index=160) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        miner = fleet.miners[0]
        assert miner.connection_count >= 2
        auths = [t for v, t in miner.received if t == "V0AuthenticateRequest"]
        assert len(auths) == miner.connection_count
    (job,) = await rows(store, SyntheticJob, batch_id)
    assert (job.status, job.comment) == ("COMPLETED", "")


async def test_garbage_frames_change_nothing_and_get_generic_errors(store: BatchStore) -> None:
    """§6 #13–#15 / §7.13: invalid frames, unknown job ids and duplicates do not change results."""
    async with MinerFleet(1, executors={AO: 2}, behaviours={170: "garbage"}, first_index=170) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        received = [t for _, t in fleet.miners[0].received]
    jobs = await rows(store, SyntheticJob, batch_id)
    assert [(j.status, j.comment) for j in jobs] == [("COMPLETED", "")] * 2
    assert "GenericError" in received  # "Malformed message from miner ..." replies


async def test_late_answers_fail_on_time(store: BatchStore) -> None:
    """§6 #3: an answer after the job timeout is "took too long" (receipt still sent); an answer
    after timeout + extra wait is "timed out" (no receipt)."""
    behaviours = {180: "slow:2.4", 181: "slow:6"}
    async with MinerFleet(2, executors={AO: 1}, behaviours=behaviours, first_index=180) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        slow_receipts = fleet.miner(180).receipts_of_type("JobFinishedReceipt")
        assert fleet.miner(181).receipts_of_type("JobFinishedReceipt") == []
    jobs = {j.miner_hotkey: j for j in await rows(store, SyntheticJob, batch_id)}
    late, lost = jobs[fleet.miner(180).hotkey], jobs[fleet.miner(181).hotkey]
    assert late.status == "FAILED" and late.comment.startswith("took too long: time_took_sec=2.")
    assert lost.status == "FAILED" and lost.comment == "timed out"
    (receipt,) = slow_receipts
    assert receipt.payload.score_str == "0"  # type: ignore[union-attr]
    assert receipt.payload.time_took_us > 2_000_000  # type: ignore[union-attr]
    timeouts = [e for e in await events(store, batch_id) if e.subtype == "JOB_EXECUTION_TIMEOUT"]
    assert len(timeouts) == 2


async def test_executor_failure_and_no_accept_within_the_window(store: BatchStore) -> None:
    """§6 #19 and #5: executor failed → refused, no job request; no accept in time → timed out."""
    busy = [{"executor_class": AO, "count": 2}]  # advertises 2, has 1: the second never gets one
    async with MinerFleet(
        2,
        executors={AO: 1},
        behaviours={190: "executor_fail"},
        raw_manifests={191: busy},
        executor_wait=30,
        first_index=190,
    ) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        assert all(j.job_request is None for j in fleet.miner(190).jobs_of(VALIDATOR.ss58_address))
    jobs = by_miner(await rows(store, SyntheticJob, batch_id))
    assert [(j.status, j.comment) for j in jobs[fleet.miner(190).hotkey]] == [("FAILED", "executor failed")]
    assert sorted((j.status, j.comment) for j in jobs[fleet.miner(191).hotkey]) == [
        ("COMPLETED", ""),
        ("FAILED", "timed out"),
    ]
    evs = await events(store, batch_id)
    timeouts = [e for e in evs if e.subtype == "JOB_EXECUTION_TIMEOUT"]
    assert [e.data["func"] for e in timeouts] == ["_send_initial_job_request"]
    assert [e.long_description for e in evs if e.subtype == "JOB_NOT_STARTED"] == ["refused"]


# ------------------------------------------------------------------------ validator-side failures


async def test_a_validator_bug_is_not_stored_as_miner_failures(store: BatchStore) -> None:
    """An exception of ours mid-batch: VALIDATOR_FAILURE, jobs stored but excluded from scoring."""

    def fault(stage: str) -> None:
        if stage == "_score_jobs":
            raise RuntimeError("injected bug")

    async with MinerFleet(2, executors={AO: 1}, behaviours={201: "wrong_answer"}, first_index=200) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet), fault=fault)
    assert not result.ok and result.persisted and "injected bug" in (result.error or "")
    jobs = await rows(store, SyntheticJob, batch_id)
    assert len(jobs) == 2
    assert all(j.excluded_from_scoring and j.status == "FAILED" and j.score == 0 for j in jobs)
    assert all(
        j.comment.startswith("validator failure: shard failed: RuntimeError: injected bug") for j in jobs
    )
    evs = kinds(await events(store, batch_id))
    assert ("VALIDATOR_FAILURE", "GENERIC_ERROR") in evs
    assert not [k for k in evs if k[0].startswith("MINER_SYNTHETIC_JOB")]
    manifests = await rows(store, MinerManifest, batch_id)
    assert len(manifests) == 2  # the manifests themselves are facts, stored


async def test_our_event_loop_stall_is_excused(store: BatchStore) -> None:
    """docs/performance.md lesson 4: a stall of ours during the answer window must not turn into
    "took too long" / "timed out" for the miner: such jobs are excluded, with VALIDATOR_FAILURE."""

    def stall(stage: str) -> None:
        if stage == "_await_job_responses":
            time.sleep(1.0)  # the validator's loop is blocked: nothing is read meanwhile

    timeouts = BatchTimeouts(**{**FAST.__dict__, "job_timeout": 0.5, "job_wait_extra": 0.5})
    async with MinerFleet(2, executors={AO: 1}, behaviours={211: "timeout"}, first_index=210) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet), timeouts=timeouts, fault=stall)
    jobs = await rows(store, SyntheticJob, batch_id)
    assert len(jobs) == 2
    for job in jobs:
        assert job.excluded_from_scoring, job.comment
        assert "the validator stalled" in job.comment
    evs = kinds(await events(store, batch_id))
    assert evs.count(("VALIDATOR_FAILURE", "GENERIC_ERROR")) == 2
    assert ("MINER_SYNTHETIC_JOB_FAILURE", "JOB_EXECUTION_TIMEOUT") not in evs


class FlakyStore(BatchStore):
    """The database is unreachable for the first `failures` persist attempts."""

    def __init__(self, real: BatchStore, failures: int) -> None:
        super().__init__(real.sessions)
        self.failures = failures
        dead = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere")
        self.dead = BatchStore(session_factory(dead))

    async def persist(self, rows: ShardRows, *, fast: bool = True) -> None:
        if self.failures > 0:
            self.failures -= 1
            await self.dead.persist(rows, fast=fast)  # raises: connection refused
        await super().persist(rows, fast=fast)


async def test_database_outage_at_persist_time_is_a_validator_failure(store: BatchStore) -> None:
    async with MinerFleet(1, executors={AO: 2}, first_index=220) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet), use_store=FlakyStore(store, failures=1))
    assert result.persisted and result.ok
    assert result.stats["persist_failures"] == 1
    jobs = await rows(store, SyntheticJob, batch_id)
    assert [(j.status, j.excluded_from_scoring) for j in jobs] == [("COMPLETED", False)] * 2
    failures = [e for e in await events(store, batch_id) if e.type == "VALIDATOR_FAILURE"]
    assert len(failures) == 1 and failures[0].data["stage"] == "_db_persist"
    assert "attempt 1/3" in failures[0].long_description


async def test_database_gone_for_good_reports_not_persisted(store: BatchStore) -> None:
    async with MinerFleet(1, executors={AO: 1}, first_index=225) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet), use_store=FlakyStore(store, failures=99))
    assert not result.persisted and not result.ok and (result.error or "").startswith("persist:")
    assert await rows(store, SyntheticJob, batch_id) == []
    assert [j.status for j in result.jobs] == ["COMPLETED"]  # the miner did its part; nothing blamed
