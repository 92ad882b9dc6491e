"""`horde batches`: the synthetic job batches, read straight from the database (docs/operations.md §3.2).

The list is one bounded query (the newest `--limit` rows, each with its job counts); `show` reads one
batch like the scheduler's `/debug/batches/<key>` and prints the same JSON with `--json`. The CLI
cannot import the scheduler (not one of its dependencies), so the few queries are repeated here in
plain SQL through asyncpg: no SQLAlchemy for a one-shot read. Every connection and statement is
bounded, so a dead database is one clear line after at most `CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

# An operator waits at a terminal: five seconds without an answer means the database is not there.
CONNECT_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_MS = 5_000
# The scheduler view's bounds (services/scheduler/horde_scheduler/batch_views.py), for the same answer.
MAX_CHECKPOINT_STAGES = 200
MAX_STATUSES = 20
MAX_EXCUSED_MINERS = 1024
CLOCK_SKEW_MARGIN = timedelta(minutes=10)
MAX_BATCH_ID = 2**63 - 1

T = TypeVar("T")
STATE_STYLES = {"planned": "cyan", "running": "yellow", "completed": "green", "missed": "red"}

_BATCH_COLUMNS = """
    b.id, b.batch_uuid, b.block, b.cycle_id, c.start AS cycle_start, c.stop AS cycle_stop,
    b.created_at, b.started_at, b.accepting_results_until, b.completed_at, b.scored_at,
    b.is_missed, b.scored, b.shard_count
"""
LIST_SQL = f"""
SELECT {_BATCH_COLUMNS}, j.ok, j.excused, j.failed, j.pending, j.excluded, j.miners
FROM (SELECT * FROM synthetic_job_batches ORDER BY id DESC LIMIT $1) AS b
LEFT JOIN cycles AS c ON c.id = b.cycle_id
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'COMPLETED') AS ok,
           count(*) FILTER (WHERE status = 'EXCUSED') AS excused,
           count(*) FILTER (WHERE status = 'FAILED') AS failed,
           count(*) FILTER (WHERE status NOT IN ('COMPLETED', 'EXCUSED', 'FAILED')) AS pending,
           count(*) FILTER (WHERE excluded_from_scoring) AS excluded,
           count(DISTINCT miner_hotkey) AS miners
    FROM synthetic_jobs WHERE batch_id = b.id
) AS j
ORDER BY b.id DESC
"""
ONE_SQL = f"""
SELECT {_BATCH_COLUMNS}
FROM synthetic_job_batches AS b LEFT JOIN cycles AS c ON c.id = b.cycle_id
WHERE {{column}} = $1 LIMIT 1
"""
STATUS_SQL = f"""
SELECT status, count(*) AS n, count(*) FILTER (WHERE excluded_from_scoring) AS excluded
FROM synthetic_jobs WHERE batch_id = $1 GROUP BY status ORDER BY status LIMIT {MAX_STATUSES}
"""
MINERS_SQL = "SELECT count(DISTINCT miner_hotkey) FROM synthetic_jobs WHERE batch_id = $1"
# Declines excused by our own organic jobs, per miner (docs/synthetic-batch.md §9).
EXCUSED_SQL = f"""
SELECT miner_hotkey, count(*) AS n FROM synthetic_jobs WHERE batch_id = $1 AND status = 'EXCUSED'
GROUP BY miner_hotkey ORDER BY miner_hotkey LIMIT {MAX_EXCUSED_MINERS}
"""
# The job-runner tags every CHECKPOINT event with the batch's uuid (docs/synthetic-batch.md §1).
CHECKPOINTS_SQL = f"""
SELECT coalesce(data->>'stage', long_description) AS stage,
       min(timestamp) AS first_at, max(timestamp) AS last_at, count(*) AS shards
FROM system_events
WHERE type = 'VALIDATOR_TELEMETRY' AND subtype = 'CHECKPOINT'
  AND data->>'batch_uuid' = $1 AND ($2::timestamptz IS NULL OR timestamp >= $2)
GROUP BY 1 ORDER BY min(timestamp), 1 LIMIT {MAX_CHECKPOINT_STAGES}
"""


class BatchesError(Exception):
    """The database could not be read (unreachable, not migrated, too slow); the message is one line."""


class BadKeyError(ValueError):
    """`horde batches show` got something that is neither a batch id nor a uuid."""


def parse_key(key: str) -> int | uuid.UUID:
    """A batch's numeric id or its uuid (the rule of `/debug/batches/<key>`)."""
    key = key.strip()
    if key.isdigit():
        if 0 < int(key) <= MAX_BATCH_ID:
            return int(key)
        raise BadKeyError(f"batch id out of range: {key!r}")
    try:
        return uuid.UUID(key)
    except ValueError:
        raise BadKeyError(f"not a batch id or uuid: {key!r}") from None


