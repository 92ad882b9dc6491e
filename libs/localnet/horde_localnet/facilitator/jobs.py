"""What the facilitator simulator submits: a job spec (HTTP body, JSONL line, rate template) and
the V0/V1/V2 job request built from it (docs/organic.md §1.4, signatures §1.6).

The spec is deliberately loose (every field has a default) so `POST /jobs {}` or an empty JSONL
object is a valid job; the request built from it is the protocol's strict model, so whatever the
simulator sends is a frame the real facilitator could have sent.
"""

from __future__ import annotations

import json
import time
import uuid as uuid_module
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from horde_common.protocol.facilitator import (
    V0JobRequest,
    V1JobRequest,
    V2JobRequest,
    sign_v2_request,
)
from horde_common.protocol.miner import ExecutorClass
from horde_common.protocol.miner.values import OutputUpload, Volume

__all__ = [
    "DEFAULT_ARGS",
    "DEFAULT_DOCKER_IMAGE",
    "AnyJobRequest",
    "JobSpec",
    "JobVersion",
    "Signer",
    "build_request",
    "read_jobs_file",
]

DEFAULT_DOCKER_IMAGE: Final = "python:3.11-slim"
"""The image of the protocol's own examples (docs/organic.md §1.4): any non-empty image will do,
the localnet miners never pull it."""

DEFAULT_ARGS: Final = ("python", "-c", "print(1)")

AnyJobRequest: TypeAlias = V0JobRequest | V1JobRequest | V2JobRequest


class JobVersion(StrEnum):
    """The three job request versions of the November-2024 facilitator."""

    V0 = "V0"
    V1 = "V1"
    V2 = "V2"


class Signer(Protocol):
    """What signing a V2 request needs (a `bittensor_core.Keypair` fits)."""

    @property
    def ss58_address(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class JobSpec(BaseModel):
    """One job to submit. `miner_hotkey` is required for V0/V1 (the facilitator picks the miner
    there) and ignored for V2; `input_url`/`output_url` only exist in V0, `volume`/`output_upload`
    only in V1/V2. `validator_hotkey` pins the job to one validator (else any connected one)."""

    model_config = ConfigDict(extra="forbid")

    version: JobVersion = JobVersion.V2
    uuid: str | None = None
    executor_class: ExecutorClass = ExecutorClass.SPIN_UP_4MIN_GPU_24GB
    miner_hotkey: str | None = None
    docker_image: str = DEFAULT_DOCKER_IMAGE
    raw_script: str = ""
    args: list[str] = Field(default_factory=lambda: list(DEFAULT_ARGS))
    env: dict[str, str] = Field(default_factory=dict)
    use_gpu: bool = False
    input_url: str = ""
    output_url: str = ""
    volume: Volume | None = None
    output_upload: OutputUpload | None = None
    timeout: float | None = None  # recorded only: no request version has one (docs/organic.md §1.4)
    validator_hotkey: str | None = None


def build_request(
    spec: JobSpec,
    signer: Signer | None,
    *,
    job_uuid: str | None = None,
    timestamp_ns: int | None = None,
) -> AnyJobRequest:
    """The wire request for `spec`. Raises ValueError when the spec cannot become a valid request
    (V0/V1 without a miner, V2 without a signer, both image and script empty, ...)."""
    job_id = spec.uuid or job_uuid or str(uuid_module.uuid4())
    common: dict[str, Any] = {
        "uuid": job_id,
        "executor_class": spec.executor_class,
        "docker_image": spec.docker_image,
        "raw_script": spec.raw_script,
        "args": spec.args,
        "env": spec.env,
        "use_gpu": spec.use_gpu,
    }
    if spec.version is JobVersion.V2:
        if signer is None:
            raise ValueError("a V2 job needs a signer keypair")
        request = V2JobRequest(**common, volume=spec.volume, output_upload=spec.output_upload)
        when = time.time_ns() if timestamp_ns is None else timestamp_ns
        return sign_v2_request(request, signer, when)
    if not spec.miner_hotkey:
        raise ValueError(f"a {spec.version} job needs `miner_hotkey`")
    if spec.version is JobVersion.V1:
        return V1JobRequest(
            **common, miner_hotkey=spec.miner_hotkey, volume=spec.volume, output_upload=spec.output_upload
        )
    return V0JobRequest(
        **common, miner_hotkey=spec.miner_hotkey, input_url=spec.input_url, output_url=spec.output_url
    )


def read_jobs_file(path: str | Path) -> Iterator[JobSpec]:
    """Job specs from a JSONL file, one object a line; blank lines and `#` comments are skipped.
    Raises ValueError naming the line of the first bad entry, so a typo fails before serving."""
    specs: list[JobSpec] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            specs.append(JobSpec.model_validate(json.loads(text)))
        except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError are ValueErrors
            raise ValueError(f"{path}:{number}: {exc}") from None
    return iter(specs)
