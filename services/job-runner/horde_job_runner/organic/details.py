"""The miner job an organic request stands for (docs/organic.md, "Running organic jobs: the job").

Pure: the stored facilitator request (JSON, as the gateway received it) in, the values of the
miner-protocol messages out. Nothing here knows which miner runs the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_common.protocol.miner.values import DockerRunOptionsPreset, OutputUpload, Volume

__all__ = ["V2_REQUEST", "JobDetailsError", "MinerJobSpec", "job_spec"]

V2_REQUEST: Final = "V2JobRequest"
"""The request version whose miner the validator chooses (the others name it)."""

_VOLUME: TypeAdapter[Any] = TypeAdapter(Volume)
_UPLOAD: TypeAdapter[Any] = TypeAdapter(OutputUpload)


class JobDetailsError(ValueError):
    """The stored request cannot become a miner job (the gateway validated it, so: a bug or a
    hand-edited row); the job fails with this text as its comment."""


@dataclass(frozen=True)
class MinerJobSpec:
    """What the miner is asked to run. `env` is kept only to say that it is not forwarded: the
    miner protocol's job request has no field for it (docs/organic.md)."""

    job_uuid: str
    version: str
    executor_class: ExecutorClass
    docker_image: str | None
    raw_script: str | None
    args: list[str]
    preset: DockerRunOptionsPreset
    volume: Any = None  # a `Volume` model or None
    output_upload: Any = None  # an `OutputUpload` model or None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def chooses_miner(self) -> bool:
        """V2: the validator picks the miner (round-robin, with retries)."""
        return self.version == V2_REQUEST

    @property
    def volume_type(self) -> str | None:
        """The hint the initial request carries instead of the volume itself."""
        return None if self.volume is None else str(self.volume.volume_type)


def job_spec(job_uuid: str, executor_class: str, request: dict[str, Any] | None) -> MinerJobSpec:
    """The miner job of a stored request. Raises `JobDetailsError`."""
    if not request:
        raise JobDetailsError("the job has no stored request")
    version = str(request.get("message_type", ""))
    if version not in ("V0JobRequest", "V1JobRequest", V2_REQUEST):
        raise JobDetailsError(f"unknown request version {version!r}")
    try:
        klass = ExecutorClass(str(request.get("executor_class") or executor_class))
    except ValueError as exc:
        raise JobDetailsError(f"unknown executor class: {exc}") from None
    try:
        if version == "V0JobRequest":
            input_url = str(request.get("input_url") or "")
            output_url = str(request.get("output_url") or "")
            volume = (
                _VOLUME.validate_python(
                    {"volume_type": "zip_url", "contents": input_url, "relative_path": None}
                )
                if input_url
                else None
            )
            upload = (
                _UPLOAD.validate_python({"output_upload_type": "zip_and_http_put", "url": output_url})
                if output_url
                else None
            )
        else:
            raw_volume, raw_upload = request.get("volume"), request.get("output_upload")
            volume = None if raw_volume is None else _VOLUME.validate_python(raw_volume)
            upload = None if raw_upload is None else _UPLOAD.validate_python(raw_upload)
    except ValidationError as exc:
        raise JobDetailsError(f"invalid volume or output upload: {exc.errors()[:1]}") from None
    return MinerJobSpec(
        job_uuid=job_uuid,
        version=version,
        executor_class=klass,
        docker_image=str(request.get("docker_image") or "") or None,
        raw_script=str(request.get("raw_script") or "") or None,
        args=[str(a) for a in request.get("args") or []],
        preset=DockerRunOptionsPreset.NVIDIA_ALL if request.get("use_gpu") else DockerRunOptionsPreset.NONE,
        volume=volume,
        output_upload=upload,
        env={str(k): str(v) for k, v in (request.get("env") or {}).items()},
    )
