"""The real moto_server on 127.0.0.1:9000 (scripts/services), as the tests reach it.

moto accepts any credentials and keeps every bucket in one account, so each test isolates itself by
making buckets of its own (random names), never by credentials.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from horde_common import s3
from horde_common.config import Settings

MOTO = "http://127.0.0.1:9000"

# Credentials moto accepts; tests that check secrets never leak (libs/common/tests/test_s3.py) look
# for exactly these strings.
ACCESS_KEY = "AKIATESTHORDE0000001"
SECRET_KEY = "horde-test-secret-key-do-not-leak"

S3_ENV: dict[str, str] = {
    "AWS_ENDPOINT_URL": MOTO,
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_settings(**overrides: Any) -> Settings:
    """Settings pointing at moto (no `.env` read), with `overrides` on top."""
    return Settings(_env_file=None, **(S3_ENV | overrides))  # type: ignore[call-arg]


def public_bucket(prefix: str = "horde-test") -> str:
    """A new bucket with anonymous read, as `horde s3 provision` leaves it (docs/crossval.md §5)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    client = s3.client(s3_settings())
    client.create_bucket(Bucket=name)
    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{name}/*",
    }
    client.put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )
    return name


def bucket_env(prefix: str = "horde-test") -> dict[str, str]:
    """The S3 environment plus a fresh prompts and answers bucket, as `Settings` fields."""
    return S3_ENV | {
        "S3_BUCKET_NAME_PROMPTS": public_bucket(prefix),
        "S3_BUCKET_NAME_ANSWERS": public_bucket(prefix),
    }
