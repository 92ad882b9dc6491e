"""The miner simulator over real sockets: authentication (signature, timestamp, hotkeys), malformed frames and queueing before auth."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from horde_common.protocol.miner import (
    ExecutorClass,
    GenericError,
    V0AcceptJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
)
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.miner_client import (
    GPU,
    OTHER_VALIDATOR,
    VALIDATOR,
    expect_closed,
    make_job,
    open_client,
    run_honest_job,
)


async def test_auth_success_manifest_first(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(2, executors={GPU: 3, "always_on.llm.a6000": 1})
    assert len(set(fleet.ports)) == 2
    assert fleet.hotkeys == [keys.miner_hotkey(0), keys.miner_hotkey(1)]
    client = await open_client(fleet.miner(1))
    manifest = await client.authenticate()
    assert manifest.manifest.executor_counts() == {GPU: 3, ExecutorClass.ALWAYS_ON_LLM_A6000: 1}
    await client.ws.close()


@pytest.mark.parametrize("case", ["too_old", "miner_hotkey", "validator_hotkey", "signature"])
async def test_auth_failures(case: str, start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1, known_validators=None)
    miner = fleet.miner(0)
    client = await open_client(miner)
    vhk = VALIDATOR.ss58_address
    other = OTHER_VALIDATOR.ss58_address
    if case == "too_old":
        request, reason = client.auth_request(timestamp=int(time.time()) - 12), "msg too old"
    elif case == "miner_hotkey":
        request = client.auth_request(miner_hotkey=keys.miner_hotkey(5))
        reason = f"wrong miner hotkey ({miner.hotkey}!={keys.miner_hotkey(5)})"
    elif case == "validator_hotkey":
        request = client.auth_request(validator_hotkey=other, signer=OTHER_VALIDATOR)
        reason = f"wrong validator hotkey ({vhk}!={other})"
    else:
        request, reason = client.auth_request(signer=OTHER_VALIDATOR), "Signature mismatches"
    await client.send(request)
    error = await client.expect(GenericError)
    assert error.details == f"Validator {vhk} not authenticated due to: {reason}"
    await expect_closed(client)


async def test_future_timestamp_is_accepted(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    client = await open_client(fleet.miner(0))
    await client.send(client.auth_request(timestamp=int(time.time()) + 3600))
    await client.expect(V0ExecutorManifestRequest)
    await client.ws.close()


async def test_unknown_validator(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(2, behaviours={1: "unknown_validator"})
    # Not in the miner's validator list.
    client = await open_client(fleet.miner(0), OTHER_VALIDATOR)
    error = await client.expect(GenericError)
    assert error.details == f"Unknown validator: {OTHER_VALIDATOR.ss58_address}"
    await expect_closed(client)
    # The behaviour: even a listed validator is unknown.
    client = await open_client(fleet.miner(1))
    assert (await client.expect(GenericError)).details == f"Unknown validator: {VALIDATOR.ss58_address}"
    await expect_closed(client)


async def test_malformed_messages_keep_the_connection(
    start_fleet: Callable[..., Awaitable[MinerFleet]],
) -> None:
    fleet = await start_fleet(1)
    client = await open_client(fleet.miner(0))
    for frame in [
        "not json",
        '{"message_type": "Nope"}',
        '{"message_type": "V0JobRequest", "job_uuid": "x"}',
    ]:
        await client.ws.send(frame)
        error = await client.expect(GenericError)
        assert error.details is not None and error.details.startswith("Malformed message: ")
    await client.authenticate()
    await client.ws.send(b"\x00garbage")
    assert (await client.expect(GenericError)).details.startswith("Malformed message: ")  # type: ignore[union-attr]
    gen = make_job()
    finished = await run_honest_job(client, gen)
    assert gen.is_answer(finished.docker_process_stdout)
    await client.ws.close()


async def test_bad_path_is_404(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{fleet.ports[0]}/nope")
    assert response.status_code == 404


async def test_messages_before_auth_are_queued(start_fleet: Callable[..., Awaitable[MinerFleet]]) -> None:
    fleet = await start_fleet(1)
    miner = fleet.miner(0)
    client = await open_client(miner)
    gen = make_job()
    await client.send(client.initial_request(gen))
    await client.send(client.auth_request())
    await client.expect(V0ExecutorManifestRequest)
    assert (await client.expect(V0AcceptJobRequest)).job_uuid == str(gen.job_uuid)
    await client.expect(V0ExecutorReadyRequest)
    await client.ws.close()
