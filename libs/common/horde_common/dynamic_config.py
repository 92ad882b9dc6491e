"""DYNAMIC_* settings: values that change without a release, stored in the `dynamic_config` table.

Each key holds an ordered list of items `{value, effective_from?, reason?}`. Reading a key walks
the items in order, skips the ones whose `effective_from` is still in the future, and the last item
already in effect wins; a key with no effective item falls back to its default. Items are kept, not
resolved at fetch time, so a scheduled change takes effect on time without another fetch.

The defaults are the production values in effect in late November 2024 (spec A §0, spec B §4.2,
spec C §3.8). Later production changes (class weights 75/25 from 2024-12-02 and 65/35 from
2024-12-04, LLM executor cap 10 from 2024-12-02) are not defaults: publish them as dated items.

Sources are JSON documents shaped like the reference's config repository:

    {"DYNAMIC_WEIGHTS_VERSION": {"description": "...", "items": [{"value": 4, "effective_from": "..."}]}}

(a bare list of items or a bare value is accepted too). Only `DYNAMIC_` keys are taken; other keys
are ignored, unknown `DYNAMIC_` keys are logged and ignored, and any bad value rejects the whole
document so the stored values stay as they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models.dynamic import DynamicConfigEntry

logger = logging.getLogger(__name__)

PREFIX = "DYNAMIC_"
CACHE_TTL_S = 300.0
HTTP_TIMEOUT_S = 10.0
USER_AGENT = "backend-developers-ltd"
REFERENCE_CONFIG_BASE = (
    "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/"
)

DEFAULTS: dict[str, Any] = {
    # synthetic jobs and scoring
    "DYNAMIC_WEIGHTS_VERSION": 4,
    "DYNAMIC_MANIFEST_SCORE_MULTIPLIER": 1.3,
    "DYNAMIC_MANIFEST_DANCE_RATIO_THRESHOLD": 1.4,
    "DYNAMIC_EXECUTOR_CLASS_WEIGHTS": "spin_up-4min.gpu-24gb=85,always_on.llm.a6000=15",
    "DYNAMIC_MINER_MAX_EXECUTORS_PER_CLASS": "always_on.llm.a6000=5",
    "DYNAMIC_SYNTHETIC_JOBS_FLOW_VERSION": 2,
    # scheduling
    "DYNAMIC_SYNTHETIC_JOBS_PLANNER_WAIT_IN_ADVANCE_BLOCKS": 3,
    "DYNAMIC_SYNTHETIC_JOBS_PLANNER_POLL_INTERVAL": 4.0,
    "DYNAMIC_SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS": 3,
    "DYNAMIC_BLOCK_FINALIZATION_NUMBER": 3,
    # weights and commit-reveal
    "DYNAMIC_COMMIT_REVEAL_WEIGHTS_ENABLED": True,
    "DYNAMIC_COMMIT_REVEAL_WEIGHTS_INTERVAL": 722,
    "DYNAMIC_COMMIT_REVEAL_COMMIT_START_OFFSET": 361,
    "DYNAMIC_COMMIT_REVEAL_COMMIT_END_BUFFER": 15,
    "DYNAMIC_COMMIT_REVEAL_REVEAL_END_BUFFER": 15,
    "DYNAMIC_MAX_WEIGHT": 65535,
    "DYNAMIC_WEIGHT_REVEALING_TTL": 120,
    "DYNAMIC_WEIGHT_REVEALING_HARD_TTL": 125,
    "DYNAMIC_WEIGHT_REVEALING_ATTEMPTS": 50,
    "DYNAMIC_WEIGHT_REVEALING_FAILURE_BACKOFF": 5,
    # LLM prompts cross-validation
    "DYNAMIC_MAX_PROMPT_SERIES": 3840,
    "DYNAMIC_TARGET_NUMBER_OF_PROMPT_SAMPLES_READY": 3840,
    "DYNAMIC_PROMPTS_SERIES_IN_A_SINGLE_GENERATION": 20,
    "DYNAMIC_NUMBER_OF_PROMPTS_IN_SERIES": 240,
    "DYNAMIC_NUMBER_OF_PROMPTS_PER_WORKLOAD": 240,
    "DYNAMIC_NUMBER_OF_PROMPTS_TO_SAMPLE_FROM_SERIES": 1,
    # organic jobs
    "DYNAMIC_ORGANIC_JOB_TIMEOUT": 300,
    "DYNAMIC_ORGANIC_JOB_WAIT_TIMEOUT": 300,
    "DYNAMIC_ORGANIC_JOB_MAX_RETRIES": 3,
}


class DynamicConfigError(Exception):
    """A source could not be read or is not a valid dynamic config document (one-line message)."""


@dataclass(frozen=True)
class ConfigItem:
    value: Any
    effective_from: datetime | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value}
        if self.effective_from is not None:
            out["effective_from"] = self.effective_from.isoformat()
        if self.reason is not None:
            out["reason"] = self.reason
        return out


# --- pure helpers --------------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def parse_datetime(raw: Any) -> datetime:
    """ISO 8601 (a trailing `Z` allowed); naive values are taken as UTC."""
    if isinstance(raw, datetime):
        return _utc(raw)
    if not isinstance(raw, str):
        raise ValueError(f"effective_from must be an ISO datetime string, got {raw!r}")
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return _utc(datetime.fromisoformat(text))


def coerce_value(key: str, value: Any) -> Any:
    """Convert `value` to the type of `key`'s default; raise ValueError when it does not fit."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{key}: expected a boolean, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


