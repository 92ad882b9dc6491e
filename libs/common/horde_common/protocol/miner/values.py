"""Value types shared by the messages: volumes, output uploads, run presets, machine specs
(docs/miner-protocol.md §2.1).

Field names, optionality and discriminator strings are wire facts of the November-2024 miners;
optional fields default to None and are always serialised (as `null`), like the original.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base of every wire object: unknown fields are ignored (newer peers), instances are immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class DockerRunOptionsPreset(StrEnum):
    NVIDIA_ALL = "nvidia_all"  # executor adds `--runtime=nvidia --gpus all`
    NONE = "none"


class VolumeType(StrEnum):
    """A hint sent instead of a volume in organic flows; never together with a volume."""

    INLINE = "inline"
    ZIP_URL = "zip_url"
    SINGLE_FILE = "single_file"
    MULTI_VOLUME = "multi_volume"
    HUGGINGFACE_VOLUME = "huggingface_volume"


class InlineVolume(WireModel):
    """Base64 of a zip archive, unpacked under `/volume/` (or `/volume/{relative_path}/`)."""

    volume_type: Literal["inline"] = "inline"
    contents: str
    relative_path: str | None = None


class ZipUrlVolume(WireModel):
    """A zip downloaded from a URL; the URL is in `contents` for backward compatibility."""

    volume_type: Literal["zip_url"] = "zip_url"
    contents: str
    relative_path: str | None = None


class SingleFileVolume(WireModel):
    """One URL downloaded to `/volume/{relative_path}`."""

    volume_type: Literal["single_file"] = "single_file"
    url: str
    relative_path: str


class HuggingfaceVolume(WireModel):
    """A Hugging Face repository snapshot."""

    volume_type: Literal["huggingface_volume"] = "huggingface_volume"
    repo_id: str
    revision: str | None = None
    relative_path: str | None = None


SubVolume = Annotated[
    InlineVolume | ZipUrlVolume | SingleFileVolume | HuggingfaceVolume,
    Field(discriminator="volume_type"),
]


class MultiVolume(WireModel):
    """Several sub-volumes (never nested multi-volumes)."""

    volume_type: Literal["multi_volume"] = "multi_volume"
    volumes: list[SubVolume]


Volume = Annotated[
    InlineVolume | ZipUrlVolume | SingleFileVolume | MultiVolume | HuggingfaceVolume,
    Field(discriminator="volume_type"),
]


class ZipAndHttpPostUpload(WireModel):
    """Zip of `/output` sent as a multipart POST (file name `output.zip`)."""

    output_upload_type: Literal["zip_and_http_post"] = "zip_and_http_post"
    url: str
    form_fields: dict[str, str] | None = None


class ZipAndHttpPutUpload(WireModel):
    """Zip of `/output` sent with PUT."""

    output_upload_type: Literal["zip_and_http_put"] = "zip_and_http_put"
    url: str


class SingleFilePostUpload(WireModel):
    """One file of `/output` sent with POST."""

    output_upload_type: Literal["single_file_post"] = "single_file_post"
    url: str
    form_fields: dict[str, str] | None = None
    relative_path: str
    signed_headers: dict[str, str] | None = None


class SingleFilePutUpload(WireModel):
    """One file of `/output` sent raw with PUT (pre-signed S3 URLs for LLM answers)."""

    output_upload_type: Literal["single_file_put"] = "single_file_put"
    url: str
    relative_path: str
    signed_headers: dict[str, str] | None = None


SingleFileUpload = Annotated[
    SingleFilePostUpload | SingleFilePutUpload,
    Field(discriminator="output_upload_type"),
]

# A plain (not discriminated) union, as in the original: its tag may be omitted.
SystemOutputUpload = ZipAndHttpPostUpload | ZipAndHttpPutUpload


class MultiUpload(WireModel):
    """Several single-file uploads, plus an optional zip of stdout and stderr."""

    output_upload_type: Literal["multi_upload"] = "multi_upload"
    uploads: list[SingleFileUpload]
    system_output: SystemOutputUpload | None = None


OutputUpload = Annotated[
    SingleFilePostUpload | SingleFilePutUpload | ZipAndHttpPostUpload | ZipAndHttpPutUpload | MultiUpload,
    Field(discriminator="output_upload_type"),
]


class MachineSpecs(WireModel):
    """`{"specs": {...}}`, free-form as filled by the executor (gpu, cpu, ram, hard_disk, os, ...)."""

    specs: dict[str, Any]
