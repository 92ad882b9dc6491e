"""The `horde` command: one entry point for operators (typer + rich).

Every command imports what it needs inside its body: `horde --help` must answer at once, and an
operator's `horde status` should not pay for SQLAlchemy, the broker client or the chain library.
`tests/test_cli_imports.py` holds the line: importing this module loads none of them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from horde_cli.crossval_commands import crossval_app, s3_app  # loads typer only
from horde_cli.debug_organic import debug_run_organic_job  # loads typer only (see its docstring)
from horde_cli.terminal import HELP_STYLE
from horde_cli.terminal import console as _console
from horde_cli.terminal import err as _err
from horde_cli.terminal import settings as _settings
from horde_common.service_ports import SERVICE_PORTS, service_module

if TYPE_CHECKING:
    from rich.table import Table

    from horde_localnet.config import Topology

app = typer.Typer(help="horde-validator: a ComputeHorde (subnet 12) validator.", **HELP_STYLE)
localnet_app = typer.Typer(help="A whole subnet on this machine.", **HELP_STYLE)
debug_app = typer.Typer(help="Operator debugging tools.", **HELP_STYLE)
app.add_typer(localnet_app, name="localnet")
app.add_typer(debug_app, name="debug")
# `horde batches` lists, `horde batches show <id>` details: the group itself runs the list.
batches_app = typer.Typer(help="Synthetic job batches, read from the database.", rich_markup_mode=None)
app.add_typer(batches_app, name="batches")
app.add_typer(s3_app, name="s3")
app.add_typer(crossval_app, name="crossval")


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every Alembic migration."""
    from horde_cli import database
    from horde_common.db.migrate import upgrade

    console, err = _console(), _err()
    url = _settings().database_url
    ok, why = database.wait_for_database(url, 30, server_only=True)
    if not ok:
        err.print(f"[red]database unreachable:[/] {why}")
        raise typer.Exit(1)
    if database.ensure_database(url):
        console.print("created the database")
    upgrade(url)
    console.print("[green]migrations applied[/]")


@app.command("wait-for-database")
def wait_for_database(timeout: Annotated[float, typer.Option(help="seconds")] = 60.0) -> None:
    """Block until the database accepts connections (exit 1 after --timeout)."""
    from horde_cli import database

    console, err = _console(), _err()
    ok, why = database.wait_for_database(_settings().database_url, timeout)
    if not ok:
        err.print(f"[red]database not reachable after {timeout:.0f} s:[/] {why}")
        raise typer.Exit(1)
    console.print("[green]database is up[/]")


@app.command()
def run(service: Annotated[str, typer.Argument(help=", ".join(SERVICE_PORTS))]) -> None:
    """Run one service in the foreground (same as `python -m horde_<service>`)."""
    import runpy

    try:
        module = service_module(service)
    except KeyError as exc:
        _err().print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from None
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


@app.command()
def status(host: Annotated[str, typer.Option(help="where the services listen")] = "127.0.0.1") -> None:
    """A table of every service's readiness (from /readyz). Exit 1 unless all are ready."""
    from horde_cli.status import probe_all, status_table

    statuses = probe_all(host)
    _console().print(status_table(statuses))
    if not all(s.ready for s in statuses):
        raise typer.Exit(1)


@batches_app.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    # A screenful by default; a thousand rows still answer in well under a second.
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many, newest first")] = 10,
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """The newest synthetic batches: state, cycle, times, job counts. `show <id>` for one."""
    if ctx.invoked_subcommand is not None:
        return
    from horde_cli.batches import BatchesError, print_error, print_list

    try:
        print_list(_console(), _settings().database_url, limit, json_output)
    except BatchesError as exc:
        print_error(_err(), str(exc))
        raise typer.Exit(1) from None


