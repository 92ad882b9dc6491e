"""`horde localnet up`'s children with job-runner replicas: names, ports, start order, stop order.

Pure: the child specs are built, never started (the end-to-end runs are `test_batch_replicas.py` and
`test_batch_kill.py`).
"""

from __future__ import annotations

import pytest

from horde_cli import localnet
from horde_common.service_ports import SERVICE_PORTS
from horde_localnet.config import DEFAULT_TOPOLOGY


def test_the_default_is_the_five_services_and_the_simulators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACILITATOR_URI", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    specs = localnet.children(DEFAULT_TOPOLOGY)
    assert [s.name for s in specs] == ["s3", "chain", "miners", "facilitator", *SERVICE_PORTS]
    job_runner = next(s for s in specs if s.name == "job-runner")
    assert job_runner.argv[1:] == ["-m", "horde_job_runner"]  # unchanged: the service's own module
    assert localnet.start_stages(specs) == [specs]  # all at once, as before


def test_the_gateway_uses_the_simulator_unless_a_facilitator_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FACILITATOR_URI", raising=False)
    env = localnet.localnet_env(DEFAULT_TOPOLOGY)
    assert env["FACILITATOR_URI"] == DEFAULT_TOPOLOGY.facilitator_url
    assert env["FACILITATOR_V2_SIGNERS"]  # the simulator's signing key, so its V2 jobs are accepted
    monkeypatch.setenv("FACILITATOR_URI", "wss://facilitator.example/ws/v0/")
    assert localnet.localnet_env(DEFAULT_TOPOLOGY)["FACILITATOR_URI"] == "wss://facilitator.example/ws/v0/"
    assert "facilitator" not in [s.name for s in localnet.children(DEFAULT_TOPOLOGY)]


def test_replicas_get_their_own_ports_and_the_lease_ttl() -> None:
    specs = localnet.children(DEFAULT_TOPOLOGY, job_runners=3, lease_ttl_s=2.5)
    by_name = {s.name: s for s in specs}
    assert {"job-runner-2", "job-runner-3"} <= set(by_name)
    ports = {8012, 8013}
    assert {int(by_name[f"job-runner-{i}"].argv[by_name[f"job-runner-{i}"].argv.index("--port") + 1])
            for i in (2, 3)} == ports  # fmt: skip
    assert not ports & set(SERVICE_PORTS.values())
    for name in ("job-runner", "job-runner-2", "job-runner-3"):
        argv = by_name[name].argv
        assert argv[1:4] == ["-m", "horde_cli.localnet", "job-runner"]
        assert argv[argv.index("--lease-ttl") + 1] == "2.5"
    assert by_name["job-runner-2"].ready_url == "http://127.0.0.1:8012/readyz"


def test_with_replicas_the_scheduler_starts_once_every_job_runner_is_ready() -> None:
    specs = localnet.children(DEFAULT_TOPOLOGY, job_runners=2)
    first, last = localnet.start_stages(specs)
    assert [s.name for s in last] == ["scheduler"]
    assert {"job-runner", "job-runner-2", "chain", "miners"} <= {s.name for s in first}


def test_replicas_stop_with_the_services() -> None:
    assert localnet.is_service("job-runner-2") and localnet.is_service("scheduler")
    assert not localnet.is_service("chain") and not localnet.is_service("miners")


def test_at_least_one_job_runner() -> None:
    with pytest.raises(ValueError, match="job_runners"):
        localnet.children(DEFAULT_TOPOLOGY, job_runners=0)
