"""`horde localnet submit-job`: hand one organic job to the validator through the localnet
facilitator simulator, and print its status updates as they arrive (docs/organic.md §9).

A V0/V1 job ends at its first final status. A V2 job may be retried on other miners, each attempt
reporting its own statuses under the job's uuid (docs/organic.md, "Running organic jobs: V2
retries"), so the command follows it until it completes, until `attempts` attempts ended, or until
no further attempt showed up within `retry_quiet_s` after a failed one (the validator sends nothing
after its last attempt, and the CLI cannot read its dynamic config).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rich.console import Console

# How long to follow a job's statuses by default: the longest organic job timeout plus its wait.
DEFAULT_WAIT_S = 300.0

DEFAULT_V2_ATTEMPTS: Final = 3
"""Attempts of a V2 job: the default of `DYNAMIC_ORGANIC_JOB_MAX_RETRIES`."""

RETRY_QUIET_S: Final = 60.0
"""After a failed V2 attempt, how long to wait for the next one's first status. The next attempt
starts at once and an answering miner accepts or declines within seconds; only one that never
answers takes the wait timeout (300 s by default), and then the CLI reports the failure it saw."""

_POLL_S: Final = 30.0
"""Longest single long-poll of the simulator: short enough to notice a dead server."""

_HTTP_MARGIN_S: Final = 10.0
"""HTTP timeout beyond the long-poll itself, for the request and answer on a loaded machine."""

_RECHECK_S: Final = 0.5
"""Pause between two reads once the job holds a final status: the simulator's long poll then
answers at once, so waiting for a retry's statuses is a bounded poll."""

FINAL_STATUSES: Final = frozenset({"rejected", "failed", "completed"})


async def follow_statuses(
    url: str,
    job_uuid: str,
    *,
    version: str,
    wait_s: float,
    on_update: Callable[[dict[str, Any], int], None],
    attempts: int = DEFAULT_V2_ATTEMPTS,
    retry_quiet_s: float = RETRY_QUIET_S,
) -> tuple[str, bool]:
    """Call `on_update(update, attempt)` for each status update in arrival order until the job's
    end; returns its last final status and whether that end was inferred from silence (no further
    V2 attempt within `retry_quiet_s`). Raises TimeoutError when no final status came in `wait_s`."""
    import httpx

    from horde_localnet.facilitator.client import FacilitatorClientError

    deadline = time.monotonic() + wait_s
    after, finals = 0, 0
    last_final: str | None = None
    quiet_until: float | None = None  # set while a V2 job may or may not be retried
    async with httpx.AsyncClient(base_url=url, timeout=_POLL_S + _HTTP_MARGIN_S) as http:
        while True:
            limit = deadline if quiet_until is None else min(deadline, quiet_until)
            remaining = limit - time.monotonic()
            if remaining <= 0:
                if last_final is not None:
                    return last_final, True
                raise TimeoutError(f"job {job_uuid}: no final status within {wait_s:g}s")
            response = await http.get(
                f"/jobs/{job_uuid}/statuses", params={"after": after, "timeout": min(remaining, _POLL_S)}
            )
            if response.status_code >= 400:
                raise FacilitatorClientError(f"HTTP {response.status_code}: {response.text}")
            answer = response.json()
            new: list[dict[str, Any]] = answer["statuses"]
            for update in new:
                on_update(update, finals + 1)
                status = str(update.get("status"))
                if status == "completed":
                    return status, False
                if status in FINAL_STATUSES:
                    finals, last_final = finals + 1, status
                    if version != "V2" or finals >= attempts:
                        return status, False
                    quiet_until = time.monotonic() + retry_quiet_s
                else:
                    quiet_until = None  # a next attempt is under way
            after = int(answer["next"])
            if not new and answer["final"]:
                await asyncio.sleep(min(_RECHECK_S, remaining))


def submit_job_command(
    console: Console,
    err: Console,
    *,
    version: str,
    executor_class: str,
    miner_hotkey: str | None,
    docker_image: str | None,
    args: list[str] | None,
    wait_s: float,
) -> int:
    """Submit, then stream statuses until the job's end (or `wait_s`); the exit code: 0 when the job
    completed, 1 when it failed, was refused or no final status came in time."""
    import httpx

    from horde_localnet import keys
    from horde_localnet.config import DEFAULT_TOPOLOGY as topo
    from horde_localnet.facilitator.client import FacilitatorClientError, submit_job

    url = f"http://{topo.host}:{topo.facilitator_port}"
    if version != "V2" and miner_hotkey is None:
        miner_hotkey = keys.miner_hotkey(0)

    def show(update: dict[str, Any], attempt: int) -> None:
        status = str(update.get("status"))
        comment = (update.get("metadata") or {}).get("comment", "")
        prefix = f"attempt {attempt}  " if version == "V2" else ""
        console.print(f"  {prefix}{status:<10} {comment}", highlight=False)

    async def run() -> str | None:
        job_uuid = await submit_job(
            url,
            version=version,
            executor_class=executor_class,
            miner_hotkey=miner_hotkey,
            docker_image=docker_image,
            args=args,
        )
        console.print(f"job [bold]{job_uuid}[/] submitted ({version}, {executor_class})")
        if wait_s <= 0:
            return None
        final, inferred = await follow_statuses(url, job_uuid, version=version, wait_s=wait_s, on_update=show)
        if inferred:
            console.print(f"  no further attempt within {RETRY_QUIET_S:g}s: the job ended {final}")
        return final

    try:
        final = asyncio.run(run())
    except (FacilitatorClientError, httpx.HTTPError, TimeoutError) as exc:
        err.print(f"[red]{exc or type(exc).__name__}[/]", highlight=False)
        return 1
    return 0 if final in (None, "completed") else 1
