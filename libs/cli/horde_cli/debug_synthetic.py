"""`horde debug run-synthetic-jobs`: one synthetic batch against debug miners, in this process.

Reads `DEBUG_MINER_KEY`, `DEBUG_MINER_ADDRESS` (default 127.0.0.1), `DEBUG_MINER_PORT` and
`DEBUG_MINER_COUNT` (N miners on consecutive ports). Hotkeys: a comma-separated `DEBUG_MINER_KEY`
gives one per miner; a single key with N = 1 is that miner's; a single key with N > 1 means the
localnet dev miners `//horde-miner-0 .. //horde-miner-{N-1}` (the simulator fleet), see
`horde_job_runner.synthetic.debug_run`.

No scheduler and no chain: the validator key comes from the usual settings (`HOTKEY_SEED` or the
wallet), the database from `DATABASE_URL` (created and migrated if needed). A live progress display
goes to stderr; the jobs go to stdout as a table, or with `--json` as one JSON object
`{"batch_id": N, "jobs": [{job_uuid, executor_class, status, score, comment, miner_hotkey}, ...],
"miner_failures": [{miner_hotkey, address, port, kind, detail}, ...], "timings_s": {prepare, shard,
finish}}` (wall seconds of the batch's parts, see `DebugBatch.timings`). Each miner that got no job
gets one line on stderr saying why: `cannot connect`, `unauthorized` (e.g. "Unknown validator") or
`no manifest`, with the detail its system event stores.

Exit status (`EXIT_*`): 0 when the batch ran and was stored, whatever the miners did with their jobs;
1 when it could not run or be stored; 2 for a configuration error; 3 when no job ran because every
miner failed (cannot connect, unauthorized, no manifest), so that a script notices a dead setup.

stderr lines are never wrapped (`soft_wrap`): they are meant for grep and logs, not only terminals.
The generator worker processes are stopped, and waited for, before the command returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import typer

from horde_common.config import ConfigError, Settings, get_settings

if TYPE_CHECKING:
    # rich is imported once the miners are being dialled (~50 ms before the first connect else).
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from horde_common.bus.messages import MinerEndpoint
    from horde_job_runner.synthetic.debug_run import DebugBatch
    from horde_job_runner.synthetic.generation_pool import GenerationPool

__all__ = ["EXIT_ALL_MINERS_FAILED", "run_synthetic_jobs_command"]

EXIT_NOT_RUN = 1  # the batch could not run or its results could not be stored
EXIT_CONFIG = 2  # a configuration error (one line naming the setting)
EXIT_ALL_MINERS_FAILED = 3  # no job ran: every miner failed before any job (see the stderr lines)
# As `horde migrate`: long enough for a database container that is still starting.
DATABASE_WAIT_S = 30.0

_STAGE_LABELS = {
    "_db_get_previous_online_executor_count": "reading the previous batch",
    "_multi_get_miner_manifest": "connecting, authenticating, waiting for manifests",
    "_get_total_executor_count": "counting executors",
    "_generate_jobs": "generating jobs",
    "_multi_send_initial_job_request": "initial job requests, waiting for executors",
    "_report_ready": "executors ready",
    "_wait_for_release": "releasing",
    "_multi_send_job_request": "job requests sent, waiting for answers",
    "_score_jobs": "scoring",
    "_send_job_finished_receipts": "sending job-finished receipts",
    "_multi_close_client": "closing connections",
    "_db_persist": "storing results",
}


class _Progress:
    """A `ProgressListener` drawing one live line on stderr."""

    def __init__(self, live: Live | None) -> None:
        self.live = live
        self.stage_name = "starting"
        self.last: Mapping[str, int] = {}

    def stage(self, name: str, detail: str = "") -> None:
        self.stage_name = _STAGE_LABELS.get(name, name)
        self._draw()

    def counts(self, counts: Mapping[str, int]) -> None:
        self.last = dict(counts)
        self._draw()

    def _draw(self) -> None:
        if self.live is None:
            return
        c = self.last
        line = (
            f"[bold]{self.stage_name}[/]  miners {c.get('manifests', 0)}/{c.get('miners', 0)} with manifest · "
            f"jobs {c.get('jobs', 0)} · accepted {c.get('accepted', 0)} · ready {c.get('ready', 0)} · "
            f"answers {c.get('answers', 0)}/{c.get('job_requests', 0)}"
        )
        self.live.update(line)


@functools.cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _jobs_table(jobs: list[dict[str, object]], batch_id: int) -> Table:
    from rich.table import Table

    table = Table(title=f"synthetic batch {batch_id}", title_justify="left")
    for column in ("job_uuid", "class", "status", "score", "comment"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        status = str(job["status"])
        style = {"COMPLETED": "green", "EXCUSED": "yellow"}.get(status, "red")
        table.add_row(
            str(job["job_uuid"]),
            str(job["executor_class"]),
            f"[{style}]{status}[/]",
            f"{float(job['score']):.6g}",  # type: ignore[arg-type]
            str(job["comment"]),
        )
    return table


class _DatabaseUnreachable(RuntimeError):
    """The database server did not answer within `DATABASE_WAIT_S` (message: the last error)."""


def _import_modules() -> None:
    """What the command needs next: rich, logging, the Postgres driver, and the database engine."""
    import rich.live  # noqa: F401

    import horde_cli.database  # noqa: F401
    import horde_common.telemetry.logs  # noqa: F401
    from horde_job_runner.synthetic.debug_run import ENGINE_MODULES, import_modules

    import_modules(ENGINE_MODULES)


async def _run(
    settings: Settings, keypair: Any, miners: list[MinerEndpoint], pool: GenerationPool
) -> DebugBatch:
    """Connect to the miners first (`EarlyDial`), then, while they authenticate and send their
    manifests: logging, the database (created if missing: the batch migrates it), the batch's
    imports and its row. All on one loop, so the batch starts without a second loop's set-up.
    Jobs beyond a few are built in `pool` (the command's: it stops it)."""
    from horde_job_runner.synthetic.debug_dial import EarlyDial

    dial = EarlyDial(keypair, miners)
    dial.start()
    prefetch: asyncio.Future[None] | None = None
    try:
        # In a thread, so that the loop goes on with the connects and authentications meanwhile.
        await asyncio.to_thread(_import_modules)
        from rich.live import Live

        from horde_cli import database
        from horde_common.telemetry import configure_logging
        from horde_job_runner.synthetic.debug_run import (
            BATCH_MODULES,
            SmallBatchJobFactory,
            import_modules,
            run_debug_batch,
        )

        # The rest of the batch's modules while the database is checked (and created if missing).
        # (the batch's engine then checks the schema while they finish: see `debug_run._run`).
        prefetch = asyncio.ensure_future(asyncio.to_thread(import_modules, BATCH_MODULES))
        err = _err()
        err.print(
            f"validator {keypair.ss58_address} → {len(miners)} miner(s) at {miners[0].address}:"
            f"{miners[0].port}{'..' + str(miners[-1].port) if len(miners) > 1 else ''}",
            highlight=False,
        )
        configure_logging("cli", "ERROR", stream=sys.stderr)
        # A missing database counts as up (the server answered): it is created here.
        ok, why = await database.prepare_database(settings.database_url, DATABASE_WAIT_S)
        if not ok:
            raise _DatabaseUnreachable(why)
        with Live("starting…", console=err, transient=True, refresh_per_second=8) as live:
            return await run_debug_batch(
                settings,
                keypair,
                miners,
                progress=_Progress(live),
                job_factory=SmallBatchJobFactory(pool),
                early_dial=dial,
            )
    finally:
        if prefetch is not None:  # a thread cannot be cancelled: never leave it behind
            with contextlib.suppress(Exception):
                await asyncio.shield(prefetch)
        await dial.close()


def run_synthetic_jobs_command(json_output: bool) -> None:
    """The command body (registered by `horde_cli.main` as `horde debug run-synthetic-jobs`)."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        _err().print(f"[red]config error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None

    from horde_common.wallet import load_hotkey
    from horde_job_runner.synthetic.debug_run import DebugConfigError, debug_miners
    from horde_localnet import keys

    try:
        miners = debug_miners(settings, dev_miner_hotkey=lambda i: keys.miner_keypair(i).ss58_address)
        keypair = load_hotkey(settings)
    except (DebugConfigError, ConfigError) as exc:
        _err().print(f"[red]config error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None

    from horde_job_runner.synthetic.generation_pool import GenerationPool

    pool = GenerationPool()  # the command's generator workers (started only for a batch of many jobs)
    try:
        batch = asyncio.run(_run(settings, keypair, miners, pool))
    except _DatabaseUnreachable as exc:
        _err().print(f"[red]database unreachable:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_NOT_RUN) from None
    except Exception as exc:
        _err().print(f"[red]the batch could not run:[/] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(EXIT_NOT_RUN) from None
    finally:
        pool.shutdown()  # no generator worker may outlive the command

    err = _err()
    jobs = [j.as_json() for j in batch.jobs]
    if json_output:
        payload = {
            "batch_id": batch.batch_id,
            "jobs": [
                {
                    k: j[k]
                    for k in ("job_uuid", "executor_class", "status", "score", "comment", "miner_hotkey")
                }
                for j in jobs
            ],
            "miner_failures": [
                {
                    "miner_hotkey": f.hotkey,
                    "address": f.address,
                    "port": f.port,
                    "kind": f.kind,
                    "detail": f.detail,
                }
                for f in batch.miner_failures
            ],
            "timings_s": batch.timings,
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        Console().print(_jobs_table(jobs, batch.batch_id))
    result = batch.result
    if not result.persisted:
        err.print(f"[red]the batch results were not stored:[/] {result.error}", highlight=False)
        raise typer.Exit(EXIT_NOT_RUN)
    if not result.ok:
        err.print(f"[yellow]validator-side failure during the batch:[/] {result.error}", highlight=False)
    for failure in batch.miner_failures:
        err.print(failure.line(), style="red", markup=False, highlight=False)
    err.print(f"batch {batch.batch_id}: {len(jobs)} job(s) stored", highlight=False)
    if batch.every_miner_failed:
        err.print(f"[red]no job ran: all {batch.miner_count} miner(s) failed[/]", highlight=False)
        raise typer.Exit(EXIT_ALL_MINERS_FAILED)
