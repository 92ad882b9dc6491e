"""Keyed debug views (`/debug/<name>/<key>`): the bearer guard, 404 for a missing item, 400 for a bad key.

In-process (ASGI transport, no servers): the routes and the guard are what is under test, not the runner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from horde_common.config import load_settings
from horde_common.service import ServiceContext, ServiceSpec
from horde_common.service.app import DebugItemView, DebugKeyError, build_app

TOKEN = "test-debug-token"
ITEMS = {7: {"id": 7, "name": "seven"}}


@dataclass
class KeyedSpec(ServiceSpec):
    """A spec with keyed views, whether or not `ServiceSpec` declares the field itself."""

    debug_item_views: dict[str, DebugItemView] = field(default_factory=dict)


async def item_view(ctx: ServiceContext, key: str) -> dict[str, Any] | None:
    if not key.isdigit():
        raise DebugKeyError(f"item key must be a number, got {key!r}")
    return ITEMS.get(int(key))


async def broken_view(ctx: ServiceContext, key: str) -> dict[str, Any] | None:
    raise RuntimeError("boom")


@pytest.fixture()
async def client() -> AsyncIterator[httpx.AsyncClient]:
    spec = KeyedSpec(
        name="items-test",
        port=0,
        needs_db=False,
        needs_broker=False,
        debug_item_views={"item": item_view, "broken": broken_view},
    )
    ctx = ServiceContext(spec=spec, settings=load_settings(DEBUG_TOKEN=TOKEN))
    transport = httpx.ASGITransport(app=build_app(ctx, spec))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_keyed_views_need_the_bearer_token(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for path in ("/debug/item/7", "/debug/item/nope", "/debug/unknown/1"):
            resp = await client.get(path, headers=headers)
            assert resp.status_code == 401, (path, headers)
            assert resp.headers["www-authenticate"] == "Bearer"
            assert "seven" not in resp.text


async def test_keyed_views_with_the_token(client: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    found = await client.get("/debug/item/7", headers=auth)
    assert found.status_code == 200
    assert found.json() == {"id": 7, "name": "seven"}

    missing = await client.get("/debug/item/8", headers=auth)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "item/8: not found"}

    bad = await client.get("/debug/item/seven", headers=auth)
    assert bad.status_code == 400
    assert "must be a number" in bad.json()["detail"]

    unknown = await client.get("/debug/unknown/1", headers=auth)
    assert unknown.status_code == 404
    assert unknown.json()["item_views"] == ["broken", "item"]

    broken = await client.get("/debug/broken/1", headers=auth)
    assert broken.status_code == 500
    assert broken.json() == {"detail": "RuntimeError: boom"}

    index = (await client.get("/debug/", headers=auth)).json()
    assert index["item_views"] == ["broken", "item"]
    assert "config" in index["views"]


async def test_whole_views_are_unchanged(client: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/debug/loops", headers=auth)).json()["service"] == "items-test"
    assert (await client.get("/debug/nope", headers=auth)).status_code == 404