@batches_app.command("show")
def batches_show(
    key: Annotated[str, typer.Argument(help="batch id or uuid")],
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """One batch: its cycle, times, jobs per status, miners and the stages it went through."""
    from horde_cli.batches import BadKeyError, BatchesError, print_error, print_one

    try:
        found = print_one(_console(), _settings().database_url, key, json_output)
    except BadKeyError as exc:
        print_error(_err(), str(exc))
        raise typer.Exit(2) from None
    except BatchesError as exc:
        print_error(_err(), str(exc))
        raise typer.Exit(1) from None
    if not found:
        print_error(_err(), f"no batch {key!r}")
        raise typer.Exit(1)


@app.command()
def weights(
    # A screenful by default, as `horde batches`.
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many, newest first")] = 10,
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """The newest weights writes: batch, mode, block, status, reveal state, times."""
    from horde_cli.batches import BatchesError, print_error
    from horde_cli.weights import print_list

    try:
        print_list(_console(), _settings().database_url, limit, json_output)
    except BatchesError as exc:
        print_error(_err(), str(exc))
        raise typer.Exit(1) from None


@localnet_app.command("up")
def localnet_up(
    detach: Annotated[bool, typer.Option(help="return once everything is ready")] = False,
    block_interval: Annotated[float, typer.Option(help="seconds per simulated block")] = 0.2,
    job_runners: Annotated[
        int, typer.Option(min=1, help="job-runner replicas (shards spread over them)")
    ] = 1,
    metagraph: Annotated[
        Path | None, typer.Option(help="localnet metagraph YAML (miners, behaviours; default: packaged)")
    ] = None,
    lease_ttl: Annotated[
        float | None, typer.Option(hidden=True, min=0.1, help="tests: job-runners' shard lease TTL, s")
    ] = None,
) -> None:
    """Migrate, then start the chain and miner simulators and all five services."""
    import dataclasses
    import signal

    from horde_cli import localnet
    from horde_localnet.config import DEFAULT_TOPOLOGY

    console, err = _console(), _err()
    existing = localnet.load_state()
    if existing and any(localnet._alive(pid) for pid in existing.values()):
        err.print("[yellow]a localnet is already running; `horde localnet down` first[/]")
        raise typer.Exit(1)
    topo = dataclasses.replace(DEFAULT_TOPOLOGY, block_interval=block_interval)
    if metagraph is not None:
        topo = dataclasses.replace(topo, metagraph_path=metagraph.resolve())
    migrate()
    specs = localnet.children(topo, job_runners=job_runners, lease_ttl_s=lease_ttl)
    procs: dict[str, Any] = {}
    ok, why = True, ""
    try:
        with console.status("starting localnet…") as spinner:
            for stage in localnet.start_stages(specs):
                procs.update(localnet.start_children(stage, localnet.localnet_env(topo)))
                localnet.save_state(procs)
                done = len(procs) - len(stage)
                ok, why = localnet.wait_ready(
                    stage,
                    procs,
                    topo.host,
                    lambda ready, done=done: spinner.update(
                        f"starting localnet… {done + len(ready)}/{len(specs)} ready"
                    ),
                )
                if not ok:
                    break
    except KeyboardInterrupt:  # Ctrl-C while starting: stop what was started, leave nothing behind
        ok, why = False, "interrupted"
    if not ok:
        err.print(f"[red]localnet failed to start:[/] {why}")
        localnet.stop_pids({n: p.pid for n, p in procs.items()})
        localnet.STATE_FILE.unlink(missing_ok=True)
        raise typer.Exit(1)
    console.print(_where_table(topo, job_runners))
    if detach:
        console.print("running in the background; stop with [bold]horde localnet down[/]")
        return
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # Handlers first, then the prompt: a Ctrl-C right after the prompt must stop the children too.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    console.print("press Ctrl-C to stop")
    while not stopping:
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            err.print(f"[red]{', '.join(dead)} exited; stopping localnet[/]")
            break
        time.sleep(0.5)
    _down({n: p.pid for n, p in procs.items()})


@localnet_app.command("submit-job")
def localnet_submit_job(
    version: Annotated[str, typer.Option(help="V0, V1 or V2")] = "V2",
    executor_class: Annotated[str, typer.Option()] = "spin_up-4min.gpu-24gb",
    miner_hotkey: Annotated[str | None, typer.Option(help="V0/V1 miner (default: dev miner 0)")] = None,
    docker_image: Annotated[str | None, typer.Option()] = None,
    arg: Annotated[list[str] | None, typer.Option(help="container argument, repeatable")] = None,
    wait: Annotated[float, typer.Option(help="seconds to follow its statuses (0: don't)")] = 300.0,
) -> None:
    """Hand one organic job to the validator through the localnet facilitator; print its statuses."""
    from horde_cli.submit_job import submit_job_command

    kwargs = {"executor_class": executor_class, "miner_hotkey": miner_hotkey, "docker_image": docker_image}
    raise typer.Exit(submit_job_command(_console(), _err(), version=version, args=arg, wait_s=wait, **kwargs))


@localnet_app.command("down")
def localnet_down() -> None:
    """Stop a localnet started with `--detach`."""
    from horde_cli import localnet

    pids = localnet.load_state()
    if not pids:
        _console().print("no localnet is running")
        return
    _down(pids)


def _down(pids: dict[str, int]) -> None:
    from horde_cli import localnet

    console = _console()
    with console.status("stopping localnet…"):
        outcome = localnet.stop_pids(pids)
    localnet.STATE_FILE.unlink(missing_ok=True)
    console.print(", ".join(f"{n}: {o}" for n, o in outcome.items()))


def _where_table(topo: Topology, job_runners: int = 1) -> Table:
    from rich.table import Table

    from horde_cli import localnet

    table = Table(title="localnet is up", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("where")
    table.add_row("chain simulator", topo.chain_url)
    last = topo.miner_port(topo.miner_count - 1)
    table.add_row("miners", f"{topo.miner_count} on ws://{topo.host}:{topo.miner_base_port}..{last}")
    if localnet.runs_facilitator_simulator():
        table.add_row("facilitator simulator", f"{topo.facilitator_url}  (http: /jobs /stats)")
    for name, port in SERVICE_PORTS.items():
        table.add_row(name, f"http://{topo.host}:{port}  (/readyz /metrics /debug/)")
    for i in range(2, job_runners + 1):
        port = localnet.REPLICA_BASE_PORT + i
        table.add_row(f"job-runner-{i}", f"http://{topo.host}:{port}  (/readyz /metrics /debug/)")
    table.add_row("debug token", localnet.LOCALNET_DEBUG_TOKEN)
    table.add_row("logs", str(localnet.LOG_DIR) + "/")
    return table


@debug_app.command("run-synthetic-jobs")
def debug_run_synthetic_jobs(
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Run one synthetic batch against the DEBUG_MINER_* miners (no scheduler, no chain)."""
    import os

    # Pydantic looks for plugins (scanning every installed distribution's entry points, ~50 ms)
    # when the first model is built; this one-shot command has no use for them. An operator's own
    # setting wins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from horde_cli.debug_synthetic import run_synthetic_jobs_command

    run_synthetic_jobs_command(json_output)


debug_app.command("run-organic-job")(debug_run_organic_job)  # body and options: horde_cli.debug_organic


@debug_app.command("set-scores")
def debug_set_scores(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="preview only: write nothing")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Score the eligible batch now: uid, score, weight, u16. Without --dry-run, one weights run."""
    from horde_cli.weights import set_scores_command

    code = set_scores_command(_console(), _err(), _settings(), dry_run=dry_run, as_json=json_output)
    if code:
        raise typer.Exit(code)


if __name__ == "__main__":
    app()
