"""Dynamic config: effective_from semantics, typed accessors, refresh from JSON, DB round trip."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db import create_engine, session_factory
from horde_common.db.models import DynamicConfigEntry
from horde_common.dynamic_config import (
    DEFAULTS,
    ConfigItem,
    DynamicConfig,
    DynamicConfigError,
    effective_value,
    parse_class_map,
    parse_document,
    reference_sources,
    refresh_from_source,
    refresh_from_sources,
)

NOW = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)


# --- pure ----------------------------------------------------------------------------------------


def test_effective_from_last_effective_item_wins() -> None:
    items = [
        ConfigItem(2),
        ConfigItem(3, datetime(2024, 8, 29, tzinfo=UTC)),
        ConfigItem(4, datetime(2024, 10, 3, tzinfo=UTC)),
        ConfigItem(5, datetime(2025, 1, 1, tzinfo=UTC)),  # future: skipped
    ]
    assert effective_value(items, NOW, default=1) == 4
    assert effective_value(items, datetime(2024, 9, 1, tzinfo=UTC), default=1) == 3
    assert effective_value(items, datetime(2024, 1, 1, tzinfo=UTC), default=1) == 2
    assert effective_value(items, datetime(2025, 6, 1, tzinfo=UTC), default=1) == 5


def test_effective_from_applies_in_list_order_not_date_order() -> None:
    items = [
        ConfigItem("late", datetime(2024, 11, 1, tzinfo=UTC)),
        ConfigItem("early", datetime(2024, 1, 1, tzinfo=UTC)),
    ]
    assert effective_value(items, NOW, default="d") == "early"


def test_no_effective_item_falls_back_to_default() -> None:
    assert effective_value([ConfigItem(9, datetime(2030, 1, 1, tzinfo=UTC))], NOW, default=1) == 1
    assert effective_value([], NOW, default=1) == 1


def test_production_defaults_of_late_november_2024() -> None:
    cfg = DynamicConfig.defaults()
    assert cfg.weights_version == 4
    assert cfg.manifest_score_multiplier == 1.3
    assert cfg.manifest_dance_ratio_threshold == 1.4
    assert cfg.executor_class_weights == {"spin_up-4min.gpu-24gb": 85.0, "always_on.llm.a6000": 15.0}
    assert cfg.miner_max_executors_per_class == {"always_on.llm.a6000": 5}
    assert cfg.max_prompt_series == 3840
    assert cfg.target_number_of_prompt_samples_ready == 3840
    assert cfg.prompts_series_in_a_single_generation == 20
    assert cfg.number_of_prompts_in_series == 240
    assert cfg.number_of_prompts_per_workload == 240
    assert cfg.number_of_prompts_to_sample_from_series == 1
    assert cfg.planner_wait_in_advance_blocks == 3
    assert cfg.planner_poll_interval_s == 4.0
    assert cfg.planner_max_oversleep_blocks == 3
    assert cfg.block_finalization_number == 3
    assert cfg.synthetic_jobs_flow_version == 2
    assert cfg.commit_reveal_weights_enabled is True
    assert (cfg.commit_reveal_weights_interval, cfg.commit_reveal_commit_start_offset) == (722, 361)
    assert (cfg.commit_reveal_commit_end_buffer, cfg.commit_reveal_reveal_end_buffer) == (15, 15)
    assert cfg.max_weight == 65535
    assert (cfg.weight_revealing_ttl_s, cfg.weight_revealing_hard_ttl_s) == (120, 125)
    assert (cfg.weight_revealing_attempts, cfg.weight_revealing_failure_backoff_s) == (50, 5)
    assert (cfg.organic_job_timeout_s, cfg.organic_job_wait_timeout_s, cfg.organic_job_max_retries) == (
        300,
        300,
        3,
    )
    assert all(key.startswith("DYNAMIC_") for key in DEFAULTS)


def test_class_map_skips_malformed_and_negative() -> None:
    assert parse_class_map("a=1, b = 2.5,broken,c=-1,=3,d=x,", cast=float) == {"a": 1.0, "b": 2.5}
    assert parse_class_map("always_on.llm.a6000=0,x=2", cast=int) == {"always_on.llm.a6000": 0, "x": 2}
    assert parse_class_map("", cast=int) == {}


def test_document_parsing_shapes_and_filtering() -> None:
    doc = {
        "DYNAMIC_WEIGHTS_VERSION": {
            "description": "d",
            "items": [{"value": "3"}, {"value": 4, "reason": "r"}],
        },
        "DYNAMIC_MANIFEST_SCORE_MULTIPLIER": 2,  # bare value
        "DYNAMIC_MAX_WEIGHT": [{"value": 100, "effective_from": "2024-01-01T00:00:00Z"}],  # bare list
        "DYNAMIC_SOMETHING_NEW": {"items": [{"value": 1}]},  # unknown: ignored
        "NOT_DYNAMIC": {"items": [{"value": 1}]},  # not DYNAMIC_: ignored
    }
    parsed = parse_document(doc)
    assert set(parsed) == {
        "DYNAMIC_WEIGHTS_VERSION",
        "DYNAMIC_MANIFEST_SCORE_MULTIPLIER",
        "DYNAMIC_MAX_WEIGHT",
    }
    assert [i.value for i in parsed["DYNAMIC_WEIGHTS_VERSION"].items] == [3, 4]
    assert parsed["DYNAMIC_WEIGHTS_VERSION"].description == "d"
    assert parsed["DYNAMIC_MANIFEST_SCORE_MULTIPLIER"].items[0].value == 2.0
    assert parsed["DYNAMIC_MAX_WEIGHT"].items[0].effective_from == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],
        {"DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": "four"}]}},
        {"DYNAMIC_WEIGHTS_VERSION": {"items": [{"no_value": 1}]}},
        {"DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": 1, "effective_from": "yesterday"}]}},
        {"DYNAMIC_COMMIT_REVEAL_WEIGHTS_ENABLED": {"items": [{"value": "maybe"}]}},
        {"DYNAMIC_EXECUTOR_CLASS_WEIGHTS": {"items": [{"value": 5}]}},
        {"DYNAMIC_WEIGHTS_VERSION": {"description": "no items"}},
    ],
)
def test_bad_documents_are_rejected(doc: object) -> None:
    with pytest.raises(DynamicConfigError):
        parse_document(doc)


def test_reference_sources() -> None:
    urls = reference_sources()
    assert urls[0].endswith("/validator-config-prod.json") and urls[1].endswith("/common-config-prod.json")


# --- database ------------------------------------------------------------------------------------


@pytest.fixture()
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = create_engine(database_url)
    factory = session_factory(engine)
    async with factory() as s:
        await s.execute(DynamicConfigEntry.__table__.delete())
        await s.commit()
    DynamicConfig.clear_cache()
    async with factory() as s:
        yield s
    async with factory() as s:
        await s.execute(DynamicConfigEntry.__table__.delete())
        await s.commit()
    DynamicConfig.clear_cache()
    await engine.dispose()


def _write(tmp_path: Path, doc: object, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


async def test_refresh_from_file_and_load(session: AsyncSession, tmp_path: Path) -> None:
    doc = {
        "DYNAMIC_EXECUTOR_CLASS_WEIGHTS": {
            "description": "class weights",
            "items": [
                {"value": "spin_up-4min.gpu-24gb=85,always_on.llm.a6000=15"},
                {
                    "value": "spin_up-4min.gpu-24gb=75,always_on.llm.a6000=25",
                    "effective_from": "2024-12-02T00:00:00Z",
                },
                {
                    "value": "spin_up-4min.gpu-24gb=65,always_on.llm.a6000=35",
                    "effective_from": "2024-12-04T00:00:00Z",
                },
            ],
        },
        "DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": 2}]},
        "OTHER": 1,
    }
    keys = await refresh_from_source(session, _write(tmp_path, doc))
    await session.commit()
    assert keys == ["DYNAMIC_EXECUTOR_CLASS_WEIGHTS", "DYNAMIC_WEIGHTS_VERSION"]

    row = (
        await session.execute(
            select(DynamicConfigEntry).where(DynamicConfigEntry.key == "DYNAMIC_WEIGHTS_VERSION")
        )
    ).scalar_one()
    assert row.items == [{"value": 2}]

    cfg = await DynamicConfig.load(session, NOW)
    assert cfg.weights_version == 2
    assert cfg.executor_class_weights == {"spin_up-4min.gpu-24gb": 85.0, "always_on.llm.a6000": 15.0}
    assert cfg.manifest_score_multiplier == 1.3  # not in the document: default
    later = await DynamicConfig.load(session, datetime(2024, 12, 3, tzinfo=UTC))
    assert later.executor_class_weights["always_on.llm.a6000"] == 25.0
    latest = await DynamicConfig.load(session, datetime(2024, 12, 5, tzinfo=UTC))
    assert latest.executor_class_weights["always_on.llm.a6000"] == 35.0


async def test_bad_file_is_rejected_and_old_values_kept(session: AsyncSession, tmp_path: Path) -> None:
    await refresh_from_source(
        session, _write(tmp_path, {"DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": 3}]}})
    )
    await session.commit()

    bad_value = {
        "DYNAMIC_MAX_WEIGHT": {"items": [{"value": 7}]},
        "DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": "x"}]},
    }
    with pytest.raises(DynamicConfigError, match="DYNAMIC_WEIGHTS_VERSION"):
        await refresh_from_source(session, _write(tmp_path, bad_value, "bad.json"))
    with pytest.raises(DynamicConfigError, match="not valid JSON"):
        await refresh_from_source(session, _write(tmp_path, "{not json", "broken.json"))
    with pytest.raises(DynamicConfigError, match="cannot read"):
        await refresh_from_source(session, str(tmp_path / "missing.json"))
    await session.commit()

    cfg = await DynamicConfig.load(session, NOW)
    assert cfg.weights_version == 3
    assert cfg.max_weight == 65535


async def test_later_source_wins(session: AsyncSession, tmp_path: Path) -> None:
    first = _write(tmp_path, {"DYNAMIC_WEIGHTS_VERSION": 2, "DYNAMIC_MAX_WEIGHT": 10}, "validator.json")
    second = _write(tmp_path, {"DYNAMIC_WEIGHTS_VERSION": 3}, "common.json")
    await refresh_from_sources(session, [first, second])
    await session.commit()
    cfg = await DynamicConfig.load(session, NOW)
    assert (cfg.weights_version, cfg.max_weight) == (3, 10)


async def test_load_is_cached(session: AsyncSession, tmp_path: Path) -> None:
    await refresh_from_source(session, _write(tmp_path, {"DYNAMIC_WEIGHTS_VERSION": 2}))
    await session.commit()
    assert (await DynamicConfig.load(session, NOW)).weights_version == 2
    # a write behind the cache's back is not seen until the cache expires
    await session.execute(DynamicConfigEntry.__table__.update().values(items=[{"value": 1}]))
    await session.commit()
    assert (await DynamicConfig.load(session, NOW)).weights_version == 2
    assert (await DynamicConfig.load(session, NOW, max_age_s=0)).weights_version == 1


@pytest.fixture()
def http_server() -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


async def test_refresh_from_http(session: AsyncSession, http_server) -> None:  # type: ignore[no-untyped-def]
    base, routes = http_server
    routes["/ok.json"] = (200, json.dumps({"DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": 3}]}}).encode())
    await refresh_from_source(session, f"{base}/ok.json")
    await session.commit()
    with pytest.raises(DynamicConfigError, match="cannot fetch"):
        await refresh_from_source(session, f"{base}/missing.json")
    assert (await DynamicConfig.load(session, NOW)).weights_version == 3


async def test_future_item_takes_effect_without_refetch(session: AsyncSession, tmp_path: Path) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    doc = {
        "DYNAMIC_WEIGHTS_VERSION": {"items": [{"value": 3}, {"value": 4, "effective_from": soon.isoformat()}]}
    }
    await refresh_from_source(session, _write(tmp_path, doc))
    await session.commit()
    assert (await DynamicConfig.load(session)).weights_version == 3
    assert (await DynamicConfig.load(session, soon + timedelta(seconds=1))).weights_version == 4
