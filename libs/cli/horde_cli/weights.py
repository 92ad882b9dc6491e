"""`horde weights` and `horde debug set-scores`: the validator's weights, read and written by hand.

`horde weights` lists the newest rows of the `weights` table (one per write that reached, or was
about to reach, the chain; `docs/scoring.md` §2) in plain SQL through asyncpg, bounded like
`horde batches` (`docs/operations.md` §3).

`horde debug set-scores` runs the weights service's own code in this process (`horde-weights` is a
dependency of the CLI; the import contracts only keep services apart): `horde_weights.dry_run`
previews the eligible batch's payload, and without `--dry-run` `run_weights_once` then performs one
run exactly as the service's loop does (advisory lock, `pending` row, retries, batch marked scored
only after the chain took the write). A preview never writes; a real run needs the hotkey.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from horde_cli.batches import CONNECT_TIMEOUT_S, BatchesError, _connect, _one_line

if TYPE_CHECKING:
    from horde_common.config import Settings
    from horde_weights.dry_run import WeightsPreview
    from horde_weights.weights_run import RunOutcome

# Exit statuses of `horde debug set-scores`.
EXIT_OK: Final = 0  # previewed (dry run) or written
EXIT_FAILED: Final = 1  # database or chain unreachable, or the write was given up
EXIT_CONFIG: Final = 2  # a configuration error (one line naming the setting)
EXIT_NOTHING: Final = 3  # nothing to write now (no eligible batch, no snapshot, locked, out of window...)

STATUS_STYLES: Final = {
    "pending": "yellow",
    "set": "green",
    "committed": "cyan",
    "revealed": "green",
    "failed": "red",
}
# Run outcomes (`RunStatus` values) that mean the chain or the write failed, rather than "nothing to do".
FAILED_OUTCOMES: Final = frozenset({"no_chain", "gave_up"})
WRITTEN_OUTCOME: Final = "written"

LIST_SQL = """
SELECT id, batch_id, mode, block, status, jsonb_array_length(uids) AS uid_count, version_key,
       commit_hash, chain_message, created_at, set_at, revealed_at
