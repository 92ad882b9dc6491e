"""The localnet simulators never import a service, in their package or in their tests.

import-linter (the "horde_localnet imports no service" contract in pyproject.toml) sees only
packages; this test also covers `libs/localnet/tests`, so the simulators stay testable through
the wire protocol alone and a service's tests can run against them without a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

LOCALNET_ROOT = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = frozenset(
    {
        "horde_scheduler",
        "horde_job_runner",
        "horde_weights",
        "horde_facilitator_gateway",
        "horde_cross_validator",
    }
)


def imported_top_level_names(tree: ast.AST) -> set[str]:
    """First components of every absolute import, including those inside functions."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module.split(".")[0])
    return names


def service_imports() -> list[str]:
    """`path: package` for every service import under libs/localnet."""
    found: list[str] = []
    for path in sorted(LOCALNET_ROOT.rglob("*.py")):
        if any(part.startswith(".") or part == "__pycache__" for part in path.parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in sorted(imported_top_level_names(tree) & SERVICE_PACKAGES):
            found.append(f"{path.relative_to(LOCALNET_ROOT)}: {name}")
    return found


def test_the_scan_sees_the_package_and_its_tests() -> None:
    scanned = {p.relative_to(LOCALNET_ROOT).parts[0] for p in LOCALNET_ROOT.rglob("*.py")}
    assert {"horde_localnet", "tests"} <= scanned


def test_the_scan_finds_lazy_imports() -> None:
    source = "def f():\n    import horde_weights.app\n    from horde_job_runner import x\n"
    assert imported_top_level_names(ast.parse(source)) == {"horde_weights", "horde_job_runner"}


def test_localnet_imports_no_service() -> None:
    assert service_imports() == []
