"""LLM jobs on the simulated executors: the prompt solver and the prompt generator (docs/crossval.md §8).

A real executor runs the job's image; the simulator recognises the two LLM images by their command
line and stands in for them with `horde_localnet.llm`, doing the transfers for real:

* **solver** (`--seed S /volume/{f}.txt`): downloads the job's volume over HTTP (a `single_file`,
  alone or in a `multi_volume`; inline volumes too), answers every non-empty stripped line with
  `llm.answer(S, line)` and uploads `{f}.json` to the output upload of that relative path;
* **generator** (`--number_of_prompts_per_batch P --uuids u1,u2,…`): writes `prompts_{u}.txt` with
  `llm.generated_prompts(u, P)` for each uuid and uploads each one.

Downloads are bounded in size and time (`MinerConfig.llm_*`); any failure (HTTP error, too large, too
slow, malformed command, missing output) fails the job with the reason on stderr, never the miner.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from horde_common import s3
from horde_common.protocol.miner import (
    InlineVolume,
    MultiUpload,
    MultiVolume,
    SingleFilePostUpload,
    SingleFilePutUpload,
    SingleFileVolume,
    V0JobRequest,
)
from horde_localnet import llm

from .solver import ExecutionResult, JobError, truncate_output, unpack_volume

__all__ = ["LlmJobKind", "LlmLimits", "llm_job_kind", "run_llm_job"]

# A generation job makes N series of P prompts (25 x 240 by default); far larger requests are a
# broken validator, refused instead of filling memory.
MAX_GENERATED_SERIES = 1000
MAX_PROMPTS_PER_SERIES = 10_000


class LlmJobKind(StrEnum):
    SOLVE = "solve"
    GENERATE = "generate"


@dataclass(frozen=True, slots=True)
class LlmLimits:
    max_download_bytes: int
    download_timeout: float
    upload_timeout: float


def llm_job_kind(request: V0JobRequest) -> LlmJobKind | None:
    """Which LLM image a job runs, from its command line (None: not an LLM job, e.g. hashcat)."""
    if request.raw_script:
        return None
    cmd = list(request.docker_run_cmd)
    if "--uuids" in cmd and "--number_of_prompts_per_batch" in cmd:
        return LlmJobKind.GENERATE
    if "--seed" in cmd and cmd[-1].startswith("/volume/"):
        return LlmJobKind.SOLVE
    return None


async def run_llm_job(
    kind: LlmJobKind, volume: Any, request: V0JobRequest, limits: LlmLimits, *, wrong_answers: bool = False
) -> ExecutionResult:
    """Run one LLM job to the end (uploads included); never raises but for cancellation."""
    try:
        if kind is LlmJobKind.SOLVE:
            files = await fetch_volume(volume, limits)
            outputs, stdout = solve_files(list(request.docker_run_cmd), files, wrong_answers=wrong_answers)
        else:
            outputs, stdout = generate_files(list(request.docker_run_cmd))
        await upload_outputs(request.output_upload, outputs, limits)
        return ExecutionResult(0, stdout, "")
    except (JobError, s3.S3Error) as exc:  # S3 errors' messages have their URLs masked
        return ExecutionResult(1, "", truncate_output(str(exc)))
    except Exception as exc:  # a simulator bug must not kill the miner
        return ExecutionResult(1, "", truncate_output(f"simulator error: {type(exc).__name__}: {exc}"))


# ------------------------------------------------------------------------------------------ volume


async def fetch_volume(volume: Any, limits: LlmLimits) -> dict[str, bytes]:
    """The job's `/volume` files (relative path -> bytes), downloading `single_file` URLs."""
    if volume is None:
        return {}
    if isinstance(volume, MultiVolume):
        files: dict[str, bytes] = {}
        for sub in volume.volumes:
            files.update(await fetch_volume(sub, limits))
        return files
    if isinstance(volume, SingleFileVolume):
        body = await s3.download_bytes(
            volume.url, max_bytes=limits.max_download_bytes, timeout_s=limits.download_timeout
        )
        return {_relative(volume.relative_path): body}
    if isinstance(volume, InlineVolume):
        return unpack_volume(volume.model_dump(mode="json"))
    raise JobError(f"volume type {getattr(volume, 'volume_type', '?')!r} is not supported by the simulator")


