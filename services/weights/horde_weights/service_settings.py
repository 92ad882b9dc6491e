"""The weights service's own environment settings (`docs/scoring.md` §2.1).

`WEIGHTS_MODE` picks how weights reach the chain. It lives here rather than in the shared
`Settings` only until that model grows the field; the environment variable is the same either way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class WeightsMode(StrEnum):
    """`auto`: `Chain.set_weights` (the chain decides whether to set directly or timelock-commit).
    `commit-reveal-v2`: the salted commit this service reveals itself (`docs/scoring.md` §2.5)."""

    AUTO = "auto"
    COMMIT_REVEAL_V2 = "commit-reveal-v2"


class WeightsServiceSettings(BaseSettings):
    """Environment variables only the weights service reads (unknown variables are ignored)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    WEIGHTS_MODE: Literal["auto", "commit-reveal-v2"] = "auto"

    @property
    def mode(self) -> WeightsMode:
        return WeightsMode(self.WEIGHTS_MODE)
