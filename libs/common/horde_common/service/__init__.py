"""Service runner: lifecycle, probes, metrics and debug views shared by the five services."""

from horde_common.service.app import build_app, readiness
from horde_common.service.context import (
    DebugView,
    Dependency,
    LoopFn,
    LoopState,
    ServiceContext,
    ServiceSpec,
    open_dependencies,
)
from horde_common.service.runner import ServiceRunner, run_service

__all__ = [
    "DebugView",
    "Dependency",
    "LoopFn",
    "LoopState",
    "ServiceContext",
    "ServiceRunner",
    "ServiceSpec",
    "build_app",
    "open_dependencies",
    "readiness",
    "run_service",
]
