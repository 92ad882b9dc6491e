"""`horde debug run-organic-job`: one organic job on one miner, in this process (docs/organic.md,
"Running organic jobs: from the command line"; docs/operations.md §3.5).

No bus and no facilitator: the command picks the miner (`--miner-hotkey`, else the first serving
miner of the newest metagraph snapshot, in uid order, other than this validator), writes the
`organic_jobs` row (source `cli`, a V0-shaped request naming that miner) and runs it with the
job-runner's own organic code (`horde_job_runner.organic.handler.run_organic_job`), which prints
each status through `OrganicRuntime.on_status` as it is committed.

Exit status: 0 the job completed; 1 it did not (rejected, failed, timed out), or it could not run
(database unreachable or not migrated, no snapshot, unknown miner); 2 a configuration error.

This module is imported by `horde_cli.main` to register the command, so at import time it loads
typer only: everything else is imported inside the command.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

if TYPE_CHECKING:
    import uuid

    from rich.console import Console
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from horde_common.bus.messages import OrganicJobRequested
    from horde_common.config import Settings
    from horde_job_runner.organic.handler import StatusNote
    from horde_job_runner.organic.run import OrganicTimeouts
    from horde_job_runner.organic.store import Axon

__all__ = [
    "EXIT_CONFIG",
    "EXIT_NOT_COMPLETED",
    "JobOptions",
    "debug_run_organic_job",
    "run_organic_job_command",
]

EXIT_NOT_COMPLETED: Final = 1  # the job ended otherwise than COMPLETED, or could not run
EXIT_CONFIG: Final = 2  # a configuration error (one line naming what is wrong)

DEFAULT_EXECUTOR_CLASS: Final = "spin_up-4min.gpu-24gb"
"""The original command's default (`horde_common.db.models.enums.DEFAULT_EXECUTOR_CLASS`; not
imported from there: that module's package loads SQLAlchemy, which `horde --help` must not)."""

DEFAULT_IMAGE: Final = "python:3.11-slim"
"""The image of the protocol's own examples (docs/organic.md §1.4; the localnet facilitator's default too): any
non-empty image will do for a miner that is only being tried out."""

DATABASE_TIMEOUT_S: Final = 5.0
"""As `horde batches`: an operator at a terminal; five seconds without an answer means no database."""

JOB_DESCRIPTION: Final = "Validator Job from Admin Panel"
"""`organic_jobs.job_description` of admin and CLI jobs, as the original wrote it (docs/organic.md)."""


def debug_run_organic_job(
    args: Annotated[list[str] | None, typer.Argument(help="container arguments (after --)")] = None,
    miner_hotkey: Annotated[
        str | None, typer.Option(help="default: the first serving miner of the newest snapshot")
    ] = None,
    image: Annotated[str, typer.Option(help="docker image")] = DEFAULT_IMAGE,
    raw_script: Annotated[str | None, typer.Option(help="python script the executor runs")] = None,
    timeout: Annotated[
        int | None, typer.Option(min=1, help="seconds (default: DYNAMIC_ORGANIC_JOB_TIMEOUT)")
    ] = None,
    executor_class: Annotated[str, typer.Option()] = DEFAULT_EXECUTOR_CLASS,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="docker run preset nvidia_all")] = False,
) -> None:
    """Run one organic job on a miner in this process (no bus) and print its statuses."""
    job = JobOptions(list(args or []), miner_hotkey, image, raw_script, timeout, executor_class, use_gpu)
    code = run_organic_job_command(job)
    if code:
        raise typer.Exit(code)


@dataclass(frozen=True)
class JobOptions:
    """The command line, as given."""

    args: list[str]
    miner_hotkey: str | None
    image: str
    raw_script: str | None
    timeout: int | None
    executor_class: str
    use_gpu: bool


class _NotRun(Exception):
    """The job cannot run (exit 1); the message is the one stderr line."""


@functools.cache
def _out() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False)


