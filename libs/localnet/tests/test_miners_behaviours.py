"""The miner simulator over real sockets: the configured misbehaviours, reconnects and outcomes per validator."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.exceptions import ConnectionClosed

from horde_common.protocol.miner import (
    GenericError,
    ProtocolError,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
    parse_miner_message,
)
from horde_localnet.miners import Behaviour, BehaviourSpec, JobState, MinerFleet
from testing.miner_client import (
    GPU,
    OTHER_VALIDATOR,
    VALIDATOR,
    accept_and_ready,
    make_job,
    open_client,
    run_honest_job,
)


async def test_behaviour_decline(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: Behaviour.DECLINE})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await client.send(client.initial_request(gen))
    assert (await client.expect(V0DeclineJobRequest)).job_uuid == str(gen.job_uuid)
    await client.ws.close()


async def test_behaviour_executor_fail(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "executor_fail"})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await client.send(client.initial_request(gen))
    await client.expect(V0AcceptJobRequest)
    assert (await client.expect(V0ExecutorFailedRequest)).job_uuid == str(gen.job_uuid)
    assert fleet.miner(0).pool.free(GPU) == 1
    await client.ws.close()


async def test_behaviour_job_fail(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "job_fail"})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    failed = await client.expect(V0JobFailedRequest)
    assert failed.docker_process_exit_status == 1
    await client.ws.close()


async def test_behaviour_wrong_answer(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "wrong_answer"})
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest)
    assert not gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_behaviour_timeout_never_answers(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "timeout"})
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    await miner.wait_for(
        lambda: miner.jobs[(VALIDATOR.ss58_address, str(gen.job_uuid))].state is JobState.RUNNING
    )
    with pytest.raises(TimeoutError):
        await client.recv(within=0.5)
    await client.ws.close()


async def test_behaviour_slow(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "slow:0.4"})
    assert fleet.miner(0).config.behaviour == BehaviourSpec(Behaviour.SLOW, 0.4)
    client = await open_client(fleet.miner(0))
    await client.authenticate()
    gen = make_job()
    await accept_and_ready(client, gen)
    started = time.monotonic()
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest, skip_invalid=True)
    assert time.monotonic() - started >= 0.4
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_behaviour_garbage(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, behaviours={0: "garbage"})
    client = await open_client(fleet.miner(0))
    await client.send(client.auth_request())
    await client.expect(V0ExecutorManifestRequest)  # still first
    gen = make_job()
    await client.send(client.initial_request(gen))
    invalid = 0
    seen: list[str] = []
    while "V0ExecutorReadyRequest" not in seen:
        try:
            msg = await client.recv()
        except ProtocolError:
            invalid += 1
            continue
        if getattr(msg, "job_uuid", None) == str(gen.job_uuid):
            seen.append(msg.message_type)
    assert seen == ["V0AcceptJobRequest", "V0ExecutorReadyRequest"]
    await client.send(client.job_request(gen))
    finished = None
    while finished is None:
        raw = await client.recv_raw()
        try:
            msg = parse_miner_message(raw)
        except ProtocolError:
            invalid += 1
            continue
        if isinstance(msg, V0JobFinishedRequest):
            finished = msg
    assert invalid >= 5
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_behaviour_disconnect_then_redelivery(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1, behaviours={0: "disconnect"})
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await accept_and_ready(client, gen)
    await client.send(client.job_request(gen))
    with pytest.raises(ConnectionClosed):
        await client.recv_raw()
    job = miner.jobs[(VALIDATOR.ss58_address, str(gen.job_uuid))]
    await miner.wait_for(lambda: job.outcome is not None)
    assert not job.outcome_delivered
    # Reconnect and re-authenticate: manifest first, then the undelivered outcome.
    client = await open_client(miner)
    await client.authenticate()
    finished = await client.expect(V0JobFinishedRequest)
    assert finished.job_uuid == str(gen.job_uuid)
    assert gen.is_answer(finished.docker_process_stdout)
    assert job.outcome_delivered
    await client.ws.close()


async def test_ready_is_reannounced_after_reconnect(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    await client.authenticate()
    gen = make_job()
    await accept_and_ready(client, gen)
    await client.ws.close()
    client = await open_client(miner)
    await client.authenticate()
    assert (await client.expect(V0ExecutorReadyRequest)).job_uuid == str(gen.job_uuid)
    # The payload can still be delivered on the new connection.
    await client.send(client.job_request(gen))
    finished = await client.expect(V0JobFinishedRequest, skip_invalid=True)
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_outcomes_go_only_to_the_owning_validator(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1, known_validators=None)
    miner = fleet.miner(0)
    mine = await open_client(miner)
    await mine.authenticate()
    other = await open_client(miner, OTHER_VALIDATOR)
    await other.authenticate()
    gen = make_job()
    await run_honest_job(mine, gen)
    with pytest.raises(TimeoutError):
        await other.recv(within=0.3)
    # The other validator does not know this job.
    await other.send(other.job_request(gen))
    assert (
        await other.expect(GenericError)
    ).details == f"Received JobRequest for unknown job_uuid: {gen.job_uuid}"
    await mine.ws.close()
    await other.ws.close()