def effective_value(items: Sequence[ConfigItem], now: datetime, default: Any = None) -> Any:
    """Apply `items` in order, skipping those not yet effective at `now`; the last applied wins."""
    now = _utc(now)
    value = default
    for item in items:
        if item.effective_from is not None and _utc(item.effective_from) > now:
            continue
        value = item.value
    return value


def parse_items(key: str, spec: Any) -> list[ConfigItem]:
    """One key of a source document: `{items: [...]}`, a list of items, or a bare value."""
    if isinstance(spec, Mapping) and "items" in spec:
        raw_items = spec["items"]
    elif isinstance(spec, Mapping) and "value" in spec:
        raw_items = [spec]
    elif isinstance(spec, list):
        raw_items = spec
    elif isinstance(spec, Mapping):
        raise ValueError(f"{key}: an object needs `items` (or `value`)")
    else:
        raw_items = [{"value": spec}]
    if not isinstance(raw_items, list):
        raise ValueError(f"{key}: `items` must be a list")
    items: list[ConfigItem] = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, Mapping) or "value" not in raw:
            raise ValueError(f"{key}: item {i} must be an object with a `value`")
        eff = raw.get("effective_from")
        try:
            effective_from = parse_datetime(eff) if eff not in (None, "") else None
        except ValueError as exc:
            raise ValueError(f"{key}: item {i}: bad effective_from {eff!r}") from exc
        reason = raw.get("reason")
        items.append(
            ConfigItem(
                value=coerce_value(key, raw["value"]),
                effective_from=effective_from,
                reason=None if reason is None else str(reason),
            )
        )
    return items


@dataclass(frozen=True)
class ParsedKey:
    items: list[ConfigItem]
    description: str


def parse_document(doc: Any) -> dict[str, ParsedKey]:
    """Validate a whole source document; raise DynamicConfigError on the first bad key."""
    if not isinstance(doc, Mapping):
        raise DynamicConfigError("dynamic config document must be a JSON object")
    out: dict[str, ParsedKey] = {}
    for key, spec in doc.items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        if key not in DEFAULTS:
            logger.warning("dynamic config: unknown key %s ignored", key)
            continue
        try:
            items = parse_items(key, spec)
        except ValueError as exc:
            raise DynamicConfigError(f"invalid dynamic config: {exc}") from exc
        description = spec.get("description", "") if isinstance(spec, Mapping) else ""
        out[key] = ParsedKey(items=items, description=str(description or ""))
    return out


def parse_class_map(raw: str, *, cast: type = float) -> dict[str, Any]:
    """Parse `"class=value,class=value"`; malformed pairs and negative values are skipped."""
    out: dict[str, Any] = {}
    for pair in raw.split(","):
        pair = pair.strip()
        if not pair:
            continue
        name, sep, num = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            logger.warning("dynamic config: malformed pair %r ignored", pair)
            continue
        try:
            value = cast(num.strip())
        except ValueError:
            logger.warning("dynamic config: malformed pair %r ignored", pair)
            continue
        if value < 0:
            logger.warning("dynamic config: negative value in %r ignored", pair)
            continue
        out[name] = value
    return out


# --- reading sources -----------------------------------------------------------------------------


def reference_sources(env: str = "prod") -> list[str]:
    """The reference's two documents, in the order they are applied (common wins on conflicts)."""
    return [
        f"{REFERENCE_CONFIG_BASE}validator-config-{env}.json",
        f"{REFERENCE_CONFIG_BASE}common-config-{env}.json",
    ]


