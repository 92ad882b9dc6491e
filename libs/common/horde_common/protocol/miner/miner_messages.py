"""Miner → validator messages (docs/miner-protocol.md §2.3)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

from pydantic import Field

from .base_messages import GenericError, JobMessage, V0MachineSpecsRequest
from .executor_class import ExecutorClass, parse_executor_class
from .values import WireModel


class ExecutorClassManifest(WireModel):
    # The integer form is deprecated; only 0 (the default class) is meaningful, see `ExecutorManifest`.
    executor_class: ExecutorClass | int
    count: int


# Entries a manifest may list. Only three classes exist and a November-2024 miner sends one entry
# per class; 64 leaves room for repeated entries (they are summed) and for classes added later,
# while a hostile manifest of 100,000 entries is refused before it costs anything. A manifest
# over the cap is a malformed frame (the miner's fault).
MAX_MANIFEST_ENTRIES: Final = 64


class ExecutorManifest(WireModel):
    executor_classes: list[ExecutorClassManifest] = Field(max_length=MAX_MANIFEST_ENTRIES)

    def executor_counts(self) -> dict[ExecutorClass, int]:
        """Executors per class as the batch counts them (docs/miner-protocol.md §3.4).

        Entries with count <= 0 are ignored, the integer 0 means the default class, repeated
        classes are summed, and entries with any other integer class are skipped (see
        `invalid_classes`: the original reports them as a manifest error).
        """
        counts: dict[ExecutorClass, int] = {}
        for entry in self.executor_classes:
            executor_class = parse_executor_class(entry.executor_class)
            if entry.count <= 0 or executor_class is None:
                continue
            counts[executor_class] = counts.get(executor_class, 0) + entry.count
        return counts

    def invalid_classes(self) -> list[int]:
        """Integer classes other than 0, in order of appearance."""
        return [
            entry.executor_class
            for entry in self.executor_classes
            if isinstance(entry.executor_class, int) and parse_executor_class(entry.executor_class) is None
        ]

    @property
    def total_count(self) -> int:
        return sum(self.executor_counts().values())


class V0ExecutorManifestRequest(WireModel):
    """Always the miner's first message after a successful authentication."""

    message_type: Literal["V0ExecutorManifestRequest"] = "V0ExecutorManifestRequest"
    manifest: ExecutorManifest


class V0AcceptJobRequest(JobMessage):
    message_type: Literal["V0AcceptJobRequest"] = "V0AcceptJobRequest"


class V0DeclineJobRequest(JobMessage):
    """No reason field in this protocol version (decline reasons came later)."""

    message_type: Literal["V0DeclineJobRequest"] = "V0DeclineJobRequest"


class V0ExecutorReadyRequest(JobMessage):
    message_type: Literal["V0ExecutorReadyRequest"] = "V0ExecutorReadyRequest"


class V0ExecutorFailedRequest(JobMessage):
    message_type: Literal["V0ExecutorFailedRequest"] = "V0ExecutorFailedRequest"


class V0JobFinishedRequest(JobMessage):
    message_type: Literal["V0JobFinishedRequest"] = "V0JobFinishedRequest"
    docker_process_stdout: str
    docker_process_stderr: str


class V0JobFailedRequest(JobMessage):
    message_type: Literal["V0JobFailedRequest"] = "V0JobFailedRequest"
    docker_process_exit_status: int | None = None  # null on executor timeout or never started
    docker_process_stdout: str
    docker_process_stderr: str


class UnauthorizedErrorCode(StrEnum):
    TOKEN_TOO_OLD = "TOKEN_TOO_OLD"
    UNKNOWN_VALIDATOR = "UNKNOWN_VALIDATOR"
    VALIDATOR_INACTIVE = "VALIDATOR_INACTIVE"


class UnauthorizedError(WireModel):
    """Defined in the protocol but never sent by November-2024 miners."""

    message_type: Literal["UnauthorizedError"] = "UnauthorizedError"
    code: UnauthorizedErrorCode
    details: str | None = None


MinerMessage = (
    V0ExecutorManifestRequest
    | V0AcceptJobRequest
    | V0DeclineJobRequest
    | V0ExecutorReadyRequest
    | V0ExecutorFailedRequest
    | V0JobFinishedRequest
    | V0JobFailedRequest
    | V0MachineSpecsRequest
    | GenericError
    | UnauthorizedError
)
