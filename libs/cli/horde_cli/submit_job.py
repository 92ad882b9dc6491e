"""`horde localnet submit-job`: hand one organic job to the validator through the localnet
facilitator simulator, and print its status updates as they arrive (docs/organic.md §9)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# How long to follow a job's statuses by default: the longest organic job timeout plus its wait.
DEFAULT_WAIT_S = 300.0


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
    """Submit, then stream statuses until a final one (or `wait_s`); the exit code: 0 when the job
    completed, 1 when it failed, was refused or no final status came in time."""
    import httpx

    from horde_localnet import keys
    from horde_localnet.config import DEFAULT_TOPOLOGY as topo
    from horde_localnet.facilitator.client import FacilitatorClientError, stream_statuses, submit_job

    url = f"http://{topo.host}:{topo.facilitator_port}"
    if version != "V2" and miner_hotkey is None:
        miner_hotkey = keys.miner_hotkey(0)

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
        last = None
        if wait_s > 0:
            async for update in stream_statuses(url, job_uuid, wait_s):
                last = str(update.get("status"))
                comment = (update.get("metadata") or {}).get("comment", "")
                console.print(f"  {last:<10} {comment}", highlight=False)
        return last

    try:
        final = asyncio.run(run())
    except (FacilitatorClientError, httpx.HTTPError, TimeoutError) as exc:
        err.print(f"[red]{exc or type(exc).__name__}[/]", highlight=False)
        return 1
    return 0 if final in (None, "completed") else 1
