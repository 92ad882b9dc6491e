"""The localnet's S3 (docs/crossval.md §8): moto_server when nothing listens, and the two buckets.

`horde localnet up` runs `python -m horde_cli.localnet_s3 --marker TOKEN` as its `s3` child, with the
localnet's settings in the environment. It:

1. starts `moto_server` on the endpoint's host and port when `AWS_ENDPOINT_URL` is a loopback URL
   and nothing listens there (usually something does: `scripts/services` starts one), and stops it
   again on SIGTERM; a moto_server that was already running is left alone;
2. provisions both buckets as `horde s3 provision` does (created if missing, public read);
3. writes the object `horde-localnet/ready-{TOKEN}` into the answers bucket: the launcher's ready
   check is a public GET of it, so "ready" means the buckets exist and public reads work;
4. waits for SIGTERM.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

# moto_server imports a lot (every AWS service model); a cold start takes a few seconds.
MOTO_START_TIMEOUT_S = 30.0
# moto_server stops at once on SIGTERM; a stuck one is killed after this.
MOTO_STOP_TIMEOUT_S = 5.0
READY_PREFIX = "horde-localnet/ready-"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def ready_key(marker: str) -> str:
    return f"{READY_PREFIX}{marker}"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def local_endpoint(endpoint: str | None) -> tuple[str, int] | None:
    """(host, port) of a loopback `AWS_ENDPOINT_URL`, which the localnet may serve itself; else None."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if parts.hostname not in LOOPBACK_HOSTS:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def moto_server_path() -> str | None:
    """The `moto_server` of this environment (a dev dependency), else one on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def start_moto(host: str, port: int) -> subprocess.Popen[bytes]:
    """Start moto_server on host:port and wait until it listens; RuntimeError when it cannot."""
    exe = moto_server_path()
    if exe is None:
        raise RuntimeError("moto_server not found: install the dev dependencies or set AWS_ENDPOINT_URL")
    proc = subprocess.Popen([exe, "-H", host, "-p", str(port)])
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        if _port_open(host, port):
            return proc
        time.sleep(0.2)
    stop_moto(proc)
    raise RuntimeError(f"moto_server did not listen on {host}:{port} within {MOTO_START_TIMEOUT_S:g} s")


def stop_moto(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(MOTO_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(MOTO_STOP_TIMEOUT_S)


def prepare(marker: str) -> subprocess.Popen[bytes] | None:
    """Steps 1-3; returns the moto_server this process started, if any."""
    from horde_cli.s3 import DEFAULT_REGION, provision
    from horde_common import s3
    from horde_common.config import get_settings

    settings = get_settings()
    prompts, answers = s3.prompts_bucket(settings), s3.answers_bucket(settings)
    local = local_endpoint(s3.endpoint_url(settings))
    moto = None
    if local is not None and not _port_open(*local):
        print(f"starting moto_server on {local[0]}:{local[1]}", flush=True)
        moto = start_moto(*local)
    try:
        region = settings.AWS_DEFAULT_REGION or DEFAULT_REGION
        provision(settings, prompts, answers, region, create_user=False, user_name="")
        s3.put_object(settings, answers, ready_key(marker), b"ready\n")
    except BaseException:
        if moto is not None:
            stop_moto(moto)
        raise
    print(f"S3 buckets ready: {prompts}, {answers} at {s3.endpoint_url(settings) or 'AWS'}", flush=True)
    return moto


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m horde_cli.localnet_s3", description=__doc__)
    parser.add_argument("--marker", required=True, help="names the ready object of this run")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        moto = prepare(args.marker)
    except Exception as exc:  # any failure: one line, exit 1; the launcher points at this log
        print(f"localnet S3 failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    while not stop.wait(0.5):  # a timed wait: signal handlers run between the waits
        if moto is not None and moto.poll() is not None:
            print(f"moto_server exited with code {moto.returncode}", file=sys.stderr, flush=True)
            return 1
    if moto is not None:
        stop_moto(moto)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
