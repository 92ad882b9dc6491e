"""`horde s3 provision` and `horde s3 check` run as operators run them (a subprocess) against the real
moto_server on 127.0.0.1:9000 (S3 and IAM), each test with buckets of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from horde_cli.s3 import provision
from horde_common import s3
from horde_common.config import Settings

MOTO = "http://127.0.0.1:9000"
ADMIN = {
    "AWS_ENDPOINT_URL": MOTO,
    "AWS_ACCESS_KEY_ID": "AKIAHORDEADMIN000001",
    "AWS_SECRET_ACCESS_KEY": "horde-admin-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def horde(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter, with no S3 setting but those given (and no `.env`: cwd is empty)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    return subprocess.run(
        [sys.executable, "-m", "horde_cli.main", *args],
        env={**base, "COLUMNS": "250", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def admin_client(service: str) -> Any:
    return s3.client(Settings(_env_file=None, **ADMIN), service)  # type: ignore[call-arg]


def provision_in_process(prompts: str, answers: str) -> None:
    """What `horde s3 provision` does, without a second interpreter (the subprocess tests cover that)."""
    admin = Settings(_env_file=None, **ADMIN)  # type: ignore[call-arg]
    provision(admin, prompts, answers, "us-east-1", create_user=False, user_name="unused")


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"horde-prompts-{tag}", f"horde-answers-{tag}"


def env_lines(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line and line[:1].isupper())


def test_provision_creates_public_buckets_and_prints_env(tmp_path: Path) -> None:
    prompts, answers = names()
    proc = horde("s3", "provision", prompts, answers, "--region", "eu-west-1", cwd=tmp_path, **ADMIN)
    assert proc.returncode == 0, proc.stderr
    client = admin_client("s3")
    for bucket in (prompts, answers):
        assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
        statement = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"][0]
        assert statement["Principal"] == "*" and statement["Action"] == "s3:GetObject"
        assert statement["Resource"] == f"arn:aws:s3:::{bucket}/*"
    lines = env_lines(proc.stdout)
    assert lines == {
        "S3_BUCKET_NAME_PROMPTS": prompts,
        "S3_BUCKET_NAME_ANSWERS": answers,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": MOTO,
    }
    # Idempotent: the same buckets again are fine.
    again = horde("s3", "provision", prompts, answers, "--region", "eu-west-1", cwd=tmp_path, **ADMIN)
    assert again.returncode == 0, again.stderr


def test_provision_with_create_user_restricts_the_user_to_the_two_buckets(tmp_path: Path) -> None:
    prompts, answers = names()
    user = f"horde-validator-{uuid.uuid4().hex[:8]}"
    proc = horde(
        "s3", "provision", prompts, answers, "--create-user", "--user-name", user, cwd=tmp_path, **ADMIN
    )
    assert proc.returncode == 0, proc.stderr
    lines = env_lines(proc.stdout)
    iam = admin_client("iam")
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [lines["AWS_ACCESS_KEY_ID"]]
    assert lines["AWS_SECRET_ACCESS_KEY"]
    assert lines["AWS_DEFAULT_REGION"] == "us-east-1"
    document = iam.get_user_policy(UserName=user, PolicyName="horde-validator-buckets")["PolicyDocument"]
    if isinstance(document, str):
        document = json.loads(document)
    (statement,) = document["Statement"]
    assert sorted(statement["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert sorted(statement["Resource"]) == sorted(f"arn:aws:s3:::{b}/*" for b in (prompts, answers))
    # The printed lines are a working configuration.
    check = horde("s3", "check", cwd=tmp_path, **lines)
    assert check.returncode == 0, check.stdout + check.stderr


def test_check_passes_after_provisioning(tmp_path: Path) -> None:
    prompts, answers = names()
    provision_in_process(prompts, answers)
    proc = horde(
        "s3", "check", cwd=tmp_path, S3_BUCKET_NAME_PROMPTS=prompts, S3_BUCKET_NAME_ANSWERS=answers, **ADMIN
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("│ presign ", "│ upload (presigned PUT) ", "│ public GET ", "│ presigned GET "):
        assert proc.stdout.count(step) == 2
    assert proc.stdout.count("│ ok ") == 8
    assert "FAILED" not in proc.stdout
    assert ADMIN["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr


@pytest.mark.parametrize("missing", ["absent", "unset"])
def test_check_fails_on_a_missing_bucket(tmp_path: Path, missing: str) -> None:
    prompts, answers = names()
    provision_in_process(prompts, answers)
    env = {**ADMIN, "S3_BUCKET_NAME_PROMPTS": prompts}
    if missing == "absent":
        env["S3_BUCKET_NAME_ANSWERS"] = f"horde-absent-{uuid.uuid4().hex[:8]}"
    proc = horde("s3", "check", cwd=tmp_path, **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAILED" in out
    assert ("NoSuchBucket" in out) if missing == "absent" else ("S3_BUCKET_NAME_ANSWERS is not set" in out)
    assert out.count("│ ok ") >= 4  # the prompts bucket still works, and says so
    assert "X-Amz-Signature=**********" in out or missing == "unset"
    assert ADMIN["AWS_SECRET_ACCESS_KEY"] not in out + proc.stderr


def test_provision_reports_a_failed_step(tmp_path: Path) -> None:
    """An unreachable endpoint: one stderr line naming the step, no secret, exit 1."""
    prompts, answers = names()
    env = {**ADMIN, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    proc = horde("s3", "provision", prompts, answers, cwd=tmp_path, **env)
    assert proc.returncode == 1
    assert "provisioning failed:" in proc.stderr and f"create bucket {prompts}" in proc.stderr
    assert ADMIN["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr
