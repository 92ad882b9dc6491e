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

This module is the public import path. The parts: `dynamic_config_model` (the typed
`DynamicSettings`, items and documents; pure), `dynamic_config_sources` (reading a file or URL),
`dynamic_config_store` (the table, refreshes and the read cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

# Re-exported: `horde_common.dynamic_config` stays the public import path for all of these.
from horde_common.dynamic_config_model import DEFAULTS as DEFAULTS
from horde_common.dynamic_config_model import PREFIX as PREFIX
from horde_common.dynamic_config_model import ConfigItem as ConfigItem
from horde_common.dynamic_config_model import DynamicConfigError as DynamicConfigError
from horde_common.dynamic_config_model import DynamicSettings as DynamicSettings
from horde_common.dynamic_config_model import ParsedKey as ParsedKey
from horde_common.dynamic_config_model import _utc
from horde_common.dynamic_config_model import coerce_value as coerce_value
from horde_common.dynamic_config_model import effective_value as effective_value
from horde_common.dynamic_config_model import parse_class_map as parse_class_map
from horde_common.dynamic_config_model import parse_datetime as parse_datetime
from horde_common.dynamic_config_model import parse_document as parse_document
from horde_common.dynamic_config_model import parse_items as parse_items
from horde_common.dynamic_config_model import resolve_values as resolve_values
from horde_common.dynamic_config_sources import HTTP_TIMEOUT_S as HTTP_TIMEOUT_S
from horde_common.dynamic_config_sources import REFERENCE_CONFIG_BASE as REFERENCE_CONFIG_BASE
from horde_common.dynamic_config_sources import USER_AGENT as USER_AGENT
from horde_common.dynamic_config_sources import read_source as read_source
from horde_common.dynamic_config_sources import reference_sources as reference_sources
from horde_common.dynamic_config_store import CACHE_TTL_S as CACHE_TTL_S
from horde_common.dynamic_config_store import ItemsCache
from horde_common.dynamic_config_store import load_items as load_items
from horde_common.dynamic_config_store import refresh_from_source as refresh_from_source
from horde_common.dynamic_config_store import refresh_from_sources as refresh_from_sources


class DynamicConfig:
    """The DYNAMIC_* values in effect at `now`.

    `settings` is the typed `DynamicSettings`; its fields also read directly off this object
    (`config.weights_version` is `config.settings.weights_version`). `values` maps each key to its
    value as stored (a class map as its text), which is what `/debug/dynamic-config` shows.
    `DynamicConfig.load(session)` reads the table at most once per `CACHE_TTL_S` per process and
    database; `DynamicConfig.defaults()` needs no database.
    """

    def __init__(self, items: Mapping[str, Sequence[ConfigItem]] | None = None, now: datetime | None = None):
        self.now = _utc(now) if now is not None else datetime.now(UTC)
        self.items = {k: list(v) for k, v in (items or {}).items()}
        self.values: dict[str, Any] = resolve_values(self.items, self.now)
        self.settings = DynamicSettings.model_validate(self.values)

    @classmethod
    def defaults(cls) -> DynamicConfig:
        return cls()

    @classmethod
    def clear_cache(cls) -> None:
        ItemsCache.clear()

    @classmethod
    async def load(
        cls, session: AsyncSession, now: datetime | None = None, *, max_age_s: float = CACHE_TTL_S
    ) -> DynamicConfig:
        return cls(await ItemsCache.items(session, max_age_s), now)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str) -> Any:
        return self.values[key]

    def __getattr__(self, name: str) -> Any:
        """A `DynamicSettings` field (only called when normal lookup fails)."""
        if name in DynamicSettings.model_fields:
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
