"""DYNAMIC_* settings, the pure part: defaults, items, and parsing/validating documents (no I/O).

Split from `horde_common.dynamic_config` (which re-exports these names; see its docstring for the
document format and the semantics of items).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Same logger name as before the split from `dynamic_config`, so log filters keep matching.
logger = logging.getLogger("horde_common.dynamic_config")

PREFIX = "DYNAMIC_"

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
