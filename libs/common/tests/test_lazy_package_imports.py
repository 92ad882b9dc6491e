"""The packages `horde_common.bus`, `.telemetry` and `.db` re-export their names lazily (issue 6 §3).

Each check runs in a fresh interpreter (this test session has imported everything already).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "aio_pika", "aiormq", "opentelemetry", "structlog", "prometheus_client")

PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in {names} if m in sys.modules)))
"""


def loaded_after(code: str, names: tuple[str, ...] = HEAVY) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, names=names)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "horde_common.bus.messages",
        "horde_common.telemetry",
        "horde_common.telemetry.events",
        "horde_common.db",
    ],
)
def test_importing_a_light_module_loads_no_heavy_library(module: str) -> None:
    assert loaded_after(f"import {module}") == []


def test_a_re_exported_name_still_resolves_to_its_module() -> None:
    code = (
        "from horde_common.bus import Broker, BusMessage\n"
        "from horde_common.db import create_engine\n"
        "from horde_common.telemetry import configure_logging, record_event\n"
        "import horde_common.bus.broker, horde_common.db.base, horde_common.telemetry.logs\n"
        "assert Broker is horde_common.bus.broker.Broker\n"
        "assert create_engine is horde_common.db.base.create_engine\n"
        "assert configure_logging is horde_common.telemetry.logs.configure_logging\n"
    )
    assert set(loaded_after(code, ("sqlalchemy", "aio_pika", "structlog"))) == {
        "sqlalchemy",
        "aio_pika",
        "structlog",
    }


def test_an_unknown_name_is_an_attribute_error() -> None:
    import horde_common.bus
    import horde_common.db
    import horde_common.telemetry

    for package in (horde_common.bus, horde_common.db, horde_common.telemetry):
        with pytest.raises(AttributeError):
            _ = package.no_such_name  # type: ignore[attr-defined]
