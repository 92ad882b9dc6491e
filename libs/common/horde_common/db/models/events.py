"""System events: the validator's structured telemetry, shipped to the stats collector later."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, DateTime, Index, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from horde_common.db.base import Base


class SystemEventType(StrEnum):
    WEIGHT_SETTING_SUCCESS = "WEIGHT_SETTING_SUCCESS"
    WEIGHT_SETTING_FAILURE = "WEIGHT_SETTING_FAILURE"
    MINER_SYNTHETIC_JOB_SUCCESS = "MINER_SYNTHETIC_JOB_SUCCESS"
    MINER_SYNTHETIC_JOB_FAILURE = "MINER_SYNTHETIC_JOB_FAILURE"
    MINER_ORGANIC_JOB_SUCCESS = "MINER_ORGANIC_JOB_SUCCESS"
    MINER_ORGANIC_JOB_FAILURE = "MINER_ORGANIC_JOB_FAILURE"
    RECEIPT_FAILURE = "RECEIPT_FAILURE"
    FACILITATOR_CLIENT_ERROR = "FACILITATOR_CLIENT_ERROR"
    VALIDATOR_FAILURE = "VALIDATOR_FAILURE"
    VALIDATOR_TELEMETRY = "VALIDATOR_TELEMETRY"
    VALIDATOR_MINERS_REFRESH = "VALIDATOR_MINERS_REFRESH"
    VALIDATOR_SYNTHETIC_JOB_SCHEDULED = "VALIDATOR_SYNTHETIC_JOB_SCHEDULED"
    VALIDATOR_SYNTHETIC_JOBS_FAILURE = "VALIDATOR_SYNTHETIC_JOBS_FAILURE"
    VALIDATOR_OVERSLEPT_SCHEDULED_JOB_WARNING = "VALIDATOR_OVERSLEPT_SCHEDULED_JOB_WARNING"
    LLM_PROMPT_GENERATION = "LLM_PROMPT_GENERATION"
    LLM_PROMPT_SAMPLING = "LLM_PROMPT_SAMPLING"
    LLM_PROMPT_ANSWERING = "LLM_PROMPT_ANSWERING"


class SystemEventSubtype(StrEnum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    WARNING = "WARNING"
    GENERIC_ERROR = "GENERIC_ERROR"
    SUBTENSOR_CONNECTIVITY_ERROR = "SUBTENSOR_CONNECTIVITY_ERROR"
    # weights
    SET_WEIGHTS_SUCCESS = "SET_WEIGHTS_SUCCESS"
    SET_WEIGHTS_ERROR = "SET_WEIGHTS_ERROR"
    COMMIT_WEIGHTS_SUCCESS = "COMMIT_WEIGHTS_SUCCESS"
    COMMIT_WEIGHTS_ERROR = "COMMIT_WEIGHTS_ERROR"
    REVEAL_WEIGHTS_SUCCESS = "REVEAL_WEIGHTS_SUCCESS"
    REVEAL_WEIGHTS_ERROR = "REVEAL_WEIGHTS_ERROR"
    WRITING_TO_CHAIN_TIMEOUT = "WRITING_TO_CHAIN_TIMEOUT"
    WRITING_TO_CHAIN_GENERIC_ERROR = "WRITING_TO_CHAIN_GENERIC_ERROR"
    GIVING_UP = "GIVING_UP"
    # miner jobs
    UNAUTHORIZED = "UNAUTHORIZED"
    MINER_CONNECTION_ERROR = "MINER_CONNECTION_ERROR"
    MINER_SEND_ERROR = "MINER_SEND_ERROR"
    MINER_SCORING_ERROR = "MINER_SCORING_ERROR"
    MANIFEST_ERROR = "MANIFEST_ERROR"
    MANIFEST_TIMEOUT = "MANIFEST_TIMEOUT"
    JOB_NOT_STARTED = "JOB_NOT_STARTED"
    JOB_REJECTED = "JOB_REJECTED"
    JOB_EXECUTION_TIMEOUT = "JOB_EXECUTION_TIMEOUT"
    RECEIPT_SEND_ERROR = "RECEIPT_SEND_ERROR"
    # scheduling
    FAILED_TO_WAIT = "FAILED_TO_WAIT"
    OVERSLEPT = "OVERSLEPT"
    # facilitator link
    HEARTBEAT_ERROR = "HEARTBEAT_ERROR"
    SPECS_SEND_ERROR = "SPECS_SENDING_ERROR"
    # telemetry
    CHECKPOINT = "CHECKPOINT"
    SYNTHETIC_BATCH = "SYNTHETIC_BATCH"
    SYNTHETIC_JOB = "SYNTHETIC_JOB"
    INSUFFICIENT_PROMPTS = "INSUFFICIENT_PROMPTS"
    ERROR_UPLOADING_TO_S3 = "ERROR_UPLOADING_TO_S3"
    ERROR_DOWNLOADING_FROM_S3 = "ERROR_DOWNLOADING_FROM_S3"
    # cross-validation
    TRUSTED_MINER_NOT_CONFIGURED = "TRUSTED_MINER_NOT_CONFIGURED"
    PROMPT_GENERATION_STARTED = "PROMPT_GENERATION_STARTED"
    PROMPT_SAMPLING_SKIPPED = "PROMPT_SAMPLING_SKIPPED"
    NEW_WORKLOADS_CREATED = "NEW_WORKLOADS_CREATED"
    UNPROCESSED_WORKLOADS = "UNPROCESSED_WORKLOADS"
    LLM_PROMPT_ANSWERS_MISSING = "LLM_PROMPT_ANSWERS_MISSING"
    LLM_PROMPT_ANSWERS_DOWNLOAD_FAILED = "LLM_PROMPT_ANSWERS_DOWNLOAD_FAILED"


class SystemEvent(Base):
    """`data` always carries `batch_uuid` for batch events, and `job_uuid`/`miner_hotkey`/`func` where
    relevant. `service` names the writer. `sent` flips once the stats collector answered 201."""

    __tablename__ = "system_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    subtype: Mapped[str] = mapped_column(String(64))
    long_description: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSONB, default=dict)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    service: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_system_events_timestamp", "timestamp"),
        Index("ix_system_events_type_subtype", "type", "subtype"),
        Index("ix_system_events_unsent", "id", postgresql_where="NOT sent"),
    )
