"""S3 for cross-validation: presigned URLs, public URLs and bounded transfers (docs/crossval.md §1–§4).

The validator itself never reads objects with its credentials: it hands out presigned PUT URLs (the
trusted miner and miners upload through them) and reads every object back through its public,
unsigned URL, exactly as the reference validator does (docs/crossval.md §3). boto3 only signs URLs
here (and serves `horde s3 provision`/`check`); the bytes travel over plain HTTP with httpx.

boto3 and httpx are imported inside the functions: importing boto3 costs about a second, and the
`horde` CLI (`--help` in particular) must not pay for it.

Secrets never reach a log line or an exception message: URLs are shown through `safe_url`, which
masks the signature, credential and token of a presigned query string (docs/crossval.md §4.3).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from horde_common.config import MASK, SECRET_QUERY_PARTS, mask_query_secrets
from horde_common.event_types import SystemEventSubtype, SystemEventType

if TYPE_CHECKING:
    from horde_common.config import Settings

# The public endpoint when `AWS_ENDPOINT_URL` is unset: the reference's default (docs/crossval.md §3).
AWS_DEFAULT_PUBLIC_ENDPOINT = "https://s3.amazonaws.com"
# The reference's presign expiry: a job's uploads happen within its 300 s timeout, with room to spare.
PRESIGN_EXPIRY_S = 3600
# The reference's answers download timeout (docs/crossval.md §4.1); callers may pass another.
DOWNLOAD_TIMEOUT_S = 5.0
# A workload text is ~240 prompts; an upload taking longer than this is a stuck S3, not a slow one.
UPLOAD_TIMEOUT_S = 30.0
# Series files (~240 short prompts) and answer files (240 answers of ≤256 tokens) are well under
# 1 MiB; 16 MiB leaves room for larger series while refusing a hostile or broken multi-GB object.
MAX_DOWNLOAD_BYTES = 16 * 1024 * 1024
# boto3 calls (provisioning, `horde s3 check`) give up on an unresponsive endpoint after this.
BOTO_CONNECT_TIMEOUT_S = 10.0
BOTO_READ_TIMEOUT_S = 30.0
# An S3 XML error names its code within its first few hundred bytes; read no more of an error body.
_ERROR_BODY_BYTES = 4096


def safe_url(url: str) -> str:
    """`url` with the secret query values of a presigned URL masked; safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.query:
        return url
    pairs = [
        (k, MASK if any(s in k.lower() for s in SECRET_QUERY_PARTS) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="*/")))


def scrub_text(text: str) -> str:
    """Free text (a miner's error, a validation message) with the secret query values of any
    presigned URL in it masked, as `safe_url` masks them: a peer may echo the URL it was given."""
    return mask_query_secrets(text)


# --- errors -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Event:
    """The SystemEvent row an S3 failure becomes; the event type is the caller's (the task it hit)."""

    type: SystemEventType
    subtype: SystemEventSubtype
    long_description: str
    # Always a dict: the reference's S3 events had no data and broke a NOT NULL column (docs/crossval.md §4.2).
    data: dict[str, Any] = field(default_factory=dict)


class S3Error(Exception):
    """Any S3 failure. `str()` is one line with no secret in it: URLs are passed through `safe_url`."""

    subtype: ClassVar[SystemEventSubtype] = SystemEventSubtype.FAILURE

    def event(self, event_type: SystemEventType, prefix: str = "") -> S3Event:
        """The system event to record for this error, e.g. `event(LLM_PROMPT_ANSWERING, "Failed to ...: ")`."""
        return S3Event(event_type, self.subtype, f"{prefix}{self!r}")


class S3ConfigError(S3Error):
    """A bucket name or credential the operation needs is not configured."""


class S3PresignError(S3Error):
    """boto3 could not build a presigned URL (bad endpoint, no credentials)."""


class S3UploadError(S3Error):
    """An upload failed: refused, unreachable or timed out."""

    subtype = SystemEventSubtype.ERROR_UPLOADING_TO_S3


class S3DownloadError(S3Error):
    """A download failed: non-2xx, unreachable, too large or too slow.

    `status`: the HTTP status S3 answered with, None when it did not answer (unreachable, too
    slow), so a caller can tell a missing object (404/403) from an S3 it could not reach.
    """

    subtype = SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class S3ObjectTooLarge(S3DownloadError):
    """The object is larger than the caller's `max_bytes`; nothing past the limit was read."""


class S3Timeout(S3DownloadError):
    """The download did not finish within its total timeout."""


