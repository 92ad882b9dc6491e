"""What the cross-validator's loops share, one per service instance (docs/crossval.md §9).

Loops and tests build the same object: the database, the settings (trusted miner, buckets), a way
to publish on the bus, a random source, a clock and the job timeouts. Tests shrink the timeouts and
pin the prompt parameters; the service reads them from DYNAMIC_* once per run.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.bus.messages import BusMessage
from horde_common.config import Settings
from horde_common.dynamic_config import DynamicConfig
from horde_common.service import ServiceContext
from horde_cross_validator.planning import (
    ANSWERING_BUDGET_S,
    ANSWERING_TOTAL_TIMEOUT_S,
    ANSWERING_WAIT_TIMEOUT_S,
    GENERATION_TIMEOUT_S,
    PromptParams,
    trusted_miner_configured,
)

__all__ = ["OUTCOME_GRACE_S", "CrossValidatorRuntime", "cross_validator_runtime"]

OUTCOME_GRACE_S: Final = 30.0
"""How long past a trusted job's own timeout its outcome may still arrive: the bus hop both ways
and the job-runner's connect retries (up to 5 attempts) fit in it."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CrossValidatorRuntime:
    """One instance's state for the prompt loops (docs/crossval.md §9)."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    publish: Callable[[BusMessage], Awaitable[None]]
    rng: random.Random = field(default_factory=random.SystemRandom)
    now: Callable[[], datetime] = _now
    monotonic: Callable[[], float] = time.monotonic
    generation_timeout_s: float = GENERATION_TIMEOUT_S
    answering_timeout_s: float = ANSWERING_TOTAL_TIMEOUT_S
    answering_wait_timeout_s: float = ANSWERING_WAIT_TIMEOUT_S
    answering_budget_s: float = ANSWERING_BUDGET_S
    outcome_grace_s: float = OUTCOME_GRACE_S
    params: PromptParams | None = None  # None: DYNAMIC_* read at the start of every run

    @property
    def generation_model(self) -> str:
        """The prompt generator's model, `PROMPT_GENERATION_MODEL` (docs/operations.md §2.2): it
        names the generator image and is passed to it, so each run reads the instance's settings."""
        return self.settings.PROMPT_GENERATION_MODEL

    @property
    def trusted_miner_configured(self) -> bool:
        return trusted_miner_configured(self.settings.TRUSTED_MINER_ADDRESS, self.settings.TRUSTED_MINER_PORT)

    async def prompt_params(self, session: AsyncSession) -> PromptParams:
        """The prompt parameters for one run: pinned ones (tests) or the DYNAMIC_* values now."""
        if self.params is not None:
            return self.params
        config = await DynamicConfig.load(session)
        return PromptParams.from_settings(config.settings)


@contextlib.asynccontextmanager
async def cross_validator_runtime(ctx: ServiceContext) -> AsyncIterator[CrossValidatorRuntime]:
    """The `ServiceSpec` dependency: publishes straight to the broker (the loops hold no outbox
    transaction: a trusted job's request must go out while its lock is held)."""
    broker = ctx.broker
    if broker is None:
        raise RuntimeError("the cross-validator needs the broker")
    yield CrossValidatorRuntime(sessions=ctx.sessions, settings=ctx.settings, publish=broker.publish)
