"""What a hostile or broken trusted miner, S3 or bus can hand the cross-validator (docs/crossval.md,
"Hostile input"): every case ends in a recorded event against the party at fault, never a crash,
a validator FAILURE for someone else's fault, a half-saved workload or a secret in an event."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from horde_common import s3
from horde_common.bus.messages import TrustedJobCompleted, TrustedJobRequested
from horde_common.db.models import Prompt, PromptSeries, SolveWorkload
from horde_cross_validator.answering import ANSWERS_MAX_BYTES, run_answering
from horde_cross_validator.generation import GenerationResult, run_generation
from horde_cross_validator.trusted_jobs import CHANNEL, MAX_COMMENT_CHARS, TrustedJobKind, run_trusted_job
from horde_cross_validator.workloads import MAX_PROMPT_CHARS, run_sampling

pytestmark = pytest.mark.timeout(90)

Behaviour = Callable[[TrustedJobRequested], Awaitable[Any]]


async def add_series(sessions: Any, settings: Any, *bodies: bytes) -> None:
    """Series files with these exact bytes in the prompts bucket, and their rows."""
    bucket = settings.S3_BUCKET_NAME_PROMPTS
    rows = []
    for body in bodies:
        key = str(uuid.uuid4())
        await s3.put_object_async(settings, bucket, key, body)
        rows.append({"series_uuid": uuid.UUID(key), "s3_url": s3.public_url(settings, bucket, key)})
    async with sessions.begin() as session:
        await session.execute(insert(PromptSeries), rows)


def good_series(i: int) -> bytes:
    return "\n".join(f"series {i} prompt {j}" for j in range(5)).encode()


async def one_workload(sessions: Any, settings: Any, runtime: Any) -> None:
    await add_series(sessions, settings, good_series(0), good_series(1))
    assert await run_sampling(runtime) == 1


async def workload_state(sessions: Any) -> tuple[Any, list[str | None]]:
    async with sessions() as session:
        workload = (await session.scalars(select(SolveWorkload))).one()
        answers = list(await session.scalars(select(Prompt.answer).order_by(Prompt.id)))
    return workload.finished_at, answers


def put_url_of(msg: TrustedJobRequested) -> str:
    url: str = msg.request["job"]["output_upload"]["uploads"][0]["url"]
    return url


def done(msg: TrustedJobRequested, success: bool, comment: str = "") -> TrustedJobCompleted:
    return TrustedJobCompleted(
        job_uuid=msg.job_uuid, workload_id=msg.workload_id, success=success, comment=comment
    )


def writes(body: Callable[[list[str]], bytes]) -> Behaviour:
    """A trusted miner that reports success after putting `body(prompts of the workload)`."""

    async def behaviour(msg: TrustedJobRequested) -> TrustedJobCompleted:
        url = msg.request["job"]["volume"]["volumes"][0]["url"]
        prompts = (await s3.download_bytes(url)).decode().split("\n")
        await s3.upload_bytes(put_url_of(msg), body(prompts))
        return done(msg, True)

    return behaviour


def other_events(rows: list[tuple[str, str, dict, str]]) -> list[tuple[str, str]]:
    """(subtype, description) of the events besides a run's bookkeeping."""
    return [(s, x) for _, s, _, x in rows if s not in ("UNPROCESSED_WORKLOADS", "SUCCESS")]