def state_of(row: Mapping[str, Any]) -> str:
    """planned / running / completed / missed, by the scheduler view's rule (missed wins)."""
    if row["is_missed"]:
        return "missed"
    if row["completed_at"] is not None:
        return "completed"
    if row["started_at"] is not None:
        return "running"
    return "planned"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _cycle(row: Mapping[str, Any]) -> dict[str, Any] | None:
    if row["cycle_id"] is None:
        return None
    return {"id": row["cycle_id"], "start": row["cycle_start"], "stop": row["cycle_stop"]}


def list_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One line of `horde batches --json`."""
    return {
        "id": row["id"],
        "uuid": str(row["batch_uuid"]),
        "block": row["block"],
        "state": state_of(row),
        "cycle": _cycle(row),
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "completed_at": _iso(row["completed_at"]),
        "shard_count": row["shard_count"],
        "jobs": {
            "ok": row["ok"],
            "excused": row["excused"],
            "failed": row["failed"],
            "pending": row["pending"],
            "excluded_from_scoring": row["excluded"],
        },
        "miners": row["miners"],
    }


def detail(
    row: Mapping[str, Any],
    statuses: Sequence[Mapping[str, Any]],
    miners: int,
    checkpoints: Sequence[Any],
    excused: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """`horde batches show --json`: the same document as the scheduler's `/debug/batches/<key>`."""
    by_status = {str(s["status"]): int(s["n"]) for s in statuses}
    return {
        "id": row["id"],
        "uuid": str(row["batch_uuid"]),
        "block": row["block"],
        "state": state_of(row),
        "cycle": _cycle(row),
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "accepting_results_until": _iso(row["accepting_results_until"]),
        "completed_at": _iso(row["completed_at"]),
        "scored_at": _iso(row["scored_at"]),
        "is_missed": row["is_missed"],
        "scored": row["scored"],
        "shard_count": row["shard_count"],
        "jobs": {
            "total": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())),
            "excluded_from_scoring": sum(int(s["excluded"]) for s in statuses),
            "excused": by_status.get("EXCUSED", 0),
            "excused_by_miner": {str(e["miner_hotkey"]): int(e["n"]) for e in excused},
        },
        "miners": miners,
        "checkpoints": [
            {
                "stage": c["stage"],
                "first_at": _iso(c["first_at"]),
                "last_at": _iso(c["last_at"]),
                "shards": c["shards"],
            }
            for c in checkpoints
        ],
    }


# --- database --------------------------------------------------------------------------------------


async def _connect(url: str) -> asyncpg.Connection:
    # asyncpg wants `postgresql://`; the settings' URL is SQLAlchemy's `postgresql+asyncpg://`.
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    try:
        return await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=STATEMENT_TIMEOUT_MS / 1000,
            server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS)},
        )
    except Exception as exc:
        raise BatchesError(f"database unreachable: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _read(url: str, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `query(conn)` on a fresh connection; any failure becomes one `BatchesError` line."""
    conn = await _connect(url)
    try:
        return await query(conn)
    except asyncpg.UndefinedTableError as exc:
        raise BatchesError(f"database not migrated ({_one_line(exc)}): run `horde migrate`") from None
    except Exception as exc:
        raise BatchesError(f"reading batches failed: {_one_line(exc)}") from None
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT_S)


