"""DYNAMIC_* settings: values that change without a release, stored in the `dynamic_config` table.

Each key holds an ordered list of items `{value, effective_from?, reason?}`. Reading a key walks
the items in order, skips the ones whose `effective_from` is still in the future, and the last item
already in effect wins; a key with no effective item falls back to its default. Items are kept, not
resolved at fetch time, so a scheduled change takes effect on time without another fetch.

The defaults are the production values in effect in late November 2024
(docs/miner-protocol.md §0, docs/scoring.md §4.2, docs/organic.md §3.8). Later production changes (class weights 75/25 from 2024-12-02 and 65/35 from
2024-12-04, LLM executor cap 10 from 2024-12-02) are not defaults: publish them as dated items.

Sources are JSON documents shaped like the reference's config repository:

    {"DYNAMIC_WEIGHTS_VERSION": {"description": "...", "items": [{"value": 4, "effective_from": "..."}]}}

(a bare list of items or a bare value is accepted too). Only `DYNAMIC_` keys are taken; other keys
are ignored, unknown `DYNAMIC_` keys are logged and ignored, and any bad value rejects the whole
document so the stored values stay as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models.dynamic import DynamicConfigEntry

# Re-exported: `horde_common.dynamic_config` stays the public import path for all of these.
from horde_common.dynamic_config_items import DEFAULTS as DEFAULTS
from horde_common.dynamic_config_items import PREFIX as PREFIX
from horde_common.dynamic_config_items import ConfigItem as ConfigItem
from horde_common.dynamic_config_items import DynamicConfigError as DynamicConfigError
from horde_common.dynamic_config_items import ParsedKey as ParsedKey
from horde_common.dynamic_config_items import _utc
from horde_common.dynamic_config_items import coerce_value as coerce_value
from horde_common.dynamic_config_items import effective_value as effective_value
from horde_common.dynamic_config_items import parse_class_map as parse_class_map
from horde_common.dynamic_config_items import parse_datetime as parse_datetime
from horde_common.dynamic_config_items import parse_document as parse_document
from horde_common.dynamic_config_items import parse_items as parse_items
from horde_common.dynamic_config_sources import HTTP_TIMEOUT_S as HTTP_TIMEOUT_S
from horde_common.dynamic_config_sources import REFERENCE_CONFIG_BASE as REFERENCE_CONFIG_BASE
from horde_common.dynamic_config_sources import USER_AGENT as USER_AGENT
from horde_common.dynamic_config_sources import read_source as read_source
from horde_common.dynamic_config_sources import reference_sources as reference_sources

logger = logging.getLogger(__name__)

CACHE_TTL_S = 300.0


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
