"""The scheduler refreshes DYNAMIC_* values from its configured source into the shared table."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from horde_common.config import load_settings
from horde_common.db import create_engine, session_factory
from horde_common.db.models import SystemEvent
from horde_common.dynamic_config import DynamicConfig
from horde_common.service import ServiceContext
from horde_scheduler.app import SPEC
from horde_scheduler.dynamic_config_refresh import configured_sources, dynamic_config_view, refresh_once


def test_sources_are_comma_separated() -> None:
    assert configured_sources(None) == []
    assert configured_sources(" a.json , https://x/y.json,") == ["a.json", "https://x/y.json"]


async def test_refresh_writes_values_and_bad_source_keeps_them(database_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": 3}]}, "OTHER": 1}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    engine = create_engine(database_url)
    try:
        ctx = ServiceContext(spec=SPEC, settings=load_settings(DYNAMIC_CONFIG_SOURCE=str(good)))
        ctx.session_factory = session_factory(engine)
        assert await refresh_once(ctx) == ["DYNAMIC_WEIGHTS_VERSION"]
        view = await dynamic_config_view(ctx)
        assert view["values"]["DYNAMIC_WEIGHTS_VERSION"] == 3

        ctx.settings = load_settings(DYNAMIC_CONFIG_SOURCE=str(bad))
        assert await refresh_once(ctx) == []
        async with ctx.sessions() as session:
            assert (await DynamicConfig.load(session, max_age_s=0)).weights_version == 3
            events = (await session.execute(select(SystemEvent))).scalars().all()
        assert any("dynamic config refresh failed" in e.long_description for e in events)
    finally:
        await engine.dispose()
