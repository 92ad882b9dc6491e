"""All ORM models; importing this package registers every table on `Base.metadata` (for Alembic)."""

from horde_common.db.models.bus import OutboxMessage, ProcessedMessage
from horde_common.db.models.chain import Cycle, Neuron, Validator
from horde_common.db.models.crossvalidation import Prompt, PromptSample, PromptSeries, SolveWorkload
from horde_common.db.models.dynamic import DynamicConfigEntry
from horde_common.db.models.enums import (
    DEFAULT_EXECUTOR_CLASS,
    JobStatus,
    OrganicJobSource,
    WeightsMode,
    WeightsStatus,
)
from horde_common.db.models.events import SystemEvent, SystemEventSubtype, SystemEventType
from horde_common.db.models.facilitator import FacilitatorStatusSent
from horde_common.db.models.organic import OrganicJob
from horde_common.db.models.receipts import JobAcceptedReceipt, JobFinishedReceipt, JobStartedReceipt
from horde_common.db.models.shards import BatchShard
from horde_common.db.models.synthetic import MinerManifest, SyntheticJob, SyntheticJobBatch
from horde_common.db.models.weights import Weights

__all__ = [
    "DEFAULT_EXECUTOR_CLASS",
    "BatchShard",
    "Cycle",
    "DynamicConfigEntry",
    "FacilitatorStatusSent",
    "JobAcceptedReceipt",
    "JobFinishedReceipt",
    "JobStartedReceipt",
    "JobStatus",
    "MinerManifest",
    "Neuron",
    "OrganicJob",
    "OrganicJobSource",
    "OutboxMessage",
    "ProcessedMessage",
    "Prompt",
    "PromptSample",
    "PromptSeries",
    "SolveWorkload",
    "SyntheticJob",
    "SyntheticJobBatch",
    "SystemEvent",
    "SystemEventSubtype",
    "SystemEventType",
    "Validator",
    "Weights",
    "WeightsMode",
    "WeightsStatus",
]