@functools.cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def run_organic_job_command(job: JobOptions) -> int:
    """The command body; returns the exit status."""
    import asyncio

    from rich.markup import escape

    from horde_common.config import ConfigError, get_settings
    from horde_common.protocol.miner.executor_class import ExecutorClass
    from horde_common.wallet import load_hotkey

    try:
        if job.executor_class not in set(ExecutorClass):
            raise ConfigError(f"unknown executor class {job.executor_class!r}")
        settings = get_settings()
        keypair = load_hotkey(settings)
    except ConfigError as exc:
        _err().print(f"[red]config error:[/] {escape(str(exc))}")
        return EXIT_CONFIG
    try:
        status = asyncio.run(_run(settings, keypair, job))
    except _NotRun as exc:
        _err().print(f"[red]{escape(str(exc))}[/]")
        return EXIT_NOT_COMPLETED
    except Exception as exc:  # e.g. the database went away mid-job: one line, not a traceback
        _err().print(f"[red]the job could not run:[/] {type(exc).__name__}: {escape(str(exc))}")
        return EXIT_NOT_COMPLETED
    return 0 if status == "COMPLETED" else EXIT_NOT_COMPLETED


async def _run(settings: Settings, keypair: Any, job: JobOptions) -> str:
    """Pick, store and run the job; returns the row's final status."""
    import sys

    from horde_common.db import create_engine, session_factory
    from horde_common.telemetry import configure_logging
    from horde_job_runner.organic.handler import OrganicRuntime, run_organic_job

    # The job-runner code logs (JSON lines); only its errors, and on stderr: stdout is the statuses.
    configure_logging("cli", "ERROR", stream=sys.stderr)
    engine = create_engine(settings.database_url, pool_size=2)
    try:
        sessions = session_factory(engine)
        axon, timeouts, msg = await _prepare(sessions, settings.database_url, keypair.ss58_address, job)
        out = _out()
        out.print(f"picked miner {axon.hotkey} at {axon.address}:{axon.port}")
        out.print(
            f"job {msg.job_uuid}: {job.executor_class}, image {job.image}, timeout {timeouts.total_s:g} s"
        )
        runtime = OrganicRuntime(
            sessions=sessions,
            keypair=keypair,
            timeouts=timeouts,
            on_status=_print_status,
            publish_statuses=False,  # the facilitator never sent this job: nothing goes to it
        )
        await run_organic_job(runtime, msg)
        final = await _final_status(sessions, msg.job_uuid)
        style = "green" if final == "COMPLETED" else "red"
        out.print(f"job {msg.job_uuid} done: [{style}]{final}[/]")
        return final
    finally:
        await engine.dispose()


async def _prepare(
    sessions: async_sessionmaker[AsyncSession], database_url: str, own_hotkey: str, job: JobOptions
) -> tuple[Axon, OrganicTimeouts, OrganicJobRequested]:
    """The miner's axon, the timeouts and the job's bus message, once its PENDING row is stored.
    Raises `_NotRun` (database unreachable or not migrated, no snapshot, no or unknown miner)."""
    import asyncio
    import uuid

    from horde_common.bus.messages import OrganicJobRequested
    from horde_common.db.models.enums import JobStatus, OrganicJobSource
    from horde_common.db.models.organic import OrganicJob
    from horde_common.dynamic_config import DynamicConfig
    from horde_job_runner.organic.run import OrganicTimeouts

    axon = await _pick_miner(database_url, job.miner_hotkey, own_hotkey)
    job_uuid = uuid.uuid4()
    request = _request(job, job_uuid, axon.hotkey)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_S), sessions.begin() as session:
            config = await DynamicConfig.load(session)
            session.add(
                OrganicJob(
                    job_uuid=job_uuid,
                    source=str(OrganicJobSource.CLI),
                    miner_hotkey=axon.hotkey,
                    executor_class=job.executor_class,
                    status=str(JobStatus.PENDING),
                    job_description=JOB_DESCRIPTION,
                    request=request,
                )
            )
    except Exception as exc:  # the database answered the pick a moment ago: one line, not a traceback
        raise _NotRun(f"the job could not be stored: {type(exc).__name__}: {exc}") from None
    total = float(job.timeout or config.organic_job_timeout_s)
    timeouts = OrganicTimeouts(total, float(config.organic_job_wait_timeout_s))
    msg = OrganicJobRequested(
        job_uuid=job_uuid, miner_hotkey=axon.hotkey, executor_class=job.executor_class, request=request
    )
    return axon, timeouts, msg


