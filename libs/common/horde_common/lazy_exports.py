"""Package re-exports resolved on first use (PEP 562), shared by `bus`, `db` and `telemetry`.

Those packages re-export their most used names for convenience, but importing one light module of
theirs (a pydantic message, a migration path, the event counter) must not import aio-pika,
SQLAlchemy or the OpenTelemetry SDK through the package's `__init__`. Commands answer faster that way.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, whose name `n` lives in submodule `exports[n]`.

    A resolved name is stored in the package's namespace, so later lookups skip `__getattr__`.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
