"""Each of the five services starts against the real broker and database and answers its probes."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys

import httpx
import pytest

from horde_common.bus import QUEUES
from horde_common.config import load_settings
from horde_common.service import ServiceRunner, ServiceSpec
from horde_common.service_ports import SERVICE_PORTS, service_module
from horde_common.telemetry import configure_metrics, record_event

TOKEN = "test-debug-token"


def _spec(name: str) -> ServiceSpec:
    spec = importlib.import_module(service_module(name) + ".app").SPEC
    assert isinstance(spec, ServiceSpec)
    return spec


@pytest.mark.parametrize("name", list(SERVICE_PORTS))
def test_spec_matches_architecture(name: str) -> None:
    spec = _spec(name)
    assert spec.name == name
    assert spec.port == SERVICE_PORTS[name]
    owned = {q for q, s in QUEUES.items() if s.service == name}
    assert spec.router is not None
    assert set(spec.router.routes) == owned, "every queue the service owns has a handler"


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, from a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


@pytest.mark.parametrize("name", list(SERVICE_PORTS))
async def test_service_ready_and_debug_guarded(name: str, database_url: str, amqp_url: str) -> None:
    configure_metrics("services-ready-test")  # as run_service does before the runner starts
    settings = load_settings(
        DATABASE_URL=database_url, AMQP_URL=amqp_url, DEBUG_TOKEN=TOKEN, HOTKEY_SEED="//horde-validator-0"
    )
    runner = ServiceRunner(dataclasses.replace(_spec(name), port=0), settings)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), timeout=10)  # acceptance: ready within 10 s
        base = f"http://127.0.0.1:{runner.port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            # A horde counter by name and value (the default collectors alone print `# TYPE` too):
            # an event recorded through the service's own database handle is counted on its /metrics.
            labels = {"service": name, "type": "VALIDATOR_TELEMETRY", "subtype": "CHECKPOINT"}
            before = _sample((await client.get("/metrics")).text, "horde_system_events_total", **labels)
            assert runner.ctx.session_factory is not None
            async with runner.ctx.session_factory.begin() as session:
                await record_event(session, "VALIDATOR_TELEMETRY", "CHECKPOINT", "probe", service=name)
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            after = _sample(metrics.text, "horde_system_events_total", **labels)
            assert after == (before or 0.0) + 1, metrics.text
            assert (await client.get("/debug/")).status_code == 401
            wrong = await client.get("/debug/", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.get("/debug/", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200
            assert "config" in ok.text
            cfg = await client.get("/debug/config", headers={"Authorization": f"Bearer {TOKEN}"})
            assert TOKEN not in cfg.text, "secrets are masked in the config view"
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, timeout=20)


async def test_missing_wallet_is_a_one_line_config_error(database_url: str, amqp_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The job-runner signs receipts: without a hotkey it must refuse to start, saying why."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "horde_job_runner",
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "AMQP_URL": amqp_url,
            "SERVICE_HOST": "127.0.0.1",
            "BITTENSOR_WALLET_DIRECTORY": str(tmp_path),
            "HOTKEY_SEED": "",
            "PYTHONUNBUFFERED": "1",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error:"), err.decode()
    assert "Traceback" not in err.decode()