NEWEST_BLOCK_SQL: Final = "SELECT max(block) FROM neurons"
# The newest snapshot, as `horde_job_runner.organic.store.lookup_axon` reads it.
NAMED_SQL: Final = """
SELECT hotkey, axon_ip, axon_port, axon_ip_type FROM neurons WHERE block = $1 AND hotkey = $2 LIMIT 1
"""
FIRST_SERVING_SQL: Final = """
SELECT hotkey, axon_ip, axon_port, axon_ip_type FROM neurons
WHERE block = $1 AND is_serving AND hotkey <> $2 ORDER BY uid LIMIT 1
"""


async def _pick_miner(database_url: str, named: str | None, own_hotkey: str) -> Axon:
    """`named`'s axon in the newest snapshot, else the first serving neuron (uid order) that is not
    this validator. There is no blacklist to honour: no blacklist table exists (docs/organic.md).
    Plain asyncpg, as `horde batches`: one bounded read, and the clear errors of a one-shot command."""
    import asyncpg

    from horde_cli.database import _plain_dsn
    from horde_job_runner.organic.store import Axon

    try:
        conn = await asyncpg.connect(_plain_dsn(database_url), timeout=DATABASE_TIMEOUT_S)
    except Exception as exc:  # refused, timed out, no such database, bad credentials
        raise _NotRun(f"database unreachable: {type(exc).__name__}: {exc}") from None
    try:
        newest = await conn.fetchval(NEWEST_BLOCK_SQL, timeout=DATABASE_TIMEOUT_S)
        if newest is None:
            raise _NotRun("no metagraph snapshot in the database (the scheduler writes them)")
        if named:
            row = await conn.fetchrow(NAMED_SQL, newest, named, timeout=DATABASE_TIMEOUT_S)
            if row is None:
                raise _NotRun(f"miner {named} is not in the newest metagraph snapshot (block {newest})")
        else:
            row = await conn.fetchrow(FIRST_SERVING_SQL, newest, own_hotkey, timeout=DATABASE_TIMEOUT_S)
            if row is None:
                raise _NotRun(f"no serving miner in the newest metagraph snapshot (block {newest})")
    except asyncpg.UndefinedTableError as exc:
        raise _NotRun(f"the database is not migrated (run `horde migrate`): {exc}") from None
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise _NotRun(f"database unreachable: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()
    return Axon(row["hotkey"], row["axon_ip"], int(row["axon_port"]), int(row["axon_ip_type"]))


def _request(job: JobOptions, job_uuid: uuid.UUID, miner_hotkey: str) -> dict[str, Any]:
    """The stored request: a V0 job naming the miner, the shape an admin job maps to (an input and
    output URL, none here). `env` is never forwarded to a miner (docs/organic.md)."""
    return {
        "type": "job.new",
        "message_type": "V0JobRequest",
        "uuid": str(job_uuid),
        "miner_hotkey": miner_hotkey,
        "executor_class": job.executor_class,
        "docker_image": job.image,
        "raw_script": job.raw_script or "",
        "args": job.args,
        "env": {},
        "use_gpu": job.use_gpu,
        "input_url": "",
        "output_url": "",
    }


def _print_status(note: StatusNote) -> None:
    """One line per status as it is committed, then the job's output, indented, when it has any."""
    import textwrap

    from rich.markup import escape

    style = {"accepted": "cyan", "completed": "green"}.get(note.status, "red")
    comment = f" {escape(note.comment)}" if note.comment else ""
    out = _out()
    out.print(f"job status: [{style}]{note.status}[/]{comment}")
    for name, text in (("stdout", note.stdout), ("stderr", note.stderr)):
        if text.strip():
            out.print(f"  {name}:")
            out.print(textwrap.indent(text.rstrip("\n"), "    "), markup=False)


async def _final_status(sessions: async_sessionmaker[AsyncSession], job_uuid: uuid.UUID) -> str:
    from horde_job_runner.organic.store import load_job

    async with sessions() as session:
        row = await load_job(session, job_uuid)
    return "missing" if row is None else str(row.status)
