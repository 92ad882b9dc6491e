"""`horde debug run-synthetic-jobs --json` end to end, in a subprocess, against simulated miners."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import psutil
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
    code, payload, err, _ = await run_cli_in_session(env, cwd)
    return code, payload, err


async def run_cli_in_session(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, Any] | None, str, int]:
    """The command in a session of its own (its pid is the session id of all its descendants)."""
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
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 150)
    text = out.decode()
    try:
        payload = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON object: {text!r}\nstderr: {err.decode()}")
    return proc.returncode or 0, payload, err.decode(), proc.pid


def session_members(sid: int) -> list[str]:
    """Live processes in session `sid` (zombies count as gone), as "pid: command line"."""
    members = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


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


async def test_debug_command_names_each_failed_miner_and_exits_3(fresh_db: str, tmp_path: Path) -> None:
    """A miner that refuses us ("Unknown validator") and one that is not there (a closed port):
    one stderr line each saying why, the header on one line however long, and exit 3 (no job ran)."""
    port = _free_port_pair()
    refusing_index = 0  # with base_port = P, dev miner i listens on P + i
    async with MinerFleet(
        1, base_port=port, behaviours={refusing_index: "unknown_validator"}, first_index=refusing_index
    ) as fleet:
        refusing = fleet.miners[0]
        assert refusing.port == port
        absent_hotkey = keys.miner_keypair(1).ss58_address  # its port P + 1 has no listener
        env = cli_env(
            fresh_db, DEBUG_MINER_KEY=f"{refusing.hotkey},{absent_hotkey}", DEBUG_MINER_PORT=str(port)
        )
        code, payload, err = await run_cli(env, tmp_path)
    assert code == 3, err
    assert payload is not None and payload["jobs"] == []
    lines = err.splitlines()
    header = [line for line in lines if line.startswith("validator ")]
    assert len(header) == 1, err
    assert len(header[0]) > 80 and header[0].endswith(f"2 miner(s) at 127.0.0.1:{port}..{port + 1}"), err
    (refused,) = [line for line in lines if refusing.hotkey in line]
    assert f"127.0.0.1:{port}: unauthorized:" in refused and "Unknown validator" in refused, err
    (absent,) = [line for line in lines if absent_hotkey in line]
    assert f"127.0.0.1:{port + 1}: cannot connect:" in absent, err
    kinds = {f["miner_hotkey"]: f["kind"] for f in payload["miner_failures"]}
    assert kinds == {refusing.hotkey: "unauthorized", absent_hotkey: "cannot connect"}


async def test_debug_command_with_one_good_miner_of_two_exits_0(fresh_db: str, tmp_path: Path) -> None:
    """Some jobs ran: exit 0, and the miner that could not be reached still gets its line."""
    port = _free_port_pair()
    async with MinerFleet(1, base_port=port, executors={"always_on.gpu-24gb": 1}) as fleet:
        good = fleet.miners[0]
        absent_hotkey = keys.miner_keypair(1).ss58_address
        env = cli_env(fresh_db, DEBUG_MINER_KEY=f"{good.hotkey},{absent_hotkey}", DEBUG_MINER_PORT=str(port))
        code, payload, err = await run_cli(env, tmp_path)
    assert code == 0, err
    assert payload is not None and [j["status"] for j in payload["jobs"]] == ["COMPLETED"]
    (absent,) = [line for line in err.splitlines() if absent_hotkey in line]
    assert "cannot connect" in absent
    assert not [line for line in err.splitlines() if good.hotkey in line and "miner " in line]


async def test_debug_command_leaves_no_process_behind(fresh_db: str, tmp_path: Path) -> None:
    """The generator pool is stopped and waited for: when the command exits, nothing it started
    (forkserver, generation workers) is still running."""
    async with MinerFleet(1, executors={"always_on.gpu-24gb": 2}, first_index=302) as fleet:
        miner = fleet.miners[0]
        env = cli_env(fresh_db, DEBUG_MINER_KEY=miner.hotkey, DEBUG_MINER_PORT=str(miner.port))
        code, payload, err, sid = await run_cli_in_session(env, tmp_path)
    assert code == 0, err
    assert payload is not None and len(payload["jobs"]) == 2
    assert session_members(sid) == []


def test_head_revisions_without_alembic_match_alembic() -> None:
    """The command skips Alembic when the database is at this head: it must be Alembic's head."""
    from horde_common.db.migrate import head
    from horde_job_runner.synthetic.debug_run import head_revisions

    assert head_revisions() == {head()}