class S3UploadTimeout(S3UploadError):
    """The upload did not finish within its total timeout."""


def _describe(exc: BaseException, *secrets: str) -> str:
    """A one-line description of `exc` (an httpx or botocore error) with every secret removed."""
    text = f"{type(exc).__name__}: {exc}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def _s3_code(body: bytes) -> str:
    """` NoSuchBucket` from an S3 XML error body, else "": the reason an operator can act on.

    Only the code, never the message: some services echo the request (and its signature) there.
    """
    match = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", body[:_ERROR_BODY_BYTES])
    return f" {match.group(1).decode()}" if match else ""


# --- settings -----------------------------------------------------------------------------------------


def endpoint_url(settings: Settings) -> str | None:
    """`AWS_ENDPOINT_URL`, or None for AWS itself. Blank counts as unset (docs/crossval.md §2):
    installers write `AWS_ENDPOINT_URL=`, which boto3 would reject as an invalid endpoint."""
    value = (settings.AWS_ENDPOINT_URL or "").strip()
    return value or None


def prompts_bucket(settings: Settings) -> str:
    """`S3_BUCKET_NAME_PROMPTS`, or S3ConfigError: prompt generation cannot run without it."""
    return _bucket(settings.S3_BUCKET_NAME_PROMPTS, "S3_BUCKET_NAME_PROMPTS")


def answers_bucket(settings: Settings) -> str:
    """`S3_BUCKET_NAME_ANSWERS`, or S3ConfigError: sampling and answering cannot run without it."""
    return _bucket(settings.S3_BUCKET_NAME_ANSWERS, "S3_BUCKET_NAME_ANSWERS")


def _bucket(value: str | None, name: str) -> str:
    if not value or not value.strip():
        raise S3ConfigError(f"{name} is not set")
    return value.strip()


def _secrets(settings: Settings) -> tuple[str, ...]:
    secret = settings.AWS_SECRET_ACCESS_KEY
    return (secret.get_secret_value() if secret else "", settings.AWS_ACCESS_KEY_ID or "")


def client(settings: Settings, service: str = "s3", region: str | None = None) -> Any:
    """A boto3 client (`s3`, or `iam` for provisioning) from the settings.

    Signature v4 always (the only one every region and S3-compatible service accepts). With a
    custom endpoint, path-style addressing: URLs are `{endpoint}/{bucket}/{key}` as the public URLs
    are (docs/crossval.md §3). Unset credentials or region fall back to boto3's own chain.
    """
    import boto3
    from botocore.config import Config

    secret = settings.AWS_SECRET_ACCESS_KEY
    endpoint = endpoint_url(settings)
    config = Config(
        signature_version="s3v4",
        connect_timeout=BOTO_CONNECT_TIMEOUT_S,
        read_timeout=BOTO_READ_TIMEOUT_S,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else {},
    )
    return boto3.client(
        service,  # type: ignore[call-overload]
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID or None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        region_name=region or settings.AWS_DEFAULT_REGION or None,
        endpoint_url=endpoint,
        config=config,
    )


# --- URLs ---------------------------------------------------------------------------------------------


def public_url(settings: Settings, bucket: str, key: str, prefix: str = "") -> str:
    """The unsigned URL `{endpoint}/{bucket}/{prefix}{key}` that every reader uses (docs/crossval.md §3).

    The endpoint is `AWS_ENDPOINT_URL`, or `https://s3.amazonaws.com` when it is unset or blank.
    Stored in the database and handed to miners: it must never carry a signature.
    """
    base = (endpoint_url(settings) or AWS_DEFAULT_PUBLIC_ENDPOINT).rstrip("/")
    return f"{base}/{bucket}/{quote(prefix + key, safe='/')}"


def _presign(settings: Settings, method: str, bucket: str, key: str, expires_s: int) -> str:
    if expires_s <= 0:
        raise ValueError("expires_s must be positive")
    try:
        url: str = client(settings).generate_presigned_url(
            method, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )
    except Exception as exc:  # botocore raises many unrelated types here (endpoint, credentials)
        raise S3PresignError(
            f"cannot presign {method} s3://{bucket}/{key}: {_describe(exc, *_secrets(settings))}"
        ) from None
    return url


def presigned_put_url(settings: Settings, bucket: str, key: str, *, expires_s: int, prefix: str = "") -> str:
    """A URL anyone may PUT `{prefix}{key}` to for `expires_s` seconds (what miners upload through).

    A secret: log it only through `safe_url`. No network call: signing is local.
    """
    return _presign(settings, "put_object", bucket, prefix + key, expires_s)