async def read_source(source: str, *, http_timeout_s: float = HTTP_TIMEOUT_S) -> Any:
    """The JSON document at `source`: an http(s) URL, a `file://` URL, or a file path."""
    if source.startswith(("http://", "https://")):
        try:
            headers = {"User-Agent": USER_AGENT}
            async with httpx.AsyncClient(timeout=http_timeout_s, headers=headers) as client:
                response = await client.get(source)
                response.raise_for_status()
                text = response.text
        except httpx.HTTPError as exc:
            raise DynamicConfigError(f"cannot fetch dynamic config from {source}: {exc!r}") from exc
    else:
        path = Path(source.removeprefix("file://"))
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError as exc:
            raise DynamicConfigError(
                f"cannot read dynamic config file {path}: {exc.strerror or exc}"
            ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DynamicConfigError(f"dynamic config from {source} is not valid JSON: {exc}") from exc


async def refresh_from_sources(session: AsyncSession, sources: Sequence[str]) -> list[str]:
    """Read and validate every source (later ones win on conflicts), then upsert the keys they name.

    Nothing is written unless every source is valid. Runs in the caller's transaction (the caller
    commits). Returns the keys written.
    """
    merged: dict[str, ParsedKey] = {}
    origin: dict[str, str] = {}
    for source in sources:
        parsed = parse_document(await read_source(source))
        merged.update(parsed)
        origin.update(dict.fromkeys(parsed, source))
    for key, parsed_key in merged.items():
        stmt = insert(DynamicConfigEntry).values(
            key=key,
            items=[item.to_json() for item in parsed_key.items],
            description=parsed_key.description,
            source=origin[key],
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[DynamicConfigEntry.key],
            set_={
                "items": stmt.excluded["items"],
                "description": stmt.excluded.description,
                "source": stmt.excluded.source,
                "updated_at": datetime.now(UTC),
            },
        )
        await session.execute(stmt)
    await session.flush()
    DynamicConfig.clear_cache()
    logger.info("dynamic config refreshed: %d keys from %s", len(merged), ", ".join(sources))
    return sorted(merged)


async def refresh_from_source(session: AsyncSession, source: str) -> list[str]:
    """`refresh_from_sources` for one JSON file path or http(s) URL."""
    return await refresh_from_sources(session, [source])


# --- the values in effect ------------------------------------------------------------------------


async def _load_items(session: AsyncSession) -> dict[str, list[ConfigItem]]:
    rows = (await session.execute(select(DynamicConfigEntry.key, DynamicConfigEntry.items))).all()
    out: dict[str, list[ConfigItem]] = {}
    for key, raw_items in rows:
        if key not in DEFAULTS:
            continue
        try:
            out[key] = parse_items(key, {"items": raw_items})
        except ValueError:
            logger.exception("dynamic config: stored value of %s is invalid; using the default", key)
    return out


class DynamicConfig:
    """The DYNAMIC_* values in effect at `now`, with typed accessors.

    `DynamicConfig.load(session)` reads the table at most once per `CACHE_TTL_S` per process and
    database; `DynamicConfig.defaults()` needs no database.
    """

    _cache: ClassVar[dict[str, tuple[float, dict[str, list[ConfigItem]]]]] = {}

    def __init__(self, items: Mapping[str, Sequence[ConfigItem]] | None = None, now: datetime | None = None):
        self.now = _utc(now) if now is not None else datetime.now(UTC)
        self.items = {k: list(v) for k, v in (items or {}).items()}
        self.values: dict[str, Any] = {
            key: effective_value(self.items.get(key, ()), self.now, default)
            for key, default in DEFAULTS.items()
        }

    @classmethod
    def defaults(cls) -> DynamicConfig:
        return cls()

    @classmethod
    def clear_cache(cls) -> None:
        cls._cache.clear()

    @classmethod
    async def load(
        cls, session: AsyncSession, now: datetime | None = None, *, max_age_s: float = CACHE_TTL_S
    ) -> DynamicConfig:
        bind = session.bind
        cache_key = str(getattr(bind, "url", "")) if bind is not None else ""
        cached = cls._cache.get(cache_key)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            items = cached[1]
        else:
            items = await _load_items(session)
            cls._cache[cache_key] = (time.monotonic(), items)
        return cls(items, now)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str) -> Any:
        return self.values[key]

    # --- typed accessors ---

    @property
    def weights_version(self) -> int:
        return int(self.values["DYNAMIC_WEIGHTS_VERSION"])

    @property
    def synthetic_jobs_flow_version(self) -> int:
        return int(self.values["DYNAMIC_SYNTHETIC_JOBS_FLOW_VERSION"])

    @property
    def manifest_score_multiplier(self) -> float:
        return float(self.values["DYNAMIC_MANIFEST_SCORE_MULTIPLIER"])

    @property
    def manifest_dance_ratio_threshold(self) -> float:
        return float(self.values["DYNAMIC_MANIFEST_DANCE_RATIO_THRESHOLD"])

    @property
    def executor_class_weights(self) -> dict[str, float]:
        return parse_class_map(self.values["DYNAMIC_EXECUTOR_CLASS_WEIGHTS"], cast=float)

    @property
    def miner_max_executors_per_class(self) -> dict[str, int]:
        return parse_class_map(self.values["DYNAMIC_MINER_MAX_EXECUTORS_PER_CLASS"], cast=int)

    @property
    def planner_wait_in_advance_blocks(self) -> int:
        return int(self.values["DYNAMIC_SYNTHETIC_JOBS_PLANNER_WAIT_IN_ADVANCE_BLOCKS"])

    @property
    def planner_poll_interval_s(self) -> float:
        return float(self.values["DYNAMIC_SYNTHETIC_JOBS_PLANNER_POLL_INTERVAL"])

    @property
    def planner_max_oversleep_blocks(self) -> int:
        return int(self.values["DYNAMIC_SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS"])

    @property
    def block_finalization_number(self) -> int:
        return int(self.values["DYNAMIC_BLOCK_FINALIZATION_NUMBER"])

    @property
    def commit_reveal_weights_enabled(self) -> bool:
        return bool(self.values["DYNAMIC_COMMIT_REVEAL_WEIGHTS_ENABLED"])

    @property
    def commit_reveal_weights_interval(self) -> int:
        return int(self.values["DYNAMIC_COMMIT_REVEAL_WEIGHTS_INTERVAL"])

    @property
    def commit_reveal_commit_start_offset(self) -> int:
        return int(self.values["DYNAMIC_COMMIT_REVEAL_COMMIT_START_OFFSET"])

    @property
    def commit_reveal_commit_end_buffer(self) -> int:
        return int(self.values["DYNAMIC_COMMIT_REVEAL_COMMIT_END_BUFFER"])

    @property
    def commit_reveal_reveal_end_buffer(self) -> int:
        return int(self.values["DYNAMIC_COMMIT_REVEAL_REVEAL_END_BUFFER"])

    @property
    def max_weight(self) -> int:
        return int(self.values["DYNAMIC_MAX_WEIGHT"])

    @property
    def weight_revealing_ttl_s(self) -> int:
        return int(self.values["DYNAMIC_WEIGHT_REVEALING_TTL"])

    @property
    def weight_revealing_hard_ttl_s(self) -> int:
        return int(self.values["DYNAMIC_WEIGHT_REVEALING_HARD_TTL"])

    @property
    def weight_revealing_attempts(self) -> int:
        return int(self.values["DYNAMIC_WEIGHT_REVEALING_ATTEMPTS"])

    @property
    def weight_revealing_failure_backoff_s(self) -> int:
        return int(self.values["DYNAMIC_WEIGHT_REVEALING_FAILURE_BACKOFF"])

    @property
    def max_prompt_series(self) -> int:
        return int(self.values["DYNAMIC_MAX_PROMPT_SERIES"])

    @property
    def target_number_of_prompt_samples_ready(self) -> int:
        return int(self.values["DYNAMIC_TARGET_NUMBER_OF_PROMPT_SAMPLES_READY"])

    @property
    def prompts_series_in_a_single_generation(self) -> int:
        return int(self.values["DYNAMIC_PROMPTS_SERIES_IN_A_SINGLE_GENERATION"])

    @property
    def number_of_prompts_in_series(self) -> int:
        return int(self.values["DYNAMIC_NUMBER_OF_PROMPTS_IN_SERIES"])

    @property
    def number_of_prompts_per_workload(self) -> int:
        return int(self.values["DYNAMIC_NUMBER_OF_PROMPTS_PER_WORKLOAD"])

    @property
    def number_of_prompts_to_sample_from_series(self) -> int:
        return int(self.values["DYNAMIC_NUMBER_OF_PROMPTS_TO_SAMPLE_FROM_SERIES"])

    @property
    def organic_job_timeout_s(self) -> int:
        return int(self.values["DYNAMIC_ORGANIC_JOB_TIMEOUT"])

    @property
    def organic_job_wait_timeout_s(self) -> int:
        return int(self.values["DYNAMIC_ORGANIC_JOB_WAIT_TIMEOUT"])

    @property
    def organic_job_max_retries(self) -> int:
        return int(self.values["DYNAMIC_ORGANIC_JOB_MAX_RETRIES"])