FROM weights ORDER BY id DESC LIMIT $1
"""


# --- horde weights ---------------------------------------------------------------------------------


def reveal_state(row: Mapping[str, Any]) -> str | None:
    """committed / revealed / failed for a salted commit (`docs/scoring.md` §2.5); None for a direct
    set, which has no reveal of ours (the chain reveals the SDK's timelocked commits itself)."""
    if row["mode"] != "commit":
        return None
    if row["status"] == "failed" and row["set_at"] is not None:
        return "failed"  # committed, then the reveal was given up
    if row["status"] == "failed":
        return "not committed"
    return str(row["status"])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def list_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One element of `horde weights --json`; `updated_at` is the latest of its three timestamps."""
    stamps = [t for t in (row["created_at"], row["set_at"], row["revealed_at"]) if t is not None]
    return {
        "id": row["id"],
        "batch_id": row["batch_id"],
        "mode": row["mode"],
        "block": row["block"],
        "status": row["status"],
        "reveal": reveal_state(row),
        "uids": row["uid_count"],
        "version_key": row["version_key"],
        "commit_hash": row["commit_hash"],
        "chain_message": row["chain_message"],
        "created_at": _iso(row["created_at"]),
        "set_at": _iso(row["set_at"]),
        "revealed_at": _iso(row["revealed_at"]),
        "updated_at": _iso(max(stamps)) if stamps else None,
    }


async def _fetch_list(url: str, limit: int) -> list[dict[str, Any]]:
    conn = await _connect(url)
    try:
        return [list_entry(r) for r in await conn.fetch(LIST_SQL, limit)]
    except asyncpg.UndefinedTableError as exc:
        raise BatchesError(f"database not migrated ({_one_line(exc)}): run `horde migrate`") from None
    except Exception as exc:
        raise BatchesError(f"reading weights failed: {_one_line(exc)}") from None
    finally:
        await conn.close(timeout=CONNECT_TIMEOUT_S)


def fetch_list(url: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` weights rows, newest first; `BatchesError` (one line) when unreadable."""
    return asyncio.run(_fetch_list(url, limit))


def _styled(status: str | None) -> str:
    if status is None:
        return "[dim]—[/]"
    return f"[{STATUS_STYLES.get(status, 'white')}]{escape(status)}[/]"


def _when(value: str | None) -> str:
    return "[dim]—[/]" if value is None else datetime.fromisoformat(value).strftime("%m-%d %H:%M:%S")


def weights_table(entries: Sequence[dict[str, Any]], limit: int) -> Table:
    """The rows as a table, newest first; times in UTC (the database's)."""
    title = f"weights writes: newest {len(entries)}" + (
        f" (--limit {limit})" if len(entries) == limit else ""
    )
    table = Table(title=title, title_justify="left", caption="times UTC", caption_justify="left")
    for name in ("id", "batch", "mode", "block", "uids", "status", "reveal", "created", "updated"):
        numeric = name in ("id", "batch", "block", "uids")
        table.add_column(name, justify="right" if numeric else "left", style="bold" if name == "id" else None)
    for e in entries:
        table.add_row(
            str(e["id"]),
            "[dim]—[/]" if e["batch_id"] is None else str(e["batch_id"]),
            e["mode"],
            str(e["block"]),
            str(e["uids"]),
            _styled(e["status"]),
            _styled(e["reveal"]),
            _when(e["created_at"]),
            _when(e["updated_at"]),
        )
    return table


def print_list(console: Console, url: str, limit: int, as_json: bool) -> None:
    """`horde weights`: raises `BatchesError` when the database cannot be read."""
    entries = fetch_list(url, limit)
    if as_json:
        console.out(json.dumps(entries, indent=2), highlight=False)
    elif not entries:
        console.print("no weights written yet")
    else:
        console.print(weights_table(entries, limit))


# --- horde debug set-scores ------------------------------------------------------------------------


async def _set_scores(
    settings: Settings, keypair: Any, dry_run: bool, show: Callable[[WeightsPreview], None]
) -> tuple[WeightsPreview, RunOutcome | None]:
    """Preview (`show` it at once: a real run may retry for minutes), then unless `dry_run` one real
    run, with the service's clients and production `RunParams`."""
    from horde_common.chain import make_chain
    from horde_common.db import create_engine, session_factory
    from horde_common.telemetry import configure_logging
    from horde_weights.dry_run import preview_weights
    from horde_weights.runtime import CHAIN_TIMEOUT_S
    from horde_weights.service_settings import weights_mode
    from horde_weights.weights_run import WeightsRun, run_weights_once

    # The service's logs (retries, dropped batches) go to stderr: stdout is the table or the JSON.
    configure_logging("cli", "WARNING", stream=sys.stderr)
    engine = create_engine(settings.database_url)
    chain = make_chain(settings, timeout=CHAIN_TIMEOUT_S)
    try:
        run = WeightsRun(
            sessions=session_factory(engine),
            chain=chain,
            keypair=keypair,
            netuid=settings.BITTENSOR_NETUID,
            mode=weights_mode(settings),
        )
        preview = await preview_weights(run)
        show(preview)
        outcome = None if dry_run else await run_weights_once(run)
        return preview, outcome
    finally:
        close = getattr(chain, "aclose", None)
        if close is not None:
            await close()
        await engine.dispose()


async def _check_database(url: str) -> None:
    conn = await _connect(url)  # BatchesError("database unreachable: ...") after CONNECT_TIMEOUT_S
    await conn.close(timeout=CONNECT_TIMEOUT_S)


def _score(value: float | None) -> str:
    return "[dim]—[/]" if value is None else f"{value:.6g}"


def preview_table(preview: WeightsPreview) -> Table:
    """uid, hotkey, score, weight and u16 value of every uid in the payload, then their sums."""
    title = f"batch {preview.batch_id} at block {preview.head}, mode {preview.mode}: {len(preview.rows)} uids"
    table = Table(title=title, title_justify="left", show_footer=True)
    table.add_column("uid", justify="right", footer="sum")
    table.add_column("hotkey")
    table.add_column("score", justify="right")
    table.add_column("weight", justify="right", footer=f"{preview.weight_sum:.6f}")
    table.add_column("u16", justify="right", footer=str(preview.value_sum))
    for r in preview.rows:
        table.add_row(str(r.uid), escape(r.hotkey), _score(r.score), f"{r.weight:.6f}", str(r.value))
    return table


def _preview_line(preview: WeightsPreview) -> str:
    """One line on what the preview found besides the table (or instead of it)."""
    parts = [f"preview: {preview.status}"]
    if preview.head is not None:
        parts.append(f"head {preview.head}")
    if preview.batch_id is not None:
        parts.append(f"batch {preview.batch_id}")
    if preview.dropped:
        parts.append(f"older eligible batches dropped by a run: {list(preview.dropped)}")
    if preview.existing:
        parts.append(f"earlier writes of this batch: {', '.join(preview.existing)}")
    if preview.in_commit_window is False:
        parts.append("outside the commit window (a run now writes nothing)")
    if preview.detail:
        parts.append(preview.detail)
    return "; ".join(parts)


def _outcome_json(outcome: RunOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "status": str(outcome.status),
        "batch_id": outcome.batch_id,
        "weights_id": outcome.weights_id,
        "detail": outcome.detail,
    }


def exit_status(preview: WeightsPreview, outcome: RunOutcome | None) -> int:
    """`EXIT_*` for the command: the run's outcome decides, or the preview's for a dry run."""
    from horde_weights.dry_run import PLANNED

    status = str(outcome.status) if outcome is not None else preview.status
    if status in (PLANNED, WRITTEN_OUTCOME):
        return EXIT_OK
    return EXIT_FAILED if status in FAILED_OUTCOMES else EXIT_NOTHING


def set_scores_command(
    console: Console, err: Console, settings: Settings, *, dry_run: bool, as_json: bool
) -> int:
    """The command body; returns its exit status (`EXIT_*`). A real run loads the hotkey first, so a
    missing wallet is a configuration error before any I/O."""
    from horde_common.config import ConfigError

    keypair = None
    if not dry_run:
        from horde_common.wallet import load_hotkey

        try:
            keypair = load_hotkey(settings)
        except ConfigError as exc:
            err.print(f"[red]config error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            return EXIT_CONFIG

    def show(preview: WeightsPreview) -> None:
        if as_json:
            return
        if preview.rows:
            console.print(preview_table(preview))
        err.print(escape(_preview_line(preview)), highlight=False, soft_wrap=True)

    try:
        asyncio.run(_check_database(settings.database_url))
        preview, outcome = asyncio.run(_set_scores(settings, keypair, dry_run, show))
    except BatchesError as exc:
        err.print(f"[red]{escape(str(exc))}[/]", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    except ConfigError as exc:
        err.print(f"[red]config error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_CONFIG
    except Exception as exc:
        err.print(f"[red]set-scores failed:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    if as_json:
        doc = {"dry_run": dry_run, **preview.as_json(), "run": _outcome_json(outcome)}
        console.out(json.dumps(doc, indent=2), highlight=False)
    elif outcome is not None:
        style = "green" if str(outcome.status) == WRITTEN_OUTCOME else "yellow"
        style = "red" if str(outcome.status) in FAILED_OUTCOMES else style
        line = f"run: {outcome.status}, batch {outcome.batch_id}, weights row {outcome.weights_id}"
        detail = f"; {outcome.detail}" if outcome.detail else ""
        err.print(f"[{style}]{escape(line + detail)}[/]", highlight=False, soft_wrap=True)
    else:
        err.print("dry run: nothing written", highlight=False)
    return exit_status(preview, outcome)
