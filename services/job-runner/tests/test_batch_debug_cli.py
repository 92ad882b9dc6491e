"""`horde debug run-synthetic-jobs --json` end to end, in a subprocess, against simulated miners."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from horde_localnet import keys
from horde_localnet.miners import MinerFleet

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fresh_db(make_database) -> str:  # type: ignore[no-untyped-def]
    """An empty database (not migrated: the command migrates it itself)."""
    url: str = make_database()
    return url


def _free_port_pair() -> int:
    """A port P with P + 1 free too (miners on consecutive ports)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free consecutive ports")


async def run_cli(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, Any] | None, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "horde_cli.main",
        "debug",
        "run-synthetic-jobs",
        "--json",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    text = out.decode()
    try:
        payload = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON object: {text!r}\nstderr: {err.decode()}")
    return proc.returncode or 0, payload, err.decode()


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUG_MINER_", "HOTKEY_", "DATABASE_"))}
    env.update(
        DATABASE_URL=database_url,
        HOTKEY_SEED=keys.validator_seed(0),
        SYNTHETIC_HASHCAT_DIFFICULTY="localnet",
        **extra,
    )
    return env


async def test_debug_command_honest_then_wrong_answer(fresh_db: str, tmp_path: Path) -> None:
    url = fresh_db
    async with MinerFleet(1, executors={"always_on.gpu-24gb": 2}, first_index=300) as honest:
        miner = honest.miners[0]
        code, payload, err = await run_cli(
            cli_env(url, DEBUG_MINER_KEY=miner.hotkey, DEBUG_MINER_PORT=str(miner.port)), tmp_path
        )
    assert code == 0, err
    assert payload is not None
    jobs = payload["jobs"]
    assert len(jobs) == 2
    for job in jobs:
        assert job["executor_class"] == "always_on.gpu-24gb"
        assert (job["status"], job["score"], job["comment"]) == ("COMPLETED", 1.3, "")  # 1 × multiplier
        assert set(job) >= {"job_uuid", "executor_class", "status", "score", "comment"}

    async with MinerFleet(
        1, executors={"always_on.gpu-24gb": 1}, behaviours={301: "wrong_answer"}, first_index=301
    ) as wrong:
        miner = wrong.miners[0]
        code, payload, err = await run_cli(
            cli_env(url, DEBUG_MINER_KEY=miner.hotkey, DEBUG_MINER_PORT=str(miner.port)), tmp_path
        )
    assert code == 0, err  # the batch ran: exit 0 whatever the miner did
    assert payload is not None
    (job,) = payload["jobs"]
    assert (job["status"], job["score"]) == ("FAILED", 0)
    assert job["comment"].startswith("result does not match expected answer")


async def test_debug_command_several_dev_miners_on_consecutive_ports(fresh_db: str, tmp_path: Path) -> None:
    """DEBUG_MINER_COUNT=N with one key: the localnet dev miners 0..N-1 on PORT..PORT+N-1."""
    url = fresh_db
    port = _free_port_pair()
    async with MinerFleet(2, base_port=port, executors={"always_on.gpu-24gb": 1}) as fleet:
        assert fleet.ports == [port, port + 1]
        env = cli_env(
            url,
            DEBUG_MINER_KEY=fleet.miners[0].hotkey,
            DEBUG_MINER_PORT=str(port),
            DEBUG_MINER_COUNT="2",
        )
        code, payload, err = await run_cli(env, tmp_path)
    assert code == 0, err
    assert payload is not None
    assert sorted(j["miner_hotkey"] for j in payload["jobs"]) == sorted(fleet.hotkeys)
    assert {j["status"] for j in payload["jobs"]} == {"COMPLETED"}


async def test_debug_command_without_miner_settings_is_a_config_error(fresh_db: str, tmp_path: Path) -> None:
    code, payload, err = await run_cli(cli_env(fresh_db), tmp_path)
    assert code == 2 and payload is None
    assert "DEBUG_MINER_KEY" in err
