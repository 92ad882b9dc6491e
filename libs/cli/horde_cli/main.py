"""The `horde` command: one entry point for operators (typer + rich)."""

from __future__ import annotations

import dataclasses
import runpy
import signal
import sys
import time
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from horde_cli import database, localnet
from horde_cli.status import probe_all, status_table
from horde_common.config import ConfigError, get_settings
from horde_common.service_ports import SERVICE_PORTS, service_module
from horde_localnet.config import DEFAULT_TOPOLOGY, Topology

app = typer.Typer(help="horde-validator: a ComputeHorde (subnet 12) validator.", no_args_is_help=True)
localnet_app = typer.Typer(help="A whole subnet on this machine.", no_args_is_help=True)
debug_app = typer.Typer(help="Operator debugging tools.", no_args_is_help=True)
app.add_typer(localnet_app, name="localnet")
app.add_typer(debug_app, name="debug")

console = Console()
err = Console(stderr=True)


def _settings():  # type: ignore[no-untyped-def]
    try:
        return get_settings()
    except ConfigError as exc:
        err.print(f"[red]config error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every Alembic migration."""
    from horde_common.db.migrate import upgrade

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
    ok, why = database.wait_for_database(_settings().database_url, timeout)
    if not ok:
        err.print(f"[red]database not reachable after {timeout:.0f} s:[/] {why}")
        raise typer.Exit(1)
    console.print("[green]database is up[/]")


@app.command()
def run(service: Annotated[str, typer.Argument(help=", ".join(SERVICE_PORTS))]) -> None:
    """Run one service in the foreground (same as `python -m horde_<service>`)."""
    try:
        module = service_module(service)
    except KeyError as exc:
        err.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from None
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


@app.command()
def status(host: Annotated[str, typer.Option(help="where the services listen")] = "127.0.0.1") -> None:
    """A table of every service's readiness (from /readyz). Exit 1 unless all are ready."""
    statuses = probe_all(host)
    console.print(status_table(statuses))
    if not all(s.ready for s in statuses):
        raise typer.Exit(1)


@localnet_app.command("up")
def localnet_up(
    detach: Annotated[bool, typer.Option(help="return once everything is ready")] = False,
    block_interval: Annotated[float, typer.Option(help="seconds per simulated block")] = 0.2,
) -> None:
    """Migrate, then start the chain and miner simulators and all five services."""
    existing = localnet.load_state()
    if existing and any(localnet._alive(pid) for pid in existing.values()):
        err.print("[yellow]a localnet is already running; `horde localnet down` first[/]")
        raise typer.Exit(1)
    topo = dataclasses.replace(DEFAULT_TOPOLOGY, block_interval=block_interval)
    migrate()
    specs = localnet.children(topo)
    procs = localnet.start_children(specs, localnet.localnet_env(topo))
    localnet.save_state(procs)
    with console.status("starting localnet…") as spinner:
        ok, why = localnet.wait_ready(
            specs,
            procs,
            topo.host,
            lambda ready: spinner.update(f"starting localnet… {len(ready)}/{len(specs)} ready"),
        )
    if not ok:
        err.print(f"[red]localnet failed to start:[/] {why}")
        localnet.stop_pids({n: p.pid for n, p in procs.items()})
        localnet.STATE_FILE.unlink(missing_ok=True)
        raise typer.Exit(1)
    console.print(_where_table(topo))
    if detach:
        console.print("running in the background; stop with [bold]horde localnet down[/]")
        return
    console.print("press Ctrl-C to stop")
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stopping:
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            err.print(f"[red]{', '.join(dead)} exited; stopping localnet[/]")
            break
        time.sleep(0.5)
    _down({n: p.pid for n, p in procs.items()})


@localnet_app.command("down")
def localnet_down() -> None:
    """Stop a localnet started with `--detach`."""
    pids = localnet.load_state()
    if not pids:
        console.print("no localnet is running")
        return
    _down(pids)


def _down(pids: dict[str, int]) -> None:
    with console.status("stopping localnet…"):
        outcome = localnet.stop_pids(pids)
    localnet.STATE_FILE.unlink(missing_ok=True)
    console.print(", ".join(f"{n}: {o}" for n, o in outcome.items()))


def _where_table(topo: Topology) -> Table:
    table = Table(title="localnet is up", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("where")
    table.add_row("chain simulator", topo.chain_url)
    last = topo.miner_port(topo.miner_count - 1)
    table.add_row("miners", f"{topo.miner_count} on ws://{topo.host}:{topo.miner_base_port}..{last}")
    for name, port in SERVICE_PORTS.items():
        table.add_row(name, f"http://{topo.host}:{port}  (/readyz /metrics /debug/)")
    table.add_row("debug token", localnet.LOCALNET_DEBUG_TOKEN)
    table.add_row("logs", str(localnet.LOG_DIR) + "/")
    return table


@debug_app.command("run-synthetic-jobs")
def debug_run_synthetic_jobs(
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Run one synthetic batch against the DEBUG_MINER_* miners (no scheduler, no chain)."""
    from horde_cli.debug_synthetic import run_synthetic_jobs_command

    run_synthetic_jobs_command(json_output)


if __name__ == "__main__":
    app()
