"""`horde s3 provision` and `horde s3 check`: set up and verify the two cross-validation buckets.

docs/crossval.md §5 (provisioning) and §6 (checking). boto3 is reached only through
`horde_common.s3` and only once a command runs; this module is imported by the command bodies.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from horde_common import s3

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from horde_common.config import Settings

# AWS's default region; also what `CreateBucket` assumes when no location constraint is sent.
DEFAULT_REGION = "us-east-1"
# The object `horde s3 check` writes: one fixed key per bucket, overwritten on every run, so that a
# restricted user (no DeleteObject) leaves no pile of probe files behind.
CHECK_KEY = "horde-check/probe.txt"
# A check's presigned URLs only need to live for the check itself.
CHECK_PRESIGN_EXPIRY_S = 300
# Each transfer of a check; a healthy S3 answers a few bytes in well under a second.
CHECK_TRANSFER_TIMEOUT_S = 15.0


class ProvisionError(Exception):
    """A provisioning step failed; `str()` names the step and holds no secret."""


@dataclass(frozen=True)
class Provisioned:
    """What `provision` did: the buckets, their region, and the user and key it created, if any."""

    prompts_bucket: str
    answers_bucket: str
    region: str
    endpoint: str | None
    user_name: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def env_lines(self) -> list[str]:
        """The `.env` lines the validator needs (docs/operations.md §2.2)."""
        lines = [
            f"S3_BUCKET_NAME_PROMPTS={self.prompts_bucket}",
            f"S3_BUCKET_NAME_ANSWERS={self.answers_bucket}",
            f"AWS_DEFAULT_REGION={self.region}",
        ]
        if self.access_key_id:
            lines += [
                f"AWS_ACCESS_KEY_ID={self.access_key_id}",
                f"AWS_SECRET_ACCESS_KEY={self.secret_access_key}",
            ]
        if self.endpoint:
            lines.append(f"AWS_ENDPOINT_URL={self.endpoint}")
        return lines


def public_read_policy(bucket: str) -> dict[str, Any]:
    """Anonymous GetObject on every object: miners and the validator read through public URLs."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }


