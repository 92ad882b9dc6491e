"""The bus table in `docs/architecture.md` is what `scripts/gen_bus_table.py` generates from the code.

A handler, queue, message or declared publisher added without regenerating the table fails here,
with the command that fixes it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
# A call that publishes a message, or a broker's publish handed to other code.
PUBLISH_CALL = re.compile(r"\badd_to_outbox\(|\.publish(?:_many|_raw)?\(|\bbroker\.publish\b")


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    path = REPO / "scripts" / "gen_bus_table.py"
    spec = importlib.util.spec_from_file_location("gen_bus_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_bus_table_in_the_doc_is_current(gen: ModuleType) -> None:
    current = gen.current_block(gen.DOC.read_text(encoding="utf-8"))
    assert current == gen.generated_block(), (
        "docs/architecture.md: the bus table is stale; run `uv run python scripts/gen_bus_table.py --write`"
    )
    assert gen.main(["--check"]) == 0


def test_every_routing_key_has_a_row(gen: ModuleType) -> None:
    from horde_common.bus.topology import QUEUES

    rows = gen.rows(gen.service_specs())
    assert [r.routing_key for r in rows] == list(gen.message_types())
    assert {k for q in QUEUES.values() for k in q.routing_keys} <= set(gen.message_types())
    by_key = {r.routing_key: r for r in rows}
    completed = by_key["batch.shard.completed"]
    assert any(p.startswith("job-runner `on_batch_shard_requested`") for p in completed.published_by)
    assert any("scheduler.batch.shard.completed" in c for c in completed.consumed_by)
    assert any(p.startswith("job-runner:") for p in by_key["batch.shard.ready"].published_by)


def test_a_stale_table_is_reported(gen: ModuleType) -> None:
    stale = f"intro\n{gen.BEGIN}\n| old |\n{gen.END}\nrest\n"
    assert gen.current_block(stale) != gen.generated_block()
    with pytest.raises(ValueError, match="no bus table markers"):
        gen.current_block("no markers here")


def test_services_that_publish_outside_handlers_declare_it(gen: ModuleType) -> None:
    """A loop or task that publishes must be declared in `SPEC.publishes_outside_handlers`.

    A coarse guard: a service whose code calls a publisher (or hands the broker's publish on) and
    declares no such message would be missing from the table's "published by".
    """
    from horde_common.service_ports import service_module

    for name, spec in gen.service_specs().items():
        package = next((REPO / "services").glob(f"*/{service_module(name)}"))
        publishing = sorted(
            str(path.relative_to(REPO))
            for path in package.rglob("*.py")
            if PUBLISH_CALL.search(path.read_text(encoding="utf-8"))
        )
        if publishing:
            assert spec.publishes_outside_handlers, f"{name} publishes in {publishing} but declares nothing"
