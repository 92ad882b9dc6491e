"""Honest miners: the manifest multiplier, signed receipts, weights versions.

Synthetic batch shards end to end: real sockets against the miner simulator, real Postgres (the
behaviours of docs/synthetic-batch.md and docs/miner-protocol.md §3). Every test uses its own
dev-miner indices, so the "previous batch" of the manifest multiplier (docs/miner-protocol.md §3.3) is
always the test's own. Timeouts are shrunk through `BatchTimeouts`; nothing sleeps to synchronise.
"""

from __future__ import annotations

from functools import partial

import pytest

from horde_common.db.models import (
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    MinerManifest,
    SyntheticJob,
)
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.batch_checks import AO, FAST, events, kinds, miner_verifies, receipts, rows
from testing.miner_fleet import endpoints, run_shard_over

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
run_batch = partial(run_shard_over, timeouts=FAST)


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
