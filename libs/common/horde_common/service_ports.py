"""Where each service listens (docs/architecture.md, "Each service over HTTP").

One table so the services, the CLI (`horde status`, `horde localnet up`) and the deploy files agree.
"""

from __future__ import annotations

SERVICE_PORTS: dict[str, int] = {
    "scheduler": 8001,
    "job-runner": 8002,
    "weights": 8003,
    "facilitator-gateway": 8004,
    "cross-validator": 8005,
}


def service_module(name: str) -> str:
    """The importable package of a service: `job-runner` -> `horde_job_runner`."""
    if name not in SERVICE_PORTS:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_PORTS)}")
    return "horde_" + name.replace("-", "_")
