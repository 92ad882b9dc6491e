"""S3 fixtures on the real moto_server: fresh public buckets per test (see `testing.s3`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from horde_common.config import Settings, get_settings
from testing.s3 import bucket_env, public_bucket, s3_settings


@pytest.fixture()
def bucket() -> str:
    """A new public-read bucket of this test's own."""
    return public_bucket()


@pytest.fixture()
def s3_conf() -> Settings:
    """Settings on moto with a prompts and an answers bucket of this test's own."""
    return s3_settings(**bucket_env())


@pytest.fixture()
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Like `s3_conf`, but through the environment, for code that reads `get_settings()`."""
    for name, value in bucket_env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
