"""`horde localnet up/down`: a whole subnet plus the five services as child processes.

Children run in their own process groups so that one Ctrl-C reaches us once and we stop them in
order (services first, simulators last), each with SIGTERM and a grace period before SIGKILL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from horde_common.service_ports import SERVICE_PORTS, service_module
from horde_localnet.config import Topology
from horde_localnet.keys import facilitator_hotkey, miner_hotkey, validator_hotkey, validator_seed

STATE_DIR = Path(".horde")
STATE_FILE = STATE_DIR / "localnet.json"
LOG_DIR = STATE_DIR / "logs"
# A service gets this long to finish in-flight messages after SIGTERM before it is killed.
STOP_GRACE_S = 15.0
# Acceptance: all five ready within 60 s of the command; leave headroom for a cold import cache.
READY_TIMEOUT_S = 90.0
# Job-runner replica i (2, 3, ...) of `--job-runners N` listens on this + i: the five services keep
# 8001-8005 and the simulators 9000+, so replicas never collide with either.
REPLICA_BASE_PORT = 8010
# Cross-validation on localnet (docs/operations.md §9.1): production runs the prompt loops every 5 and
# 30 minutes and needs thousands of series before it samples; with these small DYNAMIC_* values and a
# run every 10 s, series, workloads and trusted answers exist within the first localnet cycle.
CROSSVAL_INTERVAL_S = 10.0
LOCALNET_DYNAMIC_CONFIG = Path(__file__).with_name("localnet_dynamic_config.json")


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    ready_url: str | None = None  # HTTP URL answering 200 when ready
    ready_port: int | None = None  # otherwise: a TCP port that accepts connections
    env: dict[str, str] = field(default_factory=dict)


# The debug token localnet services use; printed by `horde localnet up`. Not a secret: local only.
LOCALNET_DEBUG_TOKEN = "localnet"


def localnet_env(topo: Topology) -> dict[str, str]:
    """Settings every service gets on localnet; explicit env vars of the operator win."""
    defaults = {
        "LOCALNET_CHAIN_URL": topo.chain_url,
        "BITTENSOR_NETWORK": "local",
        "BITTENSOR_NETUID": str(topo.netuid),
        "HOTKEY_SEED": validator_seed(topo.validator_index),
        "DEBUG_TOKEN": LOCALNET_DEBUG_TOKEN,
        "SYNTHETIC_HASHCAT_DIFFICULTY": "localnet",
        "AWS_ENDPOINT_URL": topo.s3_url,
        "AWS_ACCESS_KEY_ID": "localnet",
        "AWS_SECRET_ACCESS_KEY": "localnet",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_BUCKET_NAME_PROMPTS": topo.s3_bucket_prompts,
        "S3_BUCKET_NAME_ANSWERS": topo.s3_bucket_answers,
        # The simulated trusted miner the miners child serves (docs/crossval.md §8).
        "TRUSTED_MINER_ADDRESS": topo.host,
        "TRUSTED_MINER_PORT": str(topo.trusted_miner_port),
        "TRUSTED_MINER_KEY": miner_hotkey(topo.trusted_miner_index),
        "SERVICE_HOST": topo.host,
        # The facilitator simulator, and the key it signs V2 jobs with (docs/organic.md §9).
        "FACILITATOR_URI": topo.facilitator_url,
        "FACILITATOR_V2_SIGNERS": facilitator_hotkey(),
        "DYNAMIC_CONFIG_SOURCE": str(LOCALNET_DYNAMIC_CONFIG),
    }
    return {**defaults, **{k: v for k, v in os.environ.items() if k in defaults}}


def runs_facilitator_simulator() -> bool:
    """Whether `localnet up` starts the facilitator simulator: not when the operator points the
    gateway at a facilitator of their own with an explicit `FACILITATOR_URI`."""
    return not os.environ.get("FACILITATOR_URI")


def children(topo: Topology, *, job_runners: int = 1, lease_ttl_s: float | None = None) -> list[ChildSpec]:
    """The simulators, the five services and `job_runners - 1` more job-runner replicas.

    `lease_ttl_s` (tests): every job-runner runs with this shard lease TTL instead of the default,
    through `python -m horde_cli.localnet job-runner` (a constructor argument, not a setting).
    """
    if job_runners < 1:
        raise ValueError(f"job_runners must be >= 1, got {job_runners}")
    py = sys.executable
    sims = [*s3_children(topo)]
    sims += [
        ChildSpec(
            "chain",
            [
                py,
                "-m",
                "horde_localnet.chain",
                "--host",
                topo.host,
                "--port",
                str(topo.chain_port),
                "--metagraph",
                str(topo.metagraph_path),
                "--block-interval",
                str(topo.block_interval),
            ],
            ready_port=topo.chain_port,
        ),
        ChildSpec(
            "miners",
            [py, "-m", "horde_localnet.miners", *miner_fleet_args(topo)],
            ready_port=topo.miner_port(topo.miner_count - 1),
        ),
    ]
    if runs_facilitator_simulator():
        facilitator = [py, "-m", "horde_localnet.facilitator", "--host", topo.host]
        facilitator += ["--port", str(topo.facilitator_port)]
        facilitator += ["--allowed-validator", validator_hotkey(topo.validator_index)]
        sims.append(
            ChildSpec(
                "facilitator",
                facilitator,
                ready_url=f"http://{topo.host}:{topo.facilitator_port}/healthz",
            )
        )
    services = [
        ChildSpec(name, [py, "-m", service_module(name)], ready_url=f"http://{topo.host}:{port}/readyz")
        for name, port in SERVICE_PORTS.items()
    ]
    crossval = [py, "-m", __name__, "cross-validator", "--port", str(SERVICE_PORTS["cross-validator"])]
    services = [dataclasses.replace(s, argv=crossval) if s.name == "cross-validator" else s for s in services]
    ttl = [] if lease_ttl_s is None else ["--lease-ttl", str(lease_ttl_s)]
    if lease_ttl_s is not None:
        port = SERVICE_PORTS["job-runner"]
        services = [
            ChildSpec(s.name, [py, "-m", __name__, "job-runner", "--port", str(port), *ttl], s.ready_url)
            if s.name == "job-runner"
            else s
            for s in services
        ]
    for i in range(2, job_runners + 1):
        port = REPLICA_BASE_PORT + i
        services.append(
            ChildSpec(
                f"job-runner-{i}",
                [py, "-m", __name__, "job-runner", "--port", str(port), *ttl],
                ready_url=f"http://{topo.host}:{port}/readyz",
            )
        )
    return sims + services


def start_stages(specs: list[ChildSpec]) -> list[list[ChildSpec]]:
    """The children in the order they start, each stage ready before the next starts.

    With job-runner replicas the scheduler starts last: its first batch is dispatched within a
    second of its start, and a replica not yet consuming would leave every shard to the others.
    """
    if not any(s.name.startswith("job-runner-") for s in specs):
        return [specs]
    return [[s for s in specs if s.name != "scheduler"], [s for s in specs if s.name == "scheduler"]]


def is_service(name: str) -> bool:
    """A service child (stopped first): one of the five, or a job-runner replica `job-runner-<i>`."""
    return name in SERVICE_PORTS or name.rpartition("-")[0] in SERVICE_PORTS


def run_job_runner(port: int, lease_ttl_s: float | None) -> None:
    """Run one job-runner on `port` (a replica beside the localnet's own), blocking until stopped.

    The same service as `python -m horde_job_runner`; only its HTTP port and, when given, its shard
    lease TTL differ (docs/scheduling.md §8; the lease in `horde_job_runner/synthetic/shard_lease.py`).
    """
    from horde_common.service import Dependency, run_service
    from horde_job_runner.app import SPEC
    from horde_job_runner.synthetic.handler import JobRunnerRuntime, job_runner_runtime_with

    dependencies = list(SPEC.dependencies)
    if lease_ttl_s is not None:
        runtime = Dependency(JobRunnerRuntime, job_runner_runtime_with(lease_ttl_s=lease_ttl_s))
        dependencies = [runtime if d.type is JobRunnerRuntime else d for d in dependencies]
    run_service(dataclasses.replace(SPEC, port=port, dependencies=dependencies))


def run_cross_validator(port: int, interval_s: float = CROSSVAL_INTERVAL_S) -> None:
    """Run the cross-validator with its three prompt loops every `interval_s`, blocking until stopped.

    The service's own loops (`horde_cross_validator.loops.prompt_loops`) on one shorter period.
    Before them, the DYNAMIC_* values of `DYNAMIC_CONFIG_SOURCE` are stored in this process: the
    scheduler stores them too, but maybe after the first run read and cached the production values
    for 5 minutes.
    """
    import structlog

    from horde_common.dynamic_config import DynamicConfigError, refresh_from_sources
    from horde_common.service import ServiceContext, run_service
    from horde_cross_validator.app import SPEC
    from horde_cross_validator.loops import prompt_loops

    async def on_start(ctx: ServiceContext) -> None:
        sources = [s.strip() for s in (ctx.settings.DYNAMIC_CONFIG_SOURCE or "").split(",") if s.strip()]
        try:
            async with ctx.sessions() as session, session.begin():
                await refresh_from_sources(session, sources)
        except DynamicConfigError as exc:  # the scheduler records the event; the loops use what is stored
            structlog.get_logger(__name__).warning("localnet.dynamic_config_not_stored", error=str(exc))
        if SPEC.on_start is not None:
            await SPEC.on_start(ctx)

    run_service(
        dataclasses.replace(SPEC, port=port, loops=prompt_loops(every_s=interval_s), on_start=on_start)
    )


def miner_fleet_args(topo: Topology) -> list[str]:
    """Arguments of `python -m horde_localnet.miners` for the fleet the metagraph lists, plus the
    trusted miner of the validator under test (docs/crossval.md §8)."""
    trusted = ["--trusted-port", str(topo.trusted_miner_port)]
    trusted += ["--trusted-validator", validator_hotkey(topo.validator_index)]
    return ["--metagraph", str(topo.metagraph_path), "--host", topo.host, *trusted]


def s3_children(topo: Topology) -> list[ChildSpec]:
    """The `s3` child (`horde_cli.localnet_s3`): moto_server if needed, and the two buckets.

    None when `AWS_ENDPOINT_URL` is blank (AWS itself): the operator provisions real buckets with
    `horde s3 provision`. Ready once a public GET of this run's marker object in the answers bucket
    answers 200, i.e. the buckets exist and are publicly readable.
    """
    import uuid

    env = localnet_env(topo)
    endpoint = env["AWS_ENDPOINT_URL"].strip().rstrip("/")
    if not endpoint:
        return []
    from horde_cli.localnet_s3 import ready_key

    marker = uuid.uuid4().hex
    ready_url = f"{endpoint}/{env['S3_BUCKET_NAME_ANSWERS']}/{ready_key(marker)}"
    argv = [sys.executable, "-m", "horde_cli.localnet_s3", "--marker", marker]
    return [ChildSpec("s3", argv, ready_url=ready_url)]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _is_ready(spec: ChildSpec, host: str) -> bool:
    if spec.ready_url:
        try:
            return httpx.get(spec.ready_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False
    return spec.ready_port is not None and _port_open(host, spec.ready_port)


def start_children(specs: list[ChildSpec], env: dict[str, str]) -> dict[str, subprocess.Popen[bytes]]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for spec in specs:
        log = open(LOG_DIR / f"{spec.name}.log", "ab")
        procs[spec.name] = subprocess.Popen(
            spec.argv,
            env={**os.environ, **env, **spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return procs


def wait_ready(
    specs: list[ChildSpec],
    procs: dict[str, subprocess.Popen[bytes]],
    host: str,
    on_progress: Callable[[set[str]], None],
    timeout_s: float = READY_TIMEOUT_S,
) -> tuple[bool, str]:
    """Poll until every child is ready; fail early when a child exits."""
    deadline = time.monotonic() + timeout_s
    ready: set[str] = set()
    while time.monotonic() < deadline:
        for spec in specs:
            if spec.name in ready:
                continue
            code = procs[spec.name].poll()
            if code is not None:
                return False, f"{spec.name} exited with code {code}; see {LOG_DIR / spec.name}.log"
            if _is_ready(spec, host):
                ready.add(spec.name)
                on_progress(ready)
        if len(ready) == len(specs):
            return True, ""
        time.sleep(0.25)
    missing = sorted({s.name for s in specs} - ready)
    return False, f"not ready after {timeout_s:.0f} s: {', '.join(missing)}"


def stop_pids(pids: dict[str, int], grace_s: float = STOP_GRACE_S) -> dict[str, str]:
    """SIGTERM each child's process group (services first), then SIGKILL stragglers."""
    order = [n for n in pids if is_service(n)] + [n for n in pids if not is_service(n)]
    for name in order:
        try:
            os.killpg(pids[name], signal.SIGTERM)
        except ProcessLookupError:
            pass
    outcome: dict[str, str] = {}
    deadline = time.monotonic() + grace_s
    for name in order:
        while time.monotonic() < deadline and _alive(pids[name]):
            time.sleep(0.1)
        if _alive(pids[name]):
            try:
                os.killpg(pids[name], signal.SIGKILL)
            except ProcessLookupError:
                pass
            outcome[name] = "killed"
        else:
            outcome[name] = "stopped"
    return outcome


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (detached run): fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def save_state(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({name: p.pid for name, p in procs.items()}))


def load_state() -> dict[str, int]:
    if not STATE_FILE.exists():
        return {}
    data = json.loads(STATE_FILE.read_text())
    return {str(k): int(v) for k, v in data.items()}


def main(argv: list[str] | None = None) -> None:
    """`python -m horde_cli.localnet job-runner --port P [--lease-ttl S]`: a job-runner replica;
    `python -m horde_cli.localnet cross-validator --port P [--interval S]`: the localnet's cross-validator."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m horde_cli.localnet", description=main.__doc__)
    parser.add_argument("what", choices=["job-runner", "cross-validator"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lease-ttl", type=float, default=None, help="shard lease TTL, seconds")
    parser.add_argument("--interval", type=float, default=CROSSVAL_INTERVAL_S, help="prompt loops' period, s")
    args = parser.parse_args(argv)
    if args.what == "cross-validator":
        run_cross_validator(args.port, args.interval)
    else:
        run_job_runner(args.port, args.lease_ttl)


if __name__ == "__main__":
    main()
