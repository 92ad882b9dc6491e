"""The typed DYNAMIC_* model: each coercion a source may rely on, each rejection, and resolution."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from horde_common.dynamic_config import (
    DEFAULTS,
    ConfigItem,
    DynamicConfig,
    DynamicConfigError,
    DynamicSettings,
    coerce_value,
    parse_document,
    resolve_values,
)

NOW = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)
INT_KEY = "DYNAMIC_WEIGHTS_VERSION"
FLOAT_KEY = "DYNAMIC_MANIFEST_SCORE_MULTIPLIER"
BOOL_KEY = "DYNAMIC_COMMIT_REVEAL_WEIGHTS_ENABLED"
WEIGHTS_KEY = "DYNAMIC_EXECUTOR_CLASS_WEIGHTS"
CAPS_KEY = "DYNAMIC_MINER_MAX_EXECUTORS_PER_CLASS"


def test_every_key_is_one_field_and_defaults_are_as_sources_give_them() -> None:
    fields = DynamicSettings.model_fields
    assert [info.alias for info in fields.values()] == list(DEFAULTS)
    assert len(DEFAULTS) == 29
    assert DEFAULTS[WEIGHTS_KEY] == "spin_up-4min.gpu-24gb=85,always_on.llm.a6000=15"
    assert DEFAULTS[CAPS_KEY] == "always_on.llm.a6000=5"
    assert DEFAULTS[FLOAT_KEY] == 1.3 and DEFAULTS[BOOL_KEY] is True and DEFAULTS[INT_KEY] == 4
    defaults = DynamicSettings()
    assert defaults == DynamicConfig.defaults().settings
    assert defaults.executor_class_weights == {"spin_up-4min.gpu-24gb": 85.0, "always_on.llm.a6000": 15.0}
    assert defaults.miner_max_executors_per_class == {"always_on.llm.a6000": 5}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (-2, -2), ("3", 3), (" 4 ", 4), ("-7", -7), (4.0, 4), (1e3, 1000), (10**30, 10**30)],
)
def test_integers(value: Any, expected: int) -> None:
    stored = coerce_value(INT_KEY, value)
    assert stored == expected and type(stored) is int
    assert DynamicSettings.model_validate({INT_KEY: value}).weights_version == expected


@pytest.mark.parametrize(
    "value", [True, False, 4.5, math.nan, math.inf, "4.0", "four", "", None, [4], {"v": 4}]
)
def test_integers_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{INT_KEY}: expected an integer, got "):
        coerce_value(INT_KEY, value)
    with pytest.raises(ValidationError):
        DynamicSettings.model_validate({INT_KEY: value})


@pytest.mark.parametrize(
    ("value", "expected"), [(2, 2.0), (1.5, 1.5), ("1.5", 1.5), (" 2 ", 2.0), ("1e1", 10.0), (-1, -1.0)]
)
def test_numbers(value: Any, expected: float) -> None:
    stored = coerce_value(FLOAT_KEY, value)
    assert stored == expected and type(stored) is float
    assert DynamicSettings.model_validate({FLOAT_KEY: value}).manifest_score_multiplier == expected


@pytest.mark.parametrize("value", [True, False, "x", "", None, [1.0], {"v": 1.0}])
def test_numbers_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{FLOAT_KEY}: expected a number, got "):
        coerce_value(FLOAT_KEY, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        (" TRUE ", True),
        ("False", False),
        ("1", True),
        ("0", False),
        (1, True),
        (0, False),
    ],
)
def test_booleans(value: Any, expected: bool) -> None:
    assert coerce_value(BOOL_KEY, value) is expected
    assert DynamicSettings.model_validate({BOOL_KEY: value}).commit_reveal_weights_enabled is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, 0.0, "yes", "on", "", None, [True]])
def test_booleans_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{BOOL_KEY}: expected a boolean, got "):
        coerce_value(BOOL_KEY, value)


def test_class_maps_are_given_and_stored_as_text() -> None:
    text = "spin_up-4min.gpu-24gb=1.0, always_on.llm.a6000 = 3,broken,neg=-1"
    assert coerce_value(WEIGHTS_KEY, text) == text  # stored as given
    settings = DynamicSettings.model_validate({WEIGHTS_KEY: text, CAPS_KEY: "always_on.llm.a6000=0,x=1.5"})
    assert settings.executor_class_weights == {"spin_up-4min.gpu-24gb": 1.0, "always_on.llm.a6000": 3.0}
    assert settings.miner_max_executors_per_class == {"always_on.llm.a6000": 0}  # 1.5 is no int
    assert DynamicSettings.model_validate({CAPS_KEY: ""}).miner_max_executors_per_class == {}


@pytest.mark.parametrize("value", [5, 1.5, True, None, {"always_on.llm.a6000": 5}, ["a=1"]])
def test_class_maps_rejected_unless_text(value: Any) -> None:
    for key in (WEIGHTS_KEY, CAPS_KEY):
        with pytest.raises(ValueError, match=f"^{key}: expected a string, got "):
            coerce_value(key, value)


def test_model_by_name_by_alias_frozen_no_extras_and_round_trip() -> None:
    by_name = DynamicSettings.model_validate({"weights_version": "5", "max_weight": 7})
    by_alias = DynamicSettings.model_validate({INT_KEY: 5, "DYNAMIC_MAX_WEIGHT": "7"})
    assert by_name == by_alias and by_name.weights_version == 5 and by_name.max_weight == 7
    with pytest.raises(ValidationError):
        DynamicSettings.model_validate({"DYNAMIC_SOMETHING_NEW": 1})
    with pytest.raises(ValidationError):
        by_name.weights_version = 6  # type: ignore[misc]
    dumped = by_alias.model_dump(by_alias=True)
    assert dumped[WEIGHTS_KEY] == "spin_up-4min.gpu-24gb=85.0,always_on.llm.a6000=15.0"
    assert DynamicSettings.model_validate(dumped) == by_alias


def test_resolution_at_now() -> None:
    items = {
        INT_KEY: [ConfigItem(3), ConfigItem(5, datetime(2025, 1, 1, tzinfo=UTC))],
        WEIGHTS_KEY: [ConfigItem("a=1", datetime(2024, 11, 1, tzinfo=UTC))],
        CAPS_KEY: [ConfigItem("x=1", datetime(2030, 1, 1, tzinfo=UTC))],  # not yet: default
    }
    values = resolve_values(items, NOW)
    assert list(values) == list(DEFAULTS)
    assert (values[INT_KEY], values[WEIGHTS_KEY], values[CAPS_KEY]) == (3, "a=1", DEFAULTS[CAPS_KEY])
    settings = DynamicSettings.resolve(items, NOW)
    assert settings.weights_version == 3 and settings.executor_class_weights == {"a": 1.0}
    assert DynamicSettings.resolve(items, datetime(2025, 6, 1)).weights_version == 5  # naive: UTC


def test_facade_reads_model_fields_and_keeps_stored_values() -> None:
    cfg = DynamicConfig({WEIGHTS_KEY: [ConfigItem("a=2,b=3")], INT_KEY: [ConfigItem(2)]}, NOW)
    for name in DynamicSettings.model_fields:
        assert getattr(cfg, name) == getattr(cfg.settings, name)
    assert cfg.executor_class_weights == {"a": 2.0, "b": 3.0}
    assert cfg.values[WEIGHTS_KEY] == "a=2,b=3"  # what /debug/dynamic-config shows
    assert cfg[INT_KEY] == cfg.get(INT_KEY) == 2
    with pytest.raises(AttributeError):
        _ = cfg.no_such_setting


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"items": [{"value": "a=1"}, {"value": {"a": 1}}]}, "expected a string"),
        ({"items": [{"value": "a=1"}, {"value": 3, "effective_from": "2030-01-01"}]}, "expected a string"),
    ],
)
def test_one_bad_item_rejects_the_whole_document(spec: object, message: str) -> None:
    doc = {INT_KEY: 3, WEIGHTS_KEY: spec}
    with pytest.raises(DynamicConfigError, match=f"invalid dynamic config: {WEIGHTS_KEY}: {message}"):
        parse_document(doc)


def test_future_bad_scalar_rejects_the_document() -> None:
    doc = {INT_KEY: {"items": [{"value": 3}, {"value": "x", "effective_from": "2030-01-01T00:00:00Z"}]}}
    with pytest.raises(DynamicConfigError, match=f"^invalid dynamic config: {INT_KEY}: expected an integer"):
        parse_document(doc)
