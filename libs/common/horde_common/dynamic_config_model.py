"""DYNAMIC_* settings, the pure part: the typed model, items, and parsing/validating documents (no I/O).

`DynamicSettings` is the one place that names every key: its field, its alias (the `DYNAMIC_*` key
as sources and the table spell it), its type and its default. The validators on the field types
are the only coercion: a value a source gives is checked by validating it into the model, so what
a document may contain and what a reader gets cannot drift apart. See `horde_common.dynamic_config`
(which re-exports these names) for the document format and the semantics of items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

# Same logger name as before the split from `dynamic_config`, so log filters keep matching.
logger = logging.getLogger("horde_common.dynamic_config")

PREFIX = "DYNAMIC_"


class DynamicConfigError(Exception):
    """A source could not be read or is not a valid dynamic config document (one-line message)."""


# --- value types: what a source may give for each kind of key ------------------------------------


def _as_bool(value: Any) -> bool:
    """A JSON boolean, the strings true/false/1/0 (any case, padded), or the integers 0 and 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected a boolean, got {value!r}")


def _as_int(value: Any) -> int:
    """An integer, a float with no fraction, or a string `int()` reads; never a boolean."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _as_float(value: Any) -> float:
    """A number or a string `float()` reads; never a boolean."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


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


def _class_map(cast: type) -> Callable[[Any], dict[str, Any]]:
    """A per-class map is given as its text, `class=value,...` (docs/miner-protocol.md §0), never as
    a JSON object: the text is what the sources publish, and what is stored and shown."""

    def parse(value: Any) -> dict[str, Any]:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return parse_class_map(value, cast=cast)

    return parse


def _class_map_text(value: Mapping[str, Any]) -> str:
    """The map back as text, so a dumped model validates again."""
    return ",".join(f"{name}={num}" for name, num in value.items())


Flag = Annotated[bool, BeforeValidator(_as_bool)]
Int = Annotated[int, BeforeValidator(_as_int)]
Number = Annotated[float, BeforeValidator(_as_float)]
FloatClassMap = Annotated[
    dict[str, float], BeforeValidator(_class_map(float)), PlainSerializer(_class_map_text, return_type=str)
]
IntClassMap = Annotated[
    dict[str, int], BeforeValidator(_class_map(int)), PlainSerializer(_class_map_text, return_type=str)
]


