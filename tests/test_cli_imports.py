"""The `horde` command imports by command: its module and `--help` load none of the heavy libraries.

Each check runs in a fresh interpreter, since this test session has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What an operator's `horde --help` must not pay for (issue 6 §3): each costs 0.1–1 s of imports.
HEAVY = ("sqlalchemy", "aio_pika", "aiormq", "opentelemetry", "fastapi", "uvicorn", "bittensor")
# Also left for the commands that use them: the HTTP client, the Postgres driver, the WebSocket
# client and the job generators.
ALSO_LAZY = ("httpx", "asyncpg", "websockets", "horde_job_runner.generators")

PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in {names} if m in sys.modules)))
"""


def loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """The modules of `names` present in `sys.modules` after running `code` in a new interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, names=names)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert loaded_after("import horde_cli.main", HEAVY + ALSO_LAZY) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["debug", "--help"],
        ["localnet", "--help"],
        ["batches", "--help"],
        ["weights", "--help"],
        ["debug", "set-scores", "--help"],
        ["debug", "run-organic-job", "--help"],
        ["s3", "--help"],
    ],
)
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import contextlib, io\n"
        "from horde_cli.main import app\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        app({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'Usage' in out.getvalue(), out.getvalue()\n"
    )
    assert loaded_after(code, HEAVY + ALSO_LAZY) == []


def test_the_probe_sees_a_heavy_import() -> None:
    """The probe itself works: a module that does import SQLAlchemy is reported."""
    assert loaded_after("import horde_common.db.base", ("sqlalchemy",)) == ["sqlalchemy"]


def test_importing_the_debug_batch_module_loads_neither_database_nor_bus() -> None:
    loaded = loaded_after("import horde_job_runner.synthetic.debug_run", (*HEAVY, "asyncpg"))
    assert loaded == []
