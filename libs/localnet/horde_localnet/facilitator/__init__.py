"""The localnet facilitator simulator: hands organic jobs to validators over the facilitator
WebSocket protocol (docs/organic.md §1) and records what they report.

* `sim.FacilitatorSim`: state (authentication, job queue, recorded frames), no sockets;
* `server`: the WebSocket at `/ws/v0/` and the HTTP API on one port, `running_facilitator`;
* `jobs`: job specs (HTTP body, JSONL line) and the V0/V1/V2 requests built from them;
* `client`: `submit_job` and `stream_statuses` over HTTP.

Run it: `python -m horde_localnet.facilitator --port 9300 [--rate R] [--jobs-file FILE]`.

Names are imported on first use, so that `client`, which the `horde` CLI imports, loads neither
FastAPI and uvicorn nor the protocol models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import JobSpec, JobVersion, build_request, read_jobs_file
    from .server import VALIDATOR_PATH, RunningFacilitator, build_app, feed_jobs, running_facilitator
    from .sim import (
        CLOSE_SIGNATURE_INVALID,
        CLOSE_VALIDATOR_NOT_FOUND,
        DuplicateJob,
        FacilitatorSim,
        JobRecord,
    )

_EXPORTS = {
    "CLOSE_SIGNATURE_INVALID": "sim",
    "CLOSE_VALIDATOR_NOT_FOUND": "sim",
    "DuplicateJob": "sim",
    "FacilitatorSim": "sim",
    "JobRecord": "sim",
    "JobSpec": "jobs",
    "JobVersion": "jobs",
    "build_request": "jobs",
    "read_jobs_file": "jobs",
    "VALIDATOR_PATH": "server",
    "RunningFacilitator": "server",
    "build_app": "server",
    "feed_jobs": "server",
    "running_facilitator": "server",
}

__all__ = [
    "CLOSE_SIGNATURE_INVALID",
    "CLOSE_VALIDATOR_NOT_FOUND",
    "VALIDATOR_PATH",
    "DuplicateJob",
    "FacilitatorSim",
    "JobRecord",
    "JobSpec",
    "JobVersion",
    "RunningFacilitator",
    "build_app",
    "build_request",
    "feed_jobs",
    "read_jobs_file",
    "running_facilitator",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