class DynamicSettings(BaseModel):
    """The DYNAMIC_* values, one typed field per key (the alias is the key).

    The defaults are the production values in effect in late November 2024 (docs/miner-protocol.md
    §0, docs/scoring.md §4.2, docs/organic.md §3.8); later production changes are published as
    dated items, not defaults (see `horde_common.dynamic_config`). A class map's default is its
    text, as a source would give it.
    """

    # strict: the field validators above are the only coercion; pydantic's own lax rules (which
    # differ, e.g. on booleans as integers) never apply. Unknown keys are a caller's bug here:
    # documents drop them before they reach the model.
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", populate_by_name=True)

    # synthetic jobs and scoring
    weights_version: Int = Field(4, alias="DYNAMIC_WEIGHTS_VERSION")
    manifest_score_multiplier: Number = Field(1.3, alias="DYNAMIC_MANIFEST_SCORE_MULTIPLIER")
    manifest_dance_ratio_threshold: Number = Field(1.4, alias="DYNAMIC_MANIFEST_DANCE_RATIO_THRESHOLD")
    executor_class_weights: FloatClassMap = Field(
        "spin_up-4min.gpu-24gb=85,always_on.llm.a6000=15",
        alias="DYNAMIC_EXECUTOR_CLASS_WEIGHTS",
        validate_default=True,
    )
    miner_max_executors_per_class: IntClassMap = Field(
        "always_on.llm.a6000=5",
        alias="DYNAMIC_MINER_MAX_EXECUTORS_PER_CLASS",
        validate_default=True,
    )
    synthetic_jobs_flow_version: Int = Field(2, alias="DYNAMIC_SYNTHETIC_JOBS_FLOW_VERSION")
    # scheduling
    planner_wait_in_advance_blocks: Int = Field(
        3, alias="DYNAMIC_SYNTHETIC_JOBS_PLANNER_WAIT_IN_ADVANCE_BLOCKS"
    )
    planner_poll_interval_s: Number = Field(4.0, alias="DYNAMIC_SYNTHETIC_JOBS_PLANNER_POLL_INTERVAL")
    planner_max_oversleep_blocks: Int = Field(3, alias="DYNAMIC_SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS")
    block_finalization_number: Int = Field(3, alias="DYNAMIC_BLOCK_FINALIZATION_NUMBER")
    # weights and commit-reveal
    commit_reveal_weights_enabled: Flag = Field(True, alias="DYNAMIC_COMMIT_REVEAL_WEIGHTS_ENABLED")
    commit_reveal_weights_interval: Int = Field(722, alias="DYNAMIC_COMMIT_REVEAL_WEIGHTS_INTERVAL")
    commit_reveal_commit_start_offset: Int = Field(361, alias="DYNAMIC_COMMIT_REVEAL_COMMIT_START_OFFSET")
    commit_reveal_commit_end_buffer: Int = Field(15, alias="DYNAMIC_COMMIT_REVEAL_COMMIT_END_BUFFER")
    commit_reveal_reveal_end_buffer: Int = Field(15, alias="DYNAMIC_COMMIT_REVEAL_REVEAL_END_BUFFER")
    max_weight: Int = Field(65535, alias="DYNAMIC_MAX_WEIGHT")
    weight_revealing_ttl_s: Int = Field(120, alias="DYNAMIC_WEIGHT_REVEALING_TTL")
    weight_revealing_hard_ttl_s: Int = Field(125, alias="DYNAMIC_WEIGHT_REVEALING_HARD_TTL")
    weight_revealing_attempts: Int = Field(50, alias="DYNAMIC_WEIGHT_REVEALING_ATTEMPTS")
    weight_revealing_failure_backoff_s: Int = Field(5, alias="DYNAMIC_WEIGHT_REVEALING_FAILURE_BACKOFF")
    # LLM prompts cross-validation
    max_prompt_series: Int = Field(3840, alias="DYNAMIC_MAX_PROMPT_SERIES")
    target_number_of_prompt_samples_ready: Int = Field(
        3840, alias="DYNAMIC_TARGET_NUMBER_OF_PROMPT_SAMPLES_READY"
    )
    prompts_series_in_a_single_generation: Int = Field(
        20, alias="DYNAMIC_PROMPTS_SERIES_IN_A_SINGLE_GENERATION"
    )
    number_of_prompts_in_series: Int = Field(240, alias="DYNAMIC_NUMBER_OF_PROMPTS_IN_SERIES")
    number_of_prompts_per_workload: Int = Field(240, alias="DYNAMIC_NUMBER_OF_PROMPTS_PER_WORKLOAD")
    number_of_prompts_to_sample_from_series: Int = Field(
        1, alias="DYNAMIC_NUMBER_OF_PROMPTS_TO_SAMPLE_FROM_SERIES"
    )
    # organic jobs
    organic_job_timeout_s: Int = Field(300, alias="DYNAMIC_ORGANIC_JOB_TIMEOUT")
    organic_job_wait_timeout_s: Int = Field(300, alias="DYNAMIC_ORGANIC_JOB_WAIT_TIMEOUT")
    organic_job_max_retries: Int = Field(3, alias="DYNAMIC_ORGANIC_JOB_MAX_RETRIES")

    @classmethod
    def resolve(cls, items: Mapping[str, Sequence[ConfigItem]], now: datetime) -> DynamicSettings:
        """The values in effect at `now` (see `resolve_values`)."""
        return cls.model_validate(resolve_values(items, now))


# Key -> default as a source gives it (a class map as its text), in the model's field order.
DEFAULTS: dict[str, Any] = {
    info.alias: info.default for info in DynamicSettings.model_fields.values() if info.alias is not None
}
# Key -> field name.
_FIELDS: dict[str, str] = {
    info.alias: name for name, info in DynamicSettings.model_fields.items() if info.alias is not None
}


def coerce_value(key: str, value: Any) -> Any:
    """`value` as `key` stores it, once validated by the model; raise ValueError when it does not fit.

    Scalars are stored converted (`"3"` -> 3); a class map keeps the text it was given in.
    """
    try:
        typed = getattr(DynamicSettings.model_validate({key: value}), _FIELDS[key])
    except ValidationError as exc:
        error = exc.errors()[0]
        reason = error.get("ctx", {}).get("error", error["msg"])
        raise ValueError(f"{key}: {reason}") from None
    return value if isinstance(typed, dict) else typed


# --- items ---------------------------------------------------------------------------------------


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


def effective_value(items: Sequence[ConfigItem], now: datetime, default: Any = None) -> Any:
    """Apply `items` in order, skipping those not yet effective at `now`; the last applied wins."""
    now = _utc(now)
    value = default
    for item in items:
        if item.effective_from is not None and _utc(item.effective_from) > now:
            continue
        value = item.value
    return value


def resolve_values(items: Mapping[str, Sequence[ConfigItem]], now: datetime) -> dict[str, Any]:
    """Every key's value in effect at `now`, as stored (a key without an effective item: its default)."""
    return {key: effective_value(items.get(key, ()), now, default) for key, default in DEFAULTS.items()}


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
