"""DYNAMIC_* settings: reading a source document (an http(s) URL, a `file://` URL or a file path).

Split from `horde_common.dynamic_config` (which re-exports these names).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from horde_common.dynamic_config_model import DynamicConfigError

HTTP_TIMEOUT_S = 10.0
USER_AGENT = "backend-developers-ltd"
REFERENCE_CONFIG_BASE = (
    "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/"
)


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
