"""The miner simulator over real sockets: honest jobs end to end, worker processes, job request errors, a busy miner, receipts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from horde_common.crypto import verify
from horde_common.protocol.miner import (
    GenericError,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorReadyRequest,
    V0JobFinishedRequest,
)
from horde_localnet.miners import JobState, MinerFleet
from testing.miner_client import GPU, VALIDATOR, Flavour, make_job, open_client, run_honest_job


@pytest.mark.parametrize("flavour", ["hashcat", "clear", "keyed"])
async def test_honest_job_end_to_end(
    flavour: Flavour, start_fleet: Callable[..., Awaitable[MinerFleet]]
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job(flavour)
    finished = await run_honest_job(client, gen)
    assert gen.is_answer(finished.docker_process_stdout), finished
    job = miner.jobs[(VALIDATOR.ss58_address, str(gen.job_uuid))]
    assert job.state is JobState.FINISHED and job.outcome_delivered
    await client.ws.close()


async def test_many_jobs_on_one_connection(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, executors={GPU: 8}, behaviours={0: "instant"})
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gens = [make_job() for _ in range(8)]
    for gen in gens:
        await client.send(client.initial_request(gen))
    ready: set[str] = set()
    while len(ready) < len(gens):
        msg = await client.recv()
        if isinstance(msg, V0ExecutorReadyRequest):
            ready.add(msg.job_uuid)
        else:
            assert isinstance(msg, V0AcceptJobRequest)
    for gen in gens:
        await client.send(client.job_request(gen))
    answers: dict[str, str] = {}
    while len(answers) < len(gens):
        msg = await client.recv()
        if isinstance(msg, V0JobFinishedRequest):
            answers[msg.job_uuid] = msg.docker_process_stdout
    assert all(g.is_answer(answers[str(g.job_uuid)]) for g in gens)
    await client.ws.close()


async def test_worker_processes(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, cpu_workers=1)
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    finished = await run_honest_job(client, gen)
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_job_request_errors(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    stranger = make_job()
    await client.send(client.job_request(stranger))
    error = await client.expect(GenericError)
    assert error.details == f"Received JobRequest for unknown job_uuid: {stranger.job_uuid}"
    gen = make_job()  # volume in the initial request
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.job_request(gen, force_volume=True))
    assert (
        await client.expect(GenericError)
    ).details == f"Received job volume twice job_uuid: {gen.job_uuid}"
    await client.ws.close()


async def test_busy_miner_declines_after_waiting(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, executors={GPU: 1}, executor_wait=0.2)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    first, second = make_job(), make_job()
    await client.send(client.initial_request(first))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.initial_request(second))
    assert (await client.expect(V0DeclineJobRequest)).job_uuid == str(second.job_uuid)
    # Once the first job is done its executor is free again.
    await client.send(client.job_request(first))
    await client.expect(V0JobFinishedRequest, skip_invalid=True)
    third = make_job()
    await client.send(client.initial_request(third))
    assert (await client.expect(V0AcceptJobRequest)).job_uuid == str(third.job_uuid)
    await client.ws.close()


# --------------------------------------------------------------------------------------- receipts


async def test_receipts_are_verified_and_counter_signed(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    job_uuid = str(gen.job_uuid)
    await run_honest_job(client, gen)
    await client.send(client.finished_receipt(job_uuid, 1.3, 1_234_567))
    await miner.wait_for(lambda: len(miner.receipts) == 3)
    kinds = [str(r.payload.receipt_type) for r in miner.receipts]
    assert kinds == ["JobStartedReceipt", "JobAcceptedReceipt", "JobFinishedReceipt"]
    for receipt in miner.receipts:
        assert receipt.payload.job_uuid == job_uuid
        assert receipt.verify_validator_signature()
        assert receipt.verify_miner_signature()
        assert receipt.miner_signature is not None
        assert verify(miner.hotkey, receipt.payload.blob_for_signing(), receipt.miner_signature)
    job = miner.jobs[(VALIDATOR.ss58_address, job_uuid)]
    assert (job.time_took_us, job.score_str) == (1_234_567, "1.3")
    assert fleet.receipts == miner.receipts

    # The receipts file over plain HTTP on the same port.
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{miner.port}/receipts/receipts.csv")
    assert response.status_code == 200
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("type,validator_signature,miner_signature,")
    assert len(lines) == 4
    await client.ws.close()


async def test_bad_receipt_is_not_stored_but_the_job_proceeds(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await client.send(client.initial_request(gen, bad_signature=True))
    await client.expect(V0AcceptJobRequest)
    await client.expect(V0ExecutorReadyRequest)
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest, skip_invalid=True)
    assert gen.is_answer(finished.docker_process_stdout)
    assert miner.receipts == []
    assert miner.rejected_receipts == [("JobStartedReceipt", "bad signature")]
    await client.ws.close()
