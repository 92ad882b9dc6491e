"""How the weights service writes weights: `WEIGHTS_MODE` as a typed mode (`docs/scoring.md` §2.1)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horde_common.config import Settings


class WeightsMode(StrEnum):
    """`auto`: `Chain.set_weights` (the chain decides whether to set directly or timelock-commit).
    `commit-reveal-v2`: the salted commit this service reveals itself (`docs/scoring.md` §2.5)."""

    AUTO = "auto"
    COMMIT_REVEAL_V2 = "commit-reveal-v2"


def weights_mode(settings: Settings) -> WeightsMode:
    """The mode `WEIGHTS_MODE` names (validated by `Settings`, so a bad value stops the service at start)."""
    return WeightsMode(settings.WEIGHTS_MODE)
