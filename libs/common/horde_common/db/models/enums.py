"""String enums stored in plain `String` columns (no Postgres ENUM types, so migrations stay simple)."""

from __future__ import annotations

from enum import StrEnum

DEFAULT_EXECUTOR_CLASS = "spin_up-4min.gpu-24gb"


class JobStatus(StrEnum):
    """Status of a synthetic or organic job row."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    # A synthetic job the miner declined while its executor ran our own organic job: scored as a
    # completed job of its class, without the multiplier (docs/synthetic-batch.md "Excused declines").
    EXCUSED = "EXCUSED"


class OrganicJobSource(StrEnum):
    FACILITATOR = "facilitator"
    ADMIN = "admin"
    CLI = "cli"


class WeightsMode(StrEnum):
    """How a weights row reached (or is meant to reach) the chain."""

    SET = "set"  # direct set_weights (or the SDK's timelocked commit, which the chain reveals itself)
    COMMIT = "commit"  # legacy salt-based commit, revealed later by the validator


class WeightsStatus(StrEnum):
    PENDING = "pending"  # computed, not yet on chain
    SET = "set"  # direct set succeeded
    COMMITTED = "committed"  # commit succeeded, reveal pending
    REVEALED = "revealed"  # reveal succeeded
    FAILED = "failed"  # gave up
