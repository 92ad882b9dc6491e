"""DYNAMIC_* settings, the database part: the `dynamic_config` table, refreshes and the read cache.

Split from `horde_common.dynamic_config` (which re-exports these names; see its docstring for the
document format and the semantics of items).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db.models.dynamic import DynamicConfigEntry
from horde_common.dynamic_config_model import DEFAULTS, ConfigItem, ParsedKey, parse_document, parse_items
from horde_common.dynamic_config_sources import read_source

# Same logger name as before the split from `dynamic_config`, so log filters keep matching.
logger = logging.getLogger("horde_common.dynamic_config")

# Sources are refreshed every 5 minutes (docs/miner-protocol.md §0): a shorter cache would only add
# reads, a longer one would delay a refresh for readers.
CACHE_TTL_S = 300.0


class ItemsCache:
    """The stored items, read at most once per `max_age_s` per process and database.

    Class-level because every reader in the process shares it (readers get only a session); a
    refresh in this process clears it, a refresh elsewhere is seen when it expires.
    """

    _entries: ClassVar[dict[str, tuple[float, dict[str, list[ConfigItem]]]]] = {}

    @classmethod
    async def items(
        cls, session: AsyncSession, max_age_s: float = CACHE_TTL_S
    ) -> dict[str, list[ConfigItem]]:
        bind = session.bind
        cache_key = str(getattr(bind, "url", "")) if bind is not None else ""
        cached = cls._entries.get(cache_key)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        items = await load_items(session)
        cls._entries[cache_key] = (time.monotonic(), items)
        return items

    @classmethod
    def clear(cls) -> None:
        cls._entries.clear()


async def load_items(session: AsyncSession) -> dict[str, list[ConfigItem]]:
    """Every known key's stored items; a key whose stored items no longer validate is left out (it
    reads as its default) rather than failing every reader."""
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


async def upsert_keys(
    session: AsyncSession, parsed: Mapping[str, ParsedKey], origin: Mapping[str, str]
) -> None:
    """Replace the stored items of each key in `parsed` (`origin[key]`: the source it came from)."""
    for key, parsed_key in parsed.items():
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
    await upsert_keys(session, merged, origin)
    ItemsCache.clear()
    logger.info("dynamic config refreshed: %d keys from %s", len(merged), ", ".join(sources))
    return sorted(merged)


async def refresh_from_source(session: AsyncSession, source: str) -> list[str]:
    """`refresh_from_sources` for one JSON file path or http(s) URL."""
    return await refresh_from_sources(session, [source])
