"""Service runner: lifecycle, probes, metrics and debug views shared by the five services."""

from horde_common.service.app import build_app, readiness
from horde_common.service.context import DebugView, LoopFn, LoopState, ServiceContext, ServiceSpec
from horde_common.service.runner import ServiceRunner, run_service

__all__ = [
    "DebugView",
    "LoopFn",
    "LoopState",
    "ServiceContext",
    "ServiceRunner",
    "ServiceSpec",
    "build_app",
    "readiness",
    "run_service",
]