def presigned_get_url(settings: Settings, bucket: str, key: str, *, expires_s: int, prefix: str = "") -> str:
    """A URL anyone may GET `{prefix}{key}` from for `expires_s` seconds (private buckets, checks)."""
    return _presign(settings, "get_object", bucket, prefix + key, expires_s)


# --- transfers ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Downloaded:
    """An object's bytes and its `Last-Modified` (S3 gives it to the second; None when the server
    sent none or an unparseable one)."""

    body: bytes
    last_modified: datetime | None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def download_bytes(
    url: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> bytes:
    """`download_object`'s body."""
    return (await download_object(url, max_bytes=max_bytes, timeout_s=timeout_s)).body


async def download_object(
    url: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> Downloaded:
    """GET `url` (public or presigned) with a total time and size bound; typed errors otherwise.

    The timeout covers connecting, the headers and the whole body, so a server that trickles bytes
    cannot hold the caller. A declared or actual size above `max_bytes` is refused before more than
    `max_bytes` are read.
    """
    import httpx

    shown = safe_url(url)
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as http:
            async with http.stream("GET", url) as response:
                if not response.is_success:
                    head = bytearray()  # enough of the body for the error code, never all of it
                    async for chunk in response.aiter_bytes():
                        head += chunk
                        if len(head) >= _ERROR_BODY_BYTES:
                            break
                    code = _s3_code(bytes(head))
                    raise S3DownloadError(
                        f"GET {shown}: HTTP {response.status_code}{code}", status=response.status_code
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise S3ObjectTooLarge(f"GET {shown}: {declared} bytes, more than {max_bytes}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise S3ObjectTooLarge(f"GET {shown}: more than {max_bytes} bytes")
                return Downloaded(bytes(body), _http_date(response.headers.get("last-modified")))
    except (TimeoutError, httpx.TimeoutException):
        raise S3Timeout(f"GET {shown}: not done within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise S3DownloadError(f"GET {shown}: {_describe(exc, url)}") from None


async def upload_bytes(
    url: str, body: bytes, *, timeout_s: float = UPLOAD_TIMEOUT_S, content_type: str | None = None
) -> None:
    """PUT `body` to a presigned URL within `timeout_s` in total; S3UploadError otherwise."""
    import httpx

    shown = safe_url(url)
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.put(url, content=body, headers=headers)
    except (TimeoutError, httpx.TimeoutException):
        raise S3UploadTimeout(f"PUT {shown}: not done within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise S3UploadError(f"PUT {shown}: {_describe(exc, url)}") from None
    if not response.is_success:
        raise S3UploadError(f"PUT {shown}: HTTP {response.status_code}{_s3_code(response.content)}")


# --- boto3 calls off the event loop -------------------------------------------------------------------


def put_object(settings: Settings, bucket: str, key: str, body: bytes) -> None:
    """Upload with the validator's own credentials (blocking; `horde s3 check`, tests)."""
    try:
        client(settings).put_object(Bucket=bucket, Key=key, Body=body)
    except Exception as exc:  # botocore ClientError, EndpointConnectionError, NoCredentialsError, ...
        raise S3UploadError(f"put s3://{bucket}/{key}: {_describe(exc, *_secrets(settings))}") from None


async def put_object_async(
    settings: Settings, bucket: str, key: str, body: bytes, *, timeout_s: float = UPLOAD_TIMEOUT_S
) -> None:
    """`put_object` in a worker thread, bounded by `timeout_s` so the event loop never waits on boto3.

    On timeout the thread is abandoned (boto3's own read timeout ends it) and S3UploadTimeout raised.
    """
    try:
        await asyncio.wait_for(asyncio.to_thread(put_object, settings, bucket, key, body), timeout_s)
    except TimeoutError:
        raise S3UploadTimeout(f"put s3://{bucket}/{key}: not done within {timeout_s:g} s") from None


async def presigned_put_url_async(
    settings: Settings, bucket: str, key: str, *, expires_s: int, prefix: str = "", timeout_s: float = 10.0
) -> str:
    """`presigned_put_url` off the event loop: the first call imports boto3 and builds a client (~1 s)."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(presigned_put_url, settings, bucket, key, expires_s=expires_s, prefix=prefix),
            timeout_s,
        )
    except TimeoutError:
        raise S3PresignError(
            f"presigning s3://{bucket}/{prefix}{key}: not done within {timeout_s:g} s"
        ) from None
