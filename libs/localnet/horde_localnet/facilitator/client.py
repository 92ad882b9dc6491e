"""HTTP client of the facilitator simulator, for `horde localnet submit-job` and scripts.

`submit_job` posts one job and returns its uuid; `stream_statuses` yields the validator's status
updates for it as they arrive (long poll, no sleeping) until a final one or the timeout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import httpx

__all__ = [
    "FINAL_STATUSES",
    "FacilitatorClientError",
    "get_job",
    "get_stats",
    "resend_job",
    "stream_statuses",
    "submit_job",
]

FINAL_STATUSES: Final = frozenset({"rejected", "failed", "completed"})
"""After these a validator sends nothing more for the job (docs/organic.md §1.4)."""

_POLL_S: Final = 30.0
"""Longest single long-poll: short enough to notice a dead server, long enough to be cheap."""

_HTTP_MARGIN_S: Final = 10.0
"""HTTP timeout beyond the long-poll itself, for the request and answer on a loaded machine."""


class FacilitatorClientError(Exception):
    """The simulator refused the request or answered something unexpected."""


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            data = response.json()
        except ValueError:
            data = None
        message = (data.get("message") or data.get("detail")) if isinstance(data, dict) else None
        message = message or response.text
        raise FacilitatorClientError(f"HTTP {response.status_code}: {message}")
    body: dict[str, Any] = response.json()
    return body


async def submit_job(
    url: str,
    *,
    version: str = "V2",
    executor_class: str | None = None,
    miner_hotkey: str | None = None,
    docker_image: str | None = None,
    raw_script: str | None = None,
    args: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    use_gpu: bool | None = None,
    job_timeout: float | None = None,
    validator_hotkey: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Submit one job to the simulator at `url` (its HTTP base URL); returns the job uuid.
    Fields left None take the simulator's defaults; `job_timeout` is the spec's `timeout`;
    `extra` adds any other `JobSpec` field (`volume`, `output_upload`, `input_url`, ...)."""
    body: dict[str, Any] = {"version": version}
    for key, value in (
        ("executor_class", executor_class),
        ("miner_hotkey", miner_hotkey),
        ("docker_image", docker_image),
        ("raw_script", raw_script),
        ("args", None if args is None else list(args)),
        ("env", env),
        ("use_gpu", use_gpu),
        ("timeout", job_timeout),
        ("validator_hotkey", validator_hotkey),
    ):
        if value is not None:
            body[key] = value
    body.update(extra or {})
    async with httpx.AsyncClient(base_url=url, timeout=_HTTP_MARGIN_S) as http:
        answer = _check(await http.post("/jobs", json=body))
    return str(answer["uuid"])


async def resend_job(url: str, job_uuid: str) -> int:
    """Send a job the simulator already sent once more, the same request (a facilitator repeating
    itself); returns how often it has now been sent."""
    async with httpx.AsyncClient(base_url=url, timeout=_HTTP_MARGIN_S) as http:
        answer = _check(await http.post(f"/jobs/{job_uuid}/resend"))
    return int(answer["sends"])


async def get_stats(url: str) -> dict[str, Any]:
    """The simulator's totals (`GET /stats`): frames, jobs, `duplicate_finals`, ..."""
    async with httpx.AsyncClient(base_url=url, timeout=_HTTP_MARGIN_S) as http:
        return _check(await http.get("/stats"))


async def get_job(url: str, job_uuid: str) -> dict[str, Any]:
    """The simulator's full record of one job (request sent, state, status updates)."""
    async with httpx.AsyncClient(base_url=url, timeout=_HTTP_MARGIN_S) as http:
        return _check(await http.get(f"/jobs/{job_uuid}"))


async def stream_statuses(url: str, job_uuid: str, wait_s: float) -> AsyncIterator[dict[str, Any]]:
    """Each status update of the job (`status`, `received_at`, `validator`, `metadata`) in arrival
    order, ending after a final status; raises TimeoutError when none came within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    after = 0
    async with httpx.AsyncClient(base_url=url, timeout=_POLL_S + _HTTP_MARGIN_S) as http:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_uuid}: no final status within {wait_s:g}s")
            answer = _check(
                await http.get(
                    f"/jobs/{job_uuid}/statuses", params={"after": after, "timeout": min(remaining, _POLL_S)}
                )
            )
            for update in answer["statuses"]:
                yield update
                if update.get("status") in FINAL_STATUSES:
                    return
            after = int(answer["next"])
            if answer["final"]:
                return