BAD_ANSWERS: dict[str, tuple[Callable[[list[str]], bytes], str]] = {
    "list_not_object": (lambda ps: json.dumps(ps).encode(), "must be a JSON object, got list"),
    "deeply_nested": (lambda ps: b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "nul_in_answer": (lambda ps: json.dumps({p: f"ok\x00{p}" for p in ps}).encode(), "NUL"),
    "not_utf8": (lambda ps: b'{"' + ps[0].encode() + b'": "\xff\xfe"}', "not JSON"),
    "number_answers": (lambda ps: json.dumps(dict.fromkeys(ps, 1)).encode(), "is not a string"),
    "too_large": (lambda ps: b" " * (ANSWERS_MAX_BYTES + 1), "more than"),
    "empty": (lambda ps: b"", "not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
async def test_bad_answers_file_is_a_download_error_and_stores_nothing(
    case: str, make_runtime, job_runner, sessions, settings, events
) -> None:
    runtime = make_runtime()
    await one_workload(sessions, settings, runtime)
    body, expected = BAD_ANSWERS[case]
    job_runner.behaviour = writes(body)
    result = await run_answering(runtime)
    assert (result.successes, result.failures) == (0, 1)
    assert await workload_state(sessions) == (None, [None, None])
    [(subtype, description)] = other_events(await events("LLM_PROMPT_ANSWERING"))
    assert subtype == "ERROR_DOWNLOADING_FROM_S3", description  # the miner's fault, not FAILURE
    assert expected in description and len(description) < 1000


async def test_extra_and_many_answer_keys_are_ignored(make_runtime, job_runner, sessions, settings) -> None:
    runtime = make_runtime()
    await one_workload(sessions, settings, runtime)

    def body(prompts: list[str]) -> bytes:
        answers = {f"unasked {i}": "x" for i in range(100_000)}
        answers.update({p: f"answer to {p}" for p in prompts})
        return json.dumps(answers).encode()

    job_runner.behaviour = writes(body)
    assert (await run_answering(runtime)).successes == 1
    finished_at, answers = await workload_state(sessions)
    assert finished_at is not None and all(a is not None and a.startswith("answer to") for a in answers)


BAD_SERIES: dict[str, tuple[bytes, str]] = {
    "nul": (b"\n".join(b"p\x00%d" % i for i in range(5)), "NUL character"),
    "megabyte_lines": (b"\n".join(b"x" * 150_000 for _ in range(6)), f"more than {MAX_PROMPT_CHARS}"),
    "not_utf8": (b"\n".join(b"caf\xe9 %d" % i for i in range(5)), "not UTF-8"),
    "padded_lines": (b"\n".join(b" padded %d " % i for i in range(5)), "padded with whitespace"),
    "blank_lines": (b"a\n\n\n\nb", "blank"),
}


@pytest.mark.parametrize("case", sorted(BAD_SERIES))
async def test_malformed_series_is_skipped_with_an_event(
    case: str, make_runtime, sessions, settings, events
) -> None:
    runtime = make_runtime()
    body, expected = BAD_SERIES[case]
    await add_series(sessions, settings, body, good_series(1))
    assert await run_sampling(runtime) == 0  # one good series is not a workload of two samples
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(SolveWorkload)) == 0
        assert await session.scalar(select(func.count()).select_from(Prompt)) == 0
    sampling = [(s, x) for _, s, _, x in await events("LLM_PROMPT_SAMPLING")]
    malformed = [x for s, x in sampling if s == "ERROR_DOWNLOADING_FROM_S3"]
    assert len(malformed) == 1 and expected in malformed[0] and len(malformed[0]) < 1000


async def test_short_duplicate_and_oversized_series(
    make_runtime, job_runner, miner, sessions, settings
) -> None:
    """Fewer lines than a sample needs: skipped; duplicated prompts and more lines than asked: used,
    and the workload is answered (equal prompts share one answer)."""
    runtime = make_runtime()
    await add_series(
        sessions,
        settings,
        b"only one line",
        b"\n".join([b"same prompt"] * 5),
        b"\n".join(b"extra %d" % i for i in range(1000)),
    )
    assert await run_sampling(runtime) == 1
    job_runner.behaviour = miner.solve
    assert (await run_answering(runtime)).successes == 1
    async with sessions() as session:
        contents = set(await session.scalars(select(Prompt.content)))
    assert "only one line" not in contents and len(contents) == 2
    finished_at, answers = await workload_state(sessions)
    assert finished_at is not None and None not in answers


# --- S3 itself ----------------------------------------------------------------------------------------


@pytest.fixture()
async def hostile_s3() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """Factory: an HTTP server answering every request with these raw bytes; its base URL."""
    servers: list[asyncio.Server] = []
    release = asyncio.Event()

    async def start(response: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            if response.endswith(STALL):
                await release.wait()  # the rest of the body never comes
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    release.set()
    for server in servers:
        server.close()
        await server.wait_closed()


STALL = b"first bytes of a body that never ends"
SECRET_ECHO = b"<Error><Code>SlowDown</Code><Message>X-Amz-Signature=cafebabe1234</Message></Error>"
HOSTILE_RESPONSES = {
    "redirect": (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/x\r\nContent-Length: 0\r\n\r\n",
        "HTTP 307",
    ),
    "server_error": (
        b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(SECRET_ECHO), SECRET_ECHO),
        "HTTP 503 SlowDown",
    ),
    "html_not_json": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
        "not JSON",
    ),
    "stalled_body": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + STALL, "not done within 5 s"),
    "declared_huge": (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{", "more than"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RESPONSES))
async def test_hostile_s3_answer_downloads(
    case: str, make_runtime, job_runner, sessions, settings, events, hostile_s3
) -> None:
    """The answers file is read from the public endpoint; whatever it answers is an
    ERROR_DOWNLOADING_FROM_S3 event with no secret in it (neither S3's echo nor our signature)."""
    await one_workload(sessions, settings, make_runtime())
    response, expected = HOSTILE_RESPONSES[case]
    endpoint = await hostile_s3(response)
    runtime = make_runtime(settings=settings.model_copy(update={"AWS_ENDPOINT_URL": endpoint}))
    signatures: list[str] = []

    async def report_success(msg: TrustedJobRequested) -> TrustedJobCompleted:
        signatures.append(put_url_of(msg).split("X-Amz-Signature=")[1])
        return done(msg, True)

    job_runner.behaviour = report_success
    assert (await run_answering(runtime)).failures == 1
    assert (await workload_state(sessions))[0] is None
    rows = await events("LLM_PROMPT_ANSWERING")
    [(subtype, description)] = other_events(rows)
    assert subtype == "ERROR_DOWNLOADING_FROM_S3" and expected in description
    everything = json.dumps(rows)
    assert "cafebabe" not in everything and signatures and signatures[0] not in everything
    assert settings.AWS_SECRET_ACCESS_KEY.get_secret_value() not in everything


# --- the bus ------------------------------------------------------------------------------------------


def _job() -> dict[str, Any]:
    return {"message_type": "V1JobRequest", "args": [], "volume": None, "output_upload": None}


async def _run(runtime: Any, timeout_s: float = 10.0) -> Any:
    return await run_trusted_job(
        runtime,
        kind=TrustedJobKind.ANSWERING,
        workload_id="w",
        job=_job(),
        timeout_s=timeout_s,
        wait_timeout_s=timeout_s,
    )


async def test_unknown_duplicate_and_late_completions(make_runtime, job_runner, sessions) -> None:
    """An outcome for a job nobody waits for (unknown, or after the waiter gave up) is dropped; a
    second outcome of one job changes nothing; the next job gets its own outcome."""
    runtime = make_runtime(outcome_grace_s=0.5)
    publish = job_runner.broker.publish
    await publish(TrustedJobCompleted(job_uuid=uuid.uuid4(), workload_id="?", success=True, comment="stray"))
    gave_up: list[TrustedJobRequested] = []

    async def silent(msg: TrustedJobRequested) -> None:
        gave_up.append(msg)

    job_runner.behaviour = silent
    late = await _run(runtime, timeout_s=0.5)
    assert not late.success and "no outcome within" in late.comment
    await publish(done(gave_up[0], True, "too late"))

    async def twice(msg: TrustedJobRequested) -> TrustedJobCompleted:
        await publish(done(msg, True, "first"))
        return done(msg, False, "second")

    job_runner.behaviour = twice
    outcome = await _run(runtime)
    assert (outcome.success, outcome.comment) == (True, "first")
    assert outcome.job_uuid == job_runner.requests[-1].job_uuid


async def test_foreign_notify_payloads_are_ignored(make_runtime, job_runner, sessions) -> None:
    """Anything else on the channel (not JSON, a list, another job's uuid) does not end the wait."""
    runtime = make_runtime()

    async def noisy(msg: TrustedJobRequested) -> TrustedJobCompleted:
        async with sessions.begin() as session:
            for payload in ("not json", "[1, 2]", '"text"', json.dumps({"job_uuid": str(uuid.uuid4())})):
                await session.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})
        return done(msg, True, "mine")

    job_runner.behaviour = noisy
    outcome = await _run(runtime)
    assert (outcome.success, outcome.comment) == (True, "mine")


@pytest.mark.parametrize("char", ["x", "é", "\U0001f600", "\x00"])
async def test_a_long_comment_still_reaches_the_waiter(make_runtime, job_runner, char: str) -> None:
    """A NOTIFY payload over 8000 bytes is refused by PostgreSQL: the comment is cut to fit,
    whatever its characters, instead of the outcome being lost."""
    runtime = make_runtime()

    async def verbose(msg: TrustedJobRequested) -> TrustedJobCompleted:
        return done(msg, False, char * 100_000)

    job_runner.behaviour = verbose
    outcome = await _run(runtime)
    assert not outcome.success and outcome.comment == char * MAX_COMMENT_CHARS


# --- generation: what the trusted miner left behind ---------------------------------------------------


def generates(*bodies: bytes | None) -> Behaviour:
    """A trusted miner that reports success after putting `bodies[i]` to upload i (None: nothing)."""

    async def behaviour(msg: TrustedJobRequested) -> TrustedJobCompleted:
        for upload, body in zip(msg.request["job"]["output_upload"]["uploads"], bodies, strict=False):
            if body is not None:
                await s3.upload_bytes(upload["url"], body)
        return done(msg, True)

    return behaviour


@pytest.mark.parametrize(
    ("bodies", "stored"),
    [((good_series(0), None), 1), ((good_series(0), b"bad\x00line\nx"), 1), ((None, None), 0)],
    ids=["one_missing", "one_malformed", "none_uploaded"],
)
async def test_generation_stores_only_the_series_that_are_there(
    bodies: tuple[bytes | None, ...], stored: int, make_runtime, job_runner, sessions, events
) -> None:
    """A success without the files would leave rows sampling can never use, counting toward the
    series cap for ever: only readable series are stored, the rest is the trusted miner's error."""
    job_runner.behaviour = generates(*bodies)
    result = await run_generation(make_runtime())
    assert result is (GenerationResult.STORED if stored else GenerationResult.FAILED)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(PromptSeries)) == stored
    rows = [(s, d, x) for _, s, d, x in await events("LLM_PROMPT_GENERATION")]
    errors = [x for s, _, x in rows if s == "ERROR_DOWNLOADING_FROM_S3"]
    assert len(errors) == 1 and f"left {2 - stored} of 2 series unusable" in errors[0]
    assert "Signature" not in errors[0]
    successes = [d for s, d, _ in rows if s == "SUCCESS"]
    assert [d["count"] for d in successes] == ([stored] if stored else [])
