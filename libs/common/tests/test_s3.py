"""horde_common.s3 against the real moto_server on 127.0.0.1:9000 (scripts/services), over HTTP.

moto accepts any credentials; each test uses buckets of its own (the `bucket` fixture, testing/). The
stall and size cases use a tiny local HTTP server of the test's own that answers exactly as the case
needs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from horde_common import s3
from horde_common.event_types import SystemEventSubtype, SystemEventType
from testing.s3 import ACCESS_KEY, MOTO, SECRET_KEY, s3_settings


def assert_no_secret(text: str, url: str = "") -> None:
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text
    if "X-Amz-Signature=" in url:
        signature = url.split("X-Amz-Signature=")[1].split("&")[0]
        assert signature not in text


# --- URLs -------------------------------------------------------------------------------------------


def test_public_url_with_a_custom_endpoint() -> None:
    assert s3.public_url(s3_settings(), "b", "k") == f"{MOTO}/b/k"
    assert s3.public_url(s3_settings(), "b", "f.json", prefix="solved/") == f"{MOTO}/b/solved/f.json"
    assert s3.public_url(s3_settings(AWS_ENDPOINT_URL=MOTO + "/"), "b", "k") == f"{MOTO}/b/k"


@pytest.mark.parametrize("endpoint", [None, "", "  "])
def test_public_url_defaults_to_aws_when_the_endpoint_is_unset_or_blank(endpoint: str | None) -> None:
    conf = s3_settings(AWS_ENDPOINT_URL=endpoint)
    assert s3.endpoint_url(conf) is None
    assert s3.public_url(conf, "prompts", "u1") == "https://s3.amazonaws.com/prompts/u1"
    assert s3.public_url(conf, "answers", "f.json", prefix="solved/") == (
        "https://s3.amazonaws.com/answers/solved/f.json"
    )


@pytest.mark.parametrize("endpoint", [None, ""])
def test_presigning_for_aws_works_with_a_blank_endpoint(endpoint: str | None) -> None:
    """A blank AWS_ENDPOINT_URL is unset for boto3 too (it would otherwise be an invalid endpoint)."""
    url = s3.presigned_put_url(
        s3_settings(AWS_ENDPOINT_URL=endpoint), "my-bucket", "k", expires_s=60, prefix="p/"
    )
    assert url.startswith("https://my-bucket.s3.amazonaws.com/p/k?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url


def test_presigned_urls_honour_the_endpoint_path_style() -> None:
    put = s3.presigned_put_url(s3_settings(), "bkt", "key", expires_s=3600, prefix="solved/")
    get = s3.presigned_get_url(s3_settings(), "bkt", "key", expires_s=120)
    assert put.startswith(f"{MOTO}/bkt/solved/key?") and "X-Amz-Expires=3600" in put
    assert get.startswith(f"{MOTO}/bkt/key?") and "X-Amz-Expires=120" in get


def test_expiry_must_be_positive() -> None:
    with pytest.raises(ValueError):
        s3.presigned_put_url(s3_settings(), "b", "k", expires_s=0)


def test_safe_url_masks_signature_and_credential() -> None:
    url = s3.presigned_put_url(s3_settings(), "bkt", "key", expires_s=60)
    shown = s3.safe_url(url)
    assert shown.startswith(f"{MOTO}/bkt/key?")
    assert "X-Amz-Signature=" in shown and "X-Amz-Expires=60" in shown
    assert_no_secret(shown, url)
    assert s3.safe_url("https://x/b/k?Signature=abc&AWSAccessKeyId=AK&Expires=1") == (
        "https://x/b/k?Signature=**********&AWSAccessKeyId=**********&Expires=1"
    )
    assert s3.safe_url(f"{MOTO}/b/k") == f"{MOTO}/b/k"


def test_missing_bucket_settings_are_a_config_error() -> None:
    with pytest.raises(s3.S3ConfigError, match="S3_BUCKET_NAME_PROMPTS"):
        s3.prompts_bucket(s3_settings())
    assert s3.answers_bucket(s3_settings(S3_BUCKET_NAME_ANSWERS="answers")) == "answers"


# --- transfers against moto --------------------------------------------------------------------------


async def test_presigned_put_then_get_round_trip(bucket: str) -> None:
    conf = s3_settings()
    body = b"first prompt\nsecond prompt"
    put = await s3.presigned_put_url_async(conf, bucket, "w1", expires_s=3600)
    async with httpx.AsyncClient() as http:
        assert (await http.put(put, content=body)).status_code == 200
        get = s3.presigned_get_url(conf, bucket, "w1", expires_s=3600)
        assert (await http.get(get)).content == body
    # The library's own helpers, and the public URL every reader uses.
    await s3.upload_bytes(s3.presigned_put_url(conf, bucket, "w2", expires_s=60), body)
    got = await s3.download_bytes(s3.public_url(conf, bucket, "w2"), max_bytes=len(body))
    assert got == body


async def test_put_object_async_uploads_with_the_credentials(bucket: str) -> None:
    await s3.put_object_async(s3_settings(), bucket, "solved/x.json", b"{}", timeout_s=30)
    assert await s3.download_bytes(s3.public_url(s3_settings(), bucket, "x.json", prefix="solved/")) == b"{}"


async def test_download_refuses_an_object_over_max_bytes(bucket: str) -> None:
    await s3.upload_bytes(s3.presigned_put_url(s3_settings(), bucket, "big", expires_s=60), b"x" * 2000)
    with pytest.raises(s3.S3ObjectTooLarge, match="2000 bytes, more than 1000") as caught:
        await s3.download_bytes(s3.public_url(s3_settings(), bucket, "big"), max_bytes=1000)
    assert caught.value.subtype is SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3


async def test_a_private_object_is_not_publicly_readable() -> None:
    """Without the public-read policy the public URL is refused: why provisioning sets it."""
    name = f"horde-test-{uuid.uuid4().hex[:12]}"
    s3.client(s3_settings()).create_bucket(Bucket=name)
    await s3.upload_bytes(s3.presigned_put_url(s3_settings(), name, "k", expires_s=60), b"x")
    with pytest.raises(s3.S3DownloadError, match="HTTP 403"):
        await s3.download_bytes(s3.public_url(s3_settings(), name, "k"))
    assert await s3.download_bytes(s3.presigned_get_url(s3_settings(), name, "k", expires_s=60)) == b"x"


async def test_a_missing_object_is_a_typed_error_without_secrets(bucket: str) -> None:
    url = s3.presigned_get_url(s3_settings(), bucket, "absent", expires_s=60)
    with pytest.raises(s3.S3DownloadError) as caught:
        await s3.download_bytes(url)
    text = str(caught.value)
    assert "HTTP 404 NoSuchKey" in text
    assert_no_secret(text, url)
    assert_no_secret(repr(caught.value), url)
    event = caught.value.event(SystemEventType.LLM_PROMPT_ANSWERING, "Failed to download prompt answers: ")
    assert event.subtype is SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3
    assert event.data == {}
    assert event.long_description.startswith("Failed to download prompt answers: S3DownloadError(")
    assert_no_secret(event.long_description, url)


async def test_an_upload_to_a_missing_bucket_is_a_typed_error_without_secrets() -> None:
    url = s3.presigned_put_url(s3_settings(), f"horde-absent-{uuid.uuid4().hex[:8]}", "k", expires_s=60)
    with pytest.raises(s3.S3UploadError, match="HTTP 404 NoSuchBucket") as caught:
        await s3.upload_bytes(url, b"x")
    assert caught.value.subtype is SystemEventSubtype.ERROR_UPLOADING_TO_S3
    assert_no_secret(str(caught.value), url)


def test_a_boto3_failure_is_a_typed_error_without_secrets() -> None:
    with pytest.raises(s3.S3UploadError) as caught:
        s3.put_object(s3_settings(), f"horde-absent-{uuid.uuid4().hex[:8]}", "k", b"x")
    assert "NoSuchBucket" in str(caught.value)
    assert_no_secret(str(caught.value))


async def test_an_unreachable_server_is_a_download_error() -> None:
    with pytest.raises(s3.S3DownloadError, match="ConnectError"):
        await s3.download_bytes("http://127.0.0.1:9/b/k?X-Amz-Signature=deadbeef", timeout_s=5)


# --- a server of the test's own -----------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture()
async def local_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Factory: serve one handler on a free port, return its base URL; stopped after the test."""
    servers: list[asyncio.Server] = []
    release = asyncio.Event()

    async def start(handler: Handler) -> str:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
            await release.wait()  # hold the connection open until the test is over
            writer.close()

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    release.set()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_download_times_out_on_a_stalled_body(local_server: Any) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes")
        await writer.drain()  # ... and the other 89 never come

    base = await local_server(stall)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(s3.S3Timeout, match=r"not done within 0\.3 s") as caught:
        await s3.download_bytes(f"{base}/b/k?X-Amz-Signature=feedface", timeout_s=0.3)
    assert loop.time() - started < 5
    assert "feedface" not in str(caught.value)


async def test_download_times_out_on_a_trickling_body(local_server: Any) -> None:
    """Bytes keep coming, each before any per-read timeout: only the total bound stops it."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while not writer.is_closing() and not reader.at_eof():
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)  # the server's pace, not a synchronisation
        except ConnectionError:
            return  # the client gave up, as it should

    base = await local_server(trickle)
    with pytest.raises(s3.S3Timeout):
        await s3.download_bytes(f"{base}/b/k", timeout_s=0.5)


async def test_download_refuses_an_undeclared_oversize_body(local_server: Any) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):
            writer.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    base = await local_server(flood)
    with pytest.raises(s3.S3ObjectTooLarge, match="more than 10000 bytes"):
        await s3.download_bytes(f"{base}/b/k", max_bytes=10_000)
