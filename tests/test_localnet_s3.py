"""The localnet's `s3` child (`horde_cli.localnet_s3`, docs/crossval.md §8) as a real subprocess.

With moto already listening (the usual case: the shared moto_server on :9000) it only provisions
the buckets; with nothing listening on a loopback endpoint it starts moto_server there and stops it
on SIGTERM. Either way it is ready when the marker object is publicly readable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from horde_cli import localnet
from horde_cli.localnet_s3 import local_endpoint, ready_key
from horde_common import s3
from horde_common.config import Settings
from horde_localnet.config import DEFAULT_TOPOLOGY

SHARED_MOTO = "http://127.0.0.1:9000"
READY_WITHIN_S = 60.0  # a cold moto_server start imports every AWS model: several seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(endpoint: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    prompts, answers = f"lp-{uuid.uuid4().hex[:10]}", f"la-{uuid.uuid4().hex[:10]}"
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        **localnet.localnet_env(DEFAULT_TOPOLOGY),
        "AWS_ENDPOINT_URL": endpoint,
        "S3_BUCKET_NAME_PROMPTS": prompts,
        "S3_BUCKET_NAME_ANSWERS": answers,
    }
    with open(tmp_path / "s3.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "horde_cli.localnet_s3", "--marker", marker],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, prompts, answers, f"{endpoint}/{answers}/{ready_key(marker)}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "s3.log").read_text()
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {READY_WITHIN_S} s: {(tmp_path / 's3.log').read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(15)


def test_with_moto_running_it_provisions_both_buckets_public(tmp_path: Path) -> None:
    proc, prompts, answers, ready = _run(SHARED_MOTO, tmp_path)
    try:
        _wait_ready(proc, ready, tmp_path)
        conf = Settings(_env_file=None, AWS_ENDPOINT_URL=SHARED_MOTO, AWS_ACCESS_KEY_ID="localnet",  # type: ignore[call-arg]
                        AWS_SECRET_ACCESS_KEY="localnet", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
        for bucket in (prompts, answers):  # both exist, with the public-read policy of §5
            policy = s3.client(conf).get_bucket_policy(Bucket=bucket)["Policy"]
            assert "s3:GetObject" in policy and '"*"' in policy
        assert httpx.get(ready, timeout=5).text == "ready\n"
    finally:
        code = _stop(proc)
    assert code == 0
    assert _listening(9000), "a moto_server it did not start is left alone"


def test_with_nothing_listening_it_starts_moto_and_stops_it(tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc, _, _, ready = _run(endpoint, tmp_path)
    try:
        _wait_ready(proc, ready, tmp_path)
        assert _listening(port)
    finally:
        code = _stop(proc)
    assert code == 0
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _listening(port)


def test_the_launcher_runs_it_only_for_an_endpoint_it_can_reach(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    (child,) = localnet.s3_children(DEFAULT_TOPOLOGY)
    assert child.argv[1:3] == ["-m", "horde_cli.localnet_s3"]
    assert child.ready_url is not None and child.ready_url.startswith(
        f"{DEFAULT_TOPOLOGY.s3_url}/horde-answers/"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    assert localnet.s3_children(DEFAULT_TOPOLOGY) == []
    assert local_endpoint("http://localhost:9000") == ("localhost", 9000)
    assert local_endpoint("https://s3.us-west-004.backblazeb2.com") is None


def test_the_localnet_env_points_the_validator_at_the_trusted_miner(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in ("TRUSTED_MINER_ADDRESS", "TRUSTED_MINER_PORT", "TRUSTED_MINER_KEY"):
        monkeypatch.delenv(name, raising=False)
    env = localnet.localnet_env(DEFAULT_TOPOLOGY)
    assert (env["TRUSTED_MINER_ADDRESS"], env["TRUSTED_MINER_PORT"]) == ("127.0.0.1", "9250")
    args = localnet.miner_fleet_args(DEFAULT_TOPOLOGY)
    assert args[args.index("--trusted-port") + 1] == "9250"
    assert env["S3_BUCKET_NAME_PROMPTS"] != env["S3_BUCKET_NAME_ANSWERS"]