def fetch_list(url: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` batches (newest first), as `list_entry` documents."""

    async def query(conn: asyncpg.Connection) -> list[dict[str, Any]]:
        return [list_entry(r) for r in await conn.fetch(LIST_SQL, limit)]

    return asyncio.run(_read(url, query))


def fetch_one(url: str, key: int | uuid.UUID) -> dict[str, Any] | None:
    """One batch by id or uuid, as a `detail` document; None when there is no such batch."""

    async def query(conn: asyncpg.Connection) -> dict[str, Any] | None:
        column = "b.id" if isinstance(key, int) else "b.batch_uuid"
        row = await conn.fetchrow(ONE_SQL.format(column=column), key)
        if row is None:
            return None
        statuses = await conn.fetch(STATUS_SQL, row["id"])
        miners = await conn.fetchval(MINERS_SQL, row["id"])
        since = row["created_at"] - CLOCK_SKEW_MARGIN if row["created_at"] is not None else None
        checkpoints = await conn.fetch(CHECKPOINTS_SQL, str(row["batch_uuid"]), since)
        excused = await conn.fetch(EXCUSED_SQL, row["id"])
        return detail(row, statuses, int(miners), checkpoints, excused)

    return asyncio.run(_read(url, query))


# --- rendering -------------------------------------------------------------------------------------


def _when(value: str | None, with_date: bool = False) -> str:
    if value is None:
        return "[dim]—[/]"
    moment = datetime.fromisoformat(value)
    return moment.strftime("%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def _state(state: str) -> str:
    return f"[{STATE_STYLES.get(state, 'white')}]{state}[/]"


def _cycle_text(cycle: dict[str, Any] | None) -> str:
    return "[dim]—[/]" if cycle is None else f"{cycle['start']}–{cycle['stop']}"


def batches_table(entries: Sequence[dict[str, Any]], limit: int) -> Table:
    """The list as a table, newest first; times in UTC (the database's), jobs as
    ok/excused/failed/excluded."""
    title = f"synthetic batches: newest {len(entries)}" + (
        f" (--limit {limit})" if len(entries) == limit else ""
    )
    table = Table(title=title, title_justify="left", caption="times UTC", caption_justify="left")
    numbers = ("id", "block", "shards", "jobs ok/excused/failed/excl", "miners")
    for name in ("id", "block", "cycle", "created", "started", "completed", "state", *numbers[2:]):
        table.add_column(
            name, justify="right" if name in numbers else "left", style="bold" if name == "id" else None
        )
    for e in entries:
        jobs = e["jobs"]
        table.add_row(
            str(e["id"]),
            "[dim]—[/]" if e["block"] is None else str(e["block"]),
            _cycle_text(e["cycle"]),
            _when(e["created_at"], with_date=True),
            _when(e["started_at"]),
            _when(e["completed_at"]),
            _state(e["state"]),
            str(e["shard_count"]),
            f"[green]{jobs['ok']}[/]/[cyan]{jobs['excused']}[/]/[red]{jobs['failed']}[/]"
            f"/[dim]{jobs['excluded_from_scoring']}[/]",
            str(e["miners"]),
        )
    return table


def batch_renderable(doc: dict[str, Any]) -> Group:
    """`horde batches show`: the batch's fields, then its jobs and the stages it went through."""
    fields = Table(title=f"batch {doc['id']}  {doc['uuid']}", title_justify="left", show_header=False)
    fields.add_column(style="bold")
    fields.add_column()
    jobs = doc["jobs"]
    by_status = ", ".join(f"{k} {v}" for k, v in jobs["by_status"].items()) or "none"
    for name, value in (
        ("state", _state(doc["state"])),
        ("block", "—" if doc["block"] is None else str(doc["block"])),
        ("cycle", _cycle_text(doc["cycle"])),
        ("created", doc["created_at"] or "—"),
        ("started", doc["started_at"] or "—"),
        ("accepting results until", doc["accepting_results_until"] or "—"),
        ("completed", doc["completed_at"] or "—"),
        ("scored", f"yes, {doc['scored_at']}" if doc["scored"] else "no"),
        ("shards", str(doc["shard_count"])),
        ("jobs", f"{jobs['total']} ({by_status})"),
        ("excluded from scoring", str(jobs["excluded_from_scoring"])),
        ("excused", _excused_text(jobs)),
        ("miners", str(doc["miners"])),
    ):
        fields.add_row(name, value)
    stages = Table(title="checkpoints", title_justify="left")
    for name in ("stage", "first", "last", "shards"):
        stages.add_column(name, justify="right" if name == "shards" else "left")
    for c in doc["checkpoints"]:
        stages.add_row(c["stage"], _when(c["first_at"]), _when(c["last_at"]), str(c["shards"]))
    if not doc["checkpoints"]:
        stages.add_row("[dim]none recorded[/]", "", "", "")
    return Group(fields, stages)


def _excused_text(jobs: Mapping[str, Any]) -> str:
    """The excused declines, with the miners they belong to: `3 (5F…: 2, 5G…: 1)`."""
    per_miner = ", ".join(f"{escape(hk)}: {n}" for hk, n in jobs["excused_by_miner"].items())
    return f"{jobs['excused']} ({per_miner})" if per_miner else str(jobs["excused"])


def print_error(err: Console, message: str) -> None:
    """One red line on stderr: the message is not markup, and is never wrapped."""
    err.print(f"[red]{escape(message)}[/]", highlight=False, soft_wrap=True)


def print_list(console: Console, url: str, limit: int, as_json: bool) -> None:
    """`horde batches`: raises `BatchesError` when the database cannot be read."""
    entries = fetch_list(url, limit)
    if as_json:
        console.out(json.dumps(entries, indent=2), highlight=False)
    elif not entries:
        console.print("no synthetic batches yet")
    else:
        console.print(batches_table(entries, limit))


def print_one(console: Console, url: str, key: str, as_json: bool) -> bool:
    """`horde batches show <key>`: False when there is no such batch; `BadKeyError`, `BatchesError`."""
    doc = fetch_one(url, parse_key(key))
    if doc is None:
        return False
    if as_json:
        console.out(json.dumps(doc, indent=2), highlight=False)
    else:
        console.print(batch_renderable(doc))
    return True