def _relative(path: str) -> str:
    rel = PurePosixPath(path.removeprefix("/volume/").lstrip("/"))
    if not rel.parts or ".." in rel.parts:
        raise JobError(f"bad relative path {path!r}")
    return str(rel)


def _option(cmd: list[str], name: str) -> str:
    if name not in cmd or cmd.index(name) + 1 >= len(cmd):
        raise JobError(f"command has no value for {name}")
    return cmd[cmd.index(name) + 1]


# ------------------------------------------------------------------------------------------ images


def solve_files(
    cmd: list[str], files: dict[str, bytes], *, wrong_answers: bool = False
) -> tuple[dict[str, bytes], str]:
    """The solver: `{stem}.json` answering every prompt of the input file; and its stdout."""
    try:
        seed = int(_option(cmd, "--seed"))
    except ValueError:
        raise JobError("--seed is not an integer") from None
    rel = _relative(cmd[-1])
    if rel not in files:
        raise JobError(f"{cmd[-1]}: no such file in the volume")
    try:
        text = files[rel].decode("utf-8")
    except UnicodeDecodeError:
        raise JobError(f"{cmd[-1]} is not UTF-8 text") from None
    answers = llm.solve(seed, text, wrong=wrong_answers)
    name = f"{PurePosixPath(rel).stem}.json"
    return {name: llm.answers_json(answers)}, f"answered {len(answers)} prompts\n"


def generate_files(cmd: list[str]) -> tuple[dict[str, bytes], str]:
    """The generator: `prompts_{u}.txt` for every uuid of `--uuids`; and its stdout."""
    try:
        count = int(_option(cmd, "--number_of_prompts_per_batch"))
    except ValueError:
        raise JobError("--number_of_prompts_per_batch is not an integer") from None
    uuids = [u.strip() for u in _option(cmd, "--uuids").split(",") if u.strip()]
    if not 0 < count <= MAX_PROMPTS_PER_SERIES or not 0 < len(uuids) <= MAX_GENERATED_SERIES:
        raise JobError(f"refusing to generate {len(uuids)} series of {count} prompts")
    outputs = {f"prompts_{u}.txt": llm.series_text(llm.generated_prompts(u, count)).encode() for u in uuids}
    return outputs, f"generated {len(uuids)} series of {count} prompts\n"


# ----------------------------------------------------------------------------------------- uploads


async def upload_outputs(output_upload: Any, outputs: dict[str, bytes], limits: LlmLimits) -> None:
    """PUT every single-file upload's file to its URL; an upload of a file the job did not write
    fails the job. `system_output` (the stdout/stderr zip) is not produced by the simulator."""
    if output_upload is None:
        return
    uploads = output_upload.uploads if isinstance(output_upload, MultiUpload) else [output_upload]
    for upload in uploads:
        if isinstance(upload, SingleFilePostUpload) or not isinstance(upload, SingleFilePutUpload):
            kind = getattr(upload, "output_upload_type", "?")
            raise JobError(f"output upload {kind!r} is not supported by the simulator")
        rel = _relative(upload.relative_path)
        if rel not in outputs:
            raise JobError(f"output {upload.relative_path!r}: the job wrote no such file")
        await put(upload.url, outputs[rel], upload.signed_headers or {}, limits.upload_timeout)


async def put(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
    """One PUT within `timeout_s` in total, with the upload's signed headers; S3UploadError otherwise."""
    import httpx

    shown = s3.safe_url(url)
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.put(url, content=body, headers=headers)
    except (TimeoutError, httpx.TimeoutException):
        raise s3.S3UploadTimeout(f"PUT {shown}: not done within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise s3.S3UploadError(f"PUT {shown}: {type(exc).__name__}") from None
    if not response.is_success:
        raise s3.S3UploadError(f"PUT {shown}: HTTP {response.status_code}")
