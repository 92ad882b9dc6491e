"""`horde crossval status`: how far LLM cross-validation is, read straight from the database
(docs/crossval.md §9.6).

The same numbers as the cross-validator's `/debug/crossval`: prompt series, workloads (answered or
not), samples by state (ready, used, waiting for trusted answers) and the newest trusted-miner job
as its events tell it. The CLI cannot import the service, so the two queries are plain SQL here,
each bounded, so a dead database is one line after at most `CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

# An operator waits at a terminal: five seconds without an answer means the database is not there.
CONNECT_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 5.0

COUNTS_SQL = """
SELECT
  (SELECT count(*) FROM prompt_series) AS series,
  (SELECT count(*) FROM solve_workloads) AS workloads,
  (SELECT count(*) FROM solve_workloads WHERE finished_at IS NULL) AS workloads_unanswered,
  count(*) FILTER (WHERE s.synthetic_job_id IS NOT NULL) AS used,
  count(*) FILTER (WHERE s.synthetic_job_id IS NULL AND s.taken_at IS NOT NULL) AS taken,
  count(*) FILTER (WHERE s.synthetic_job_id IS NULL AND s.taken_at IS NULL AND w.finished_at IS NOT NULL) AS ready,
  count(*) FILTER (WHERE s.synthetic_job_id IS NULL AND s.taken_at IS NULL AND w.finished_at IS NULL)
    AS unanswered
FROM prompt_samples AS s JOIN solve_workloads AS w ON w.id = s.workload_id
"""
# Every trusted-miner job ends in one of these events of its task (the service's view uses the same).
LAST_JOB_SQL = """
SELECT type, subtype, timestamp, left(long_description, 500) AS description
FROM system_events
WHERE type IN ('LLM_PROMPT_GENERATION', 'LLM_PROMPT_ANSWERING')
  AND subtype IN ('SUCCESS', 'FAILURE', 'LLM_PROMPT_ANSWERS_MISSING', 'ERROR_DOWNLOADING_FROM_S3')
ORDER BY timestamp DESC, id DESC LIMIT 1
"""


class CrossvalError(Exception):
    """The database could not be read; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _fetch(url: str) -> dict[str, Any]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S, command_timeout=STATEMENT_TIMEOUT_S)
    except Exception as exc:
        raise CrossvalError(f"database unreachable: {_one_line(exc)}") from None
    try:
        counts = await conn.fetchrow(COUNTS_SQL)
        last = await conn.fetchrow(LAST_JOB_SQL)
    except Exception as exc:
        raise CrossvalError(f"cannot read the prompt tables: {_one_line(exc)}") from None
    finally:
        await conn.close()
    assert counts is not None  # an aggregate always has a row
    return {
        "series": counts["series"],
        "workloads": {"total": counts["workloads"], "unanswered": counts["workloads_unanswered"]},
        "samples": {
            "used": counts["used"],
            "taken": counts["taken"],
            "ready": counts["ready"],
            "unanswered": counts["unanswered"],
        },
        "last_trusted_job": None
        if last is None
        else {
            "task": last["type"],
            "outcome": last["subtype"],
            "at": last["timestamp"].isoformat(),
            "description": last["description"],
        },
    }


def fetch_status(url: str) -> dict[str, Any]:
    """The pipeline's counts; `CrossvalError` when the database cannot be read."""
    return asyncio.run(_fetch(url))


def status_table(status: dict[str, Any]) -> Table:
    table = Table(title="LLM cross-validation", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("prompt series", str(status["series"]))
    workloads = status["workloads"]
    table.add_row("workloads", f"{workloads['total']} ({workloads['unanswered']} unanswered)")
    samples = status["samples"]
    table.add_row("samples ready", str(samples["ready"]))
    table.add_row("samples used", str(samples["used"]))
    # Reserved by a shard but not linked to a job: a batch in flight, or a shard that crashed.
    table.add_row("samples taken, not linked", str(samples["taken"]))
    table.add_row("samples unanswered", str(samples["unanswered"]))
    last = status["last_trusted_job"]
    table.add_row(
        "last trusted-miner job",
        "none yet" if last is None else f"{last['task']} {last['outcome']} at {last['at']}",
    )
    return table


def print_status(console: Console, url: str, as_json: bool) -> None:
    """`horde crossval status`; raises `CrossvalError`."""
    status = fetch_status(url)
    if as_json:
        console.out(json.dumps(status, indent=2), highlight=False)
    else:
        console.print(status_table(status))
