"""`horde status`: every service's readiness, read from its `/readyz`."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from rich.table import Table

from horde_common.service_ports import SERVICE_PORTS

# /readyz itself bounds its DB probe at 2 s; allow a little more for the HTTP round trip.
READYZ_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    ready: bool
    detail: str


def probe(host: str, name: str, port: int) -> ServiceStatus:
    url = f"http://{host}:{port}/readyz"
    try:
        resp = httpx.get(url, timeout=READYZ_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return ServiceStatus(name, url, False, f"unreachable ({type(exc).__name__})")
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code == 200:
        return ServiceStatus(name, url, True, "ready")
    failing = body.get("failing") or body.get("checks") or resp.text[:80]
    return ServiceStatus(name, url, False, f"HTTP {resp.status_code}: {failing}")


def probe_all(host: str) -> list[ServiceStatus]:
    return [probe(host, name, port) for name, port in SERVICE_PORTS.items()]


def status_table(statuses: list[ServiceStatus]) -> Table:
    ready = sum(s.ready for s in statuses)
    table = Table(title=f"horde services: {ready}/{len(statuses)} ready", title_justify="left")
    table.add_column("service", style="bold")
    table.add_column("ready")
    table.add_column("url", style="dim")
    table.add_column("detail")
    for s in statuses:
        table.add_row(s.name, "[green]✔ ready[/]" if s.ready else "[red]✘ not ready[/]", s.url, s.detail)
    return table
