"""Static configuration of every horde service, read from the environment and `.env`.

Variable names follow the reference validator wherever the spec names them, so an operator's
existing `.env` keeps working. Secrets are `SecretStr` (or URLs with their password masked) so that
no dump, repr or log line can leak them.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MASK = "**********"


class ConfigError(Exception):
    """A missing or bad setting: `str()` is one line that names the variable."""


class HashcatDifficulty(StrEnum):
    PRODUCTION = "production"
    LOCALNET = "localnet"


def mask_url(url: str) -> str:
    """Hide the password of a URL (`postgresql://u:pw@h/db` -> `postgresql://u:****@h/db`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# Query parameters of a presigned URL that must never be shown (matched case-insensitively as
# substrings): SigV4 `X-Amz-Signature`/`X-Amz-Credential`/`X-Amz-Security-Token`, SigV2
# `Signature`/`AWSAccessKeyId`.
SECRET_QUERY_PARTS = ("signature", "credential", "token", "accesskeyid")

# `name=value` anywhere in free text whose name is one of `SECRET_QUERY_PARTS`: a query string
# survives being cut out of its URL, quoted or JSON-escaped.
_SECRET_PARAM_IN_TEXT = re.compile(
    r"([\w.-]*(?:" + "|".join(SECRET_QUERY_PARTS) + r")[\w.-]*=)[^&\s\"'<>\\]+", re.IGNORECASE
)


def mask_query_secrets(text: str) -> str:
    """`text` with the secret query values of any presigned URL in it masked: a peer (a miner, S3)
    may echo the URL it was given, and logs and events must not carry its signature."""
    if "=" not in text:  # the common case, without running the pattern
        return text
    return _SECRET_PARAM_IN_TEXT.sub(lambda m: m.group(1) + MASK, text)


def _check_url_parts(raw: str) -> None:
    """Reject a URL whose port is not a number in range, at start rather than at the first connect.

    The message never repeats the URL: it may hold a password.
    """
    try:
        urlsplit(raw).port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("has an invalid host or port") from None


class Settings(BaseSettings):
    """Every static setting. Dynamic (`DYNAMIC_*`) values live in `dynamic_config` instead."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    # --- chain ---
    BITTENSOR_NETUID: int = Field(12, ge=0, le=65535)
    BITTENSOR_NETWORK: str = "finney"
    BITTENSOR_WALLET_NAME: str = "validator"
    BITTENSOR_WALLET_HOTKEY_NAME: str = "default"
    BITTENSOR_WALLET_DIRECTORY: str = "~/.bittensor/wallets"
    # A dev-only seed (hex or mnemonic or //URI); when set it replaces the wallet folder. Localnet uses it.
    HOTKEY_SEED: SecretStr | None = None

    # --- facilitator ---
    FACILITATOR_URI: str = "wss://facilitator.computehorde.io/ws/v0/"

    # --- trusted miner (cross-validation) ---
    TRUSTED_MINER_KEY: str | None = None
    TRUSTED_MINER_ADDRESS: str | None = None
    TRUSTED_MINER_PORT: int | None = Field(None, ge=1, le=65535)

    # --- S3 ---
    S3_BUCKET_NAME_PROMPTS: str | None = None
    S3_BUCKET_NAME_ANSWERS: str | None = None
    AWS_ACCESS_KEY_ID: str | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None
    AWS_DEFAULT_REGION: str | None = None
    AWS_ENDPOINT_URL: str | None = None
    # The prompt generator's model (docs/crossval.md §9.3): it names the generator image
    # (`...prompt-gen-{model}:v0-latest`) and is its `--model_name`, so it must be a valid image-name part.
    # `phi3` is the reference's default.
    PROMPT_GENERATION_MODEL: str = Field(
        "phi3", min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$"
    )

    # --- debug miner (debug run-synthetic-jobs) ---
    DEBUG_MINER_KEY: str | None = None
    DEBUG_MINER_ADDRESS: str = "127.0.0.1"
    DEBUG_MINER_PORT: int | None = Field(None, ge=1, le=65535)
    DEBUG_MINER_COUNT: int = Field(1, ge=1, le=4096)

    # --- platform ---
    DATABASE_URL: SecretStr = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/horde")
    AMQP_URL: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    DEBUG_TOKEN: SecretStr | None = None
    SERVICE_HOST: str = "127.0.0.1"
    LOG_LEVEL: str = "INFO"
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    DYNAMIC_CONFIG_SOURCE: str | None = None
    SYNTHETIC_HASHCAT_DIFFICULTY: HashcatDifficulty = HashcatDifficulty.PRODUCTION
    LOCALNET_CHAIN_URL: str | None = None
    # Metagraph snapshot cadence overrides (docs/scheduling.md §6); unset: production or localnet default.
    METAGRAPH_SYNC_EVERY_BLOCKS: int | None = Field(None, ge=1)
    METAGRAPH_SYNC_POLL_INTERVAL_S: float | None = Field(None, gt=0, le=3600)
    # Batch planning and running (docs/scheduling.md §7.5, §8); unset: production or localnet default.
    # Every validator of the subnet must share the cycle length and the run offset, or their slots
    # stop interleaving: change them on a private network only.
    SCHEDULER_CYCLE_LENGTH: int | None = Field(None, ge=4)
    SYNTHETIC_JOBS_RUN_OFFSET: int | None = Field(None, ge=0)
    BITTENSOR_APPROXIMATE_BLOCK_DURATION_S: float | None = Field(None, gt=0, le=60)
    SCHEDULER_PLAN_INTERVAL_S: float | None = Field(None, gt=0, le=3600)
    SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS: int | None = Field(None, ge=0, le=100)
    SYNTHETIC_JOBS_PLANNER_WAIT_IN_ADVANCE_BLOCKS: int | None = Field(None, ge=0, le=100)
    # Debug only: run a batch at once instead of at this validator's slot; such batches are never scored.
    DEBUG_DONT_STAGGER_VALIDATORS: bool = False
    # Miners per `batch.shard.requested` (one job-runner delivery); unset: one shard for all miners.
    SHARD_SIZE: int | None = Field(None, ge=1)
    # How the weights service writes weights (docs/scoring.md §2.1): `auto` lets the chain decide between a
    # direct set and its timelocked commit; `commit-reveal-v2` is the salted commit this validator reveals.
    WEIGHTS_MODE: Literal["auto", "commit-reveal-v2"] = "auto"
    # Comma-separated SS58 hotkeys whose V2 job-request signatures we accept (docs/organic.md §1.6);
    # empty: every V2 request is refused. The gateway parses it at start (`parse_signers`): a typo stops it.
    FACILITATOR_V2_SIGNERS: str = ""
    # Sent to the facilitator as X-Validator-Version / X-Validator-Runner-Version (docs/organic.md §1.2).
    VALIDATOR_VERSION: str | None = None
    VALIDATOR_RUNNER_VERSION: str | None = None

    @field_validator("HOTKEY_SEED", mode="before")
    @classmethod
    def _blank_seed_is_unset(cls, v: object) -> object:
        # `HOTKEY_SEED=` (an uncommented .env.example line) means "use the wallet", not "an empty seed".
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, SecretStr) and not v.get_secret_value().strip():
            return None
        return v

    @field_validator("SCHEDULER_CYCLE_LENGTH")
    @classmethod
    def _even_cycle(cls, v: int | None) -> int | None:
        # A cycle is two epochs of equal length (docs/scheduling.md §1.2).
        if v is not None and v % 2:
            raise ValueError("must be even (a cycle is two epochs)")
        return v

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url_scheme(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not raw.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        _check_url_parts(raw)
        return v

    @field_validator("AMQP_URL")
    @classmethod
    def _amqp_url_scheme(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not raw.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        _check_url_parts(raw)
        return v

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL (driver forced to asyncpg)."""
        raw = self.DATABASE_URL.get_secret_value()
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if raw.startswith(prefix):
                return "postgresql+asyncpg://" + raw[len(prefix) :]
        return raw

    @property
    def amqp_url(self) -> str:
        return self.AMQP_URL.get_secret_value()

    def safe_dump(self) -> dict[str, Any]:
        """All settings with every secret masked: the only form that may be logged or shown."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                out[name] = mask_url(raw) if "://" in raw else MASK
            else:
                out[name] = value
        return out


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "?"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if err["type"] != "missing" else f"{loc}: missing")
    return "invalid configuration: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; a bad value raises `ConfigError` with one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings (cached). Tests call `get_settings.cache_clear()` after changing env."""
    return load_settings()
