"""The localnet solver function, the trusted-mode configuration, and the trusted miner run by
`python -m horde_localnet.miners --trusted-port` (a real subprocess on a free port)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from horde_common.protocol.miner import GenericError, parse_miner_message
from horde_localnet import keys, llm
from horde_localnet.config import DEFAULT_TOPOLOGY
from horde_localnet.miners import MinerConfig

START_WITHIN_S = 30.0  # the subprocess imports the protocol models and websockets: a few seconds


def test_the_answer_function_is_deterministic_and_strips_prompts() -> None:
    assert llm.answer(5, "  hello ") == llm.answer(5, "hello") != llm.answer(6, "hello")
    assert llm.solve(5, " a \n\n b\n") == {"a": llm.answer(5, "a"), "b": llm.answer(5, "b")}
    assert llm.solve(5, "a", wrong=True)["a"] != llm.answer(5, "a")
    assert json.loads(llm.answers_json({"ü": "x"})) == {"ü": "x"}
    assert llm.generated_prompts("u-1", 3) == llm.generated_prompts("u-1", 3)
    assert len(set(llm.generated_prompts("u-1", 50))) == 50


def test_a_trusted_miner_needs_exactly_one_validator() -> None:
    with pytest.raises(ValueError, match="exactly one validator"):
        MinerConfig(trusted=True, known_validators=None)
    with pytest.raises(ValueError, match="exactly one validator"):
        MinerConfig(trusted=True, known_validators=frozenset({"a", "b"}))
    assert MinerConfig(trusted=True, known_validators=frozenset({"a"})).trusted


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def trusted_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = _free_port()
    argv = [sys.executable, "-m", "horde_localnet.miners", "--count", "0", "--trusted-port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(15)


async def test_the_cli_serves_a_trusted_miner_for_the_validator_under_test(
    trusted_process: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = trusted_process
    assert proc.stdout is not None
    deadline = time.monotonic() + START_WITHIN_S
    line = ""
    while "trusted miner" not in line:  # the process prints it once the port listens
        assert time.monotonic() < deadline and proc.poll() is None, line
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), START_WITHIN_S)
    trusted = keys.miner_hotkey(DEFAULT_TOPOLOGY.trusted_miner_index)
    assert trusted in line and f":{port}" in line and keys.validator_hotkey(0) in line
    other = keys.validator_hotkey(1)  # on the chain, but not the trusted miner's validator
    async with connect(f"ws://127.0.0.1:{port}/v0.1/validator_interface/{other}") as ws:
        msg = parse_miner_message(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(msg, GenericError) and msg.details == f"Unknown validator: {other}"
