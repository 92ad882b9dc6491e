"""What every `horde` command prints with, shared by `main` and the command groups beside it.

Imports only typer: rich and the settings load inside the calls, so `horde --help` stays instant
(`tests/test_cli_imports.py`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from horde_common.config import Settings

# Plain help (click's formatter): typer's rich help imports rich, markdown-it and pygments, 0.4 s of
# CPU on every `--help`. The commands' own tables and progress still use rich.
HELP_STYLE: dict[str, Any] = {"rich_markup_mode": None, "no_args_is_help": True}


@functools.cache
def console() -> Console:
    """Standard output, for tables and progress."""
    from rich.console import Console

    return Console()


@functools.cache
def err() -> Console:
    """Standard error, for what went wrong."""
    from rich.console import Console

    return Console(stderr=True)


def settings() -> Settings:
    """The settings, or one `config error:` line and exit code 2 (docs/operations.md §4.1)."""
    from horde_common.config import ConfigError, get_settings

    try:
        return get_settings()
    except ConfigError as exc:
        err().print(f"[red]config error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