def user_policy(buckets: list[str]) -> dict[str, Any]:
    """The validator user's rights: read and write objects of these buckets, nothing else.

    Presigned URLs carry the signer's rights, so this is also all a miner holding one can do.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "HordeValidatorObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{b}/*" for b in buckets],
            }
        ],
    }


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _step(what: str, call: Any, *args: Any, ok_codes: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Run one boto3 call; an error whose code is in `ok_codes` is "already done", anything else fails."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # botocore's ClientError and connection errors: any stops provisioning
        if _error_code(exc) in ok_codes:
            return None
        raise ProvisionError(f"{what}: {type(exc).__name__}: {exc}") from None


def provision(
    settings: Settings, prompts: str, answers: str, region: str, *, create_user: bool, user_name: str
) -> Provisioned:
    """Create both buckets in `region` with public read; optionally a user restricted to them.

    Idempotent for the buckets (an existing bucket of ours is reused and its policy rewritten); a
    second `--create-user` adds another access key to the existing user.
    """
    client = s3.client(settings, "s3", region=region)
    for bucket in (prompts, answers):
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != DEFAULT_REGION:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        _step(
            f"create bucket {bucket}", client.create_bucket, ok_codes=("BucketAlreadyOwnedByYou",), **kwargs
        )
        # New AWS buckets block public policies; the public URLs need them (docs/crossval.md §3).
        block = dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), False
        )
        _step(
            f"allow a public policy on {bucket}",
            client.put_public_access_block,
            Bucket=bucket,
            PublicAccessBlockConfiguration=block,
            ok_codes=("NotImplemented",),  # S3-compatible services without the AWS block settings
        )
        policy = json.dumps(public_read_policy(bucket))
        _step(f"public read policy on {bucket}", client.put_bucket_policy, Bucket=bucket, Policy=policy)
    result = Provisioned(prompts, answers, region, s3.endpoint_url(settings))
    if not create_user:
        return result
    iam = s3.client(settings, "iam", region=region)
    _step(f"create user {user_name}", iam.create_user, UserName=user_name, ok_codes=("EntityAlreadyExists",))
    _step(
        f"policy of user {user_name}",
        iam.put_user_policy,
        UserName=user_name,
        PolicyName="horde-validator-buckets",
        PolicyDocument=json.dumps(user_policy([prompts, answers])),
    )
    key = _step(f"access key of user {user_name}", iam.create_access_key, UserName=user_name)["AccessKey"]
    return Provisioned(
        prompts,
        answers,
        region,
        result.endpoint,
        user_name=user_name,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
    )


# --- check --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckRow:
    """One line of `horde s3 check`: a step on a bucket, whether it worked, and why not."""

    bucket: str
    step: str
    ok: bool
    detail: str = ""


async def _check_bucket(settings: Settings, label: str, bucket: str | None) -> list[CheckRow]:
    """Presigned PUT, then public GET and presigned GET of the same bytes: what the validator relies on."""
    if not bucket:
        return [CheckRow(label, "configured", False, f"S3_BUCKET_NAME_{label.upper()} is not set")]
    name = f"{label} ({bucket})"
    body = f"horde s3 check {uuid.uuid4()}\n".encode()
    rows: list[CheckRow] = []
    try:
        put = await s3.presigned_put_url_async(settings, bucket, CHECK_KEY, expires_s=CHECK_PRESIGN_EXPIRY_S)
        get = await asyncio.to_thread(
            s3.presigned_get_url, settings, bucket, CHECK_KEY, expires_s=CHECK_PRESIGN_EXPIRY_S
        )
    except s3.S3Error as exc:
        return [CheckRow(name, "presign", False, str(exc))]
    rows.append(CheckRow(name, "presign", True))
    try:
        await s3.upload_bytes(put, body, timeout_s=CHECK_TRANSFER_TIMEOUT_S, content_type="text/plain")
    except s3.S3Error as exc:
        return [*rows, CheckRow(name, "upload (presigned PUT)", False, str(exc))]
    rows.append(CheckRow(name, "upload (presigned PUT)", True))
    for step, url in (("public GET", s3.public_url(settings, bucket, CHECK_KEY)), ("presigned GET", get)):
        try:
            got = await s3.download_bytes(url, max_bytes=len(body), timeout_s=CHECK_TRANSFER_TIMEOUT_S)
        except s3.S3Error as exc:
            rows.append(CheckRow(name, step, False, str(exc)))
            continue
        same = got == body
        rows.append(CheckRow(name, step, same, "" if same else "read back other bytes than were written"))
    return rows


async def check(settings: Settings) -> list[CheckRow]:
    """Every check row for both buckets; nothing raises, failures are rows."""
    prompts = await _check_bucket(settings, "prompts", settings.S3_BUCKET_NAME_PROMPTS)
    answers = await _check_bucket(settings, "answers", settings.S3_BUCKET_NAME_ANSWERS)
    return prompts + answers


def check_table(rows: list[CheckRow], endpoint: str | None) -> Table:
    """The rows as a rich table, failures in red with their reason."""
    from rich.table import Table

    table = Table(title=f"S3 check ({endpoint or 'AWS'})", title_justify="left")
    table.add_column("bucket", style="bold")
    table.add_column("step")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for row in rows:
        table.add_row(row.bucket, row.step, "[green]ok[/]" if row.ok else "[red]FAILED[/]", row.detail)
    return table


def print_provisioned(console: Console, done: Provisioned) -> None:
    """What was set up, then the `.env` lines to copy (the secret key is shown once, here only)."""
    console.print(
        f"[green]buckets ready[/] in {done.region}: {done.prompts_bucket}, {done.answers_bucket} (public read)"
    )
    if done.user_name:
        console.print(f"[green]user ready:[/] {done.user_name} (objects of the two buckets only)")
    console.print("add to the validator's .env:")
    for line in done.env_lines():
        console.print(line, highlight=False, markup=False, soft_wrap=True)
