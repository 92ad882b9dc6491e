"""Validator → miner messages (docs/miner-protocol.md §2.2), with the original's validation rules.

A November-2024 miner rejects what these models reject, so building a message here that validates
is the guarantee that the miner will accept it.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import model_validator

from horde_common.crypto import canonical_json

from .base_messages import GenericError, JobMessage, V0MachineSpecsRequest
from .executor_class import ExecutorClass
from .receipts import JobAcceptedReceiptPayload, JobFinishedReceiptPayload, JobStartedReceiptPayload
from .values import DockerRunOptionsPreset, OutputUpload, Volume, VolumeType, WireModel


class AuthenticationPayload(WireModel):
    validator_hotkey: str  # must equal the hotkey in the URL path
    miner_hotkey: str
    timestamp: int  # unix seconds; the miner rejects it when older than 10 s

    def blob_for_signing(self) -> str:
        return canonical_json(self.model_dump())


class V0AuthenticateRequest(WireModel):
    """The validator's first frame on every connection, re-sent after every reconnect."""

    message_type: Literal["V0AuthenticateRequest"] = "V0AuthenticateRequest"
    payload: AuthenticationPayload
    signature: str

    def blob_for_signing(self) -> str:
        return self.payload.blob_for_signing()


class V0InitialJobRequest(JobMessage):
    """Reserve an executor of a class and prepare it; carries the signed JobStarted receipt."""

    message_type: Literal["V0InitialJobRequest"] = "V0InitialJobRequest"
    executor_class: ExecutorClass | None = None
    base_docker_image_name: str | None = None
    timeout_seconds: int | None = None
    volume: Volume | None = None
    volume_type: VolumeType | None = None
    job_started_receipt_payload: JobStartedReceiptPayload
    job_started_receipt_signature: str

    @model_validator(mode="after")
    def _volume_or_volume_type(self) -> Self:
        if self.volume is not None and self.volume_type:
            raise ValueError("Expected either `volume` or `volume_type`, got both")
        return self


class V0JobRequest(JobMessage):
    """Run the job now. The volume goes here only if it was not in the initial request."""

    message_type: Literal["V0JobRequest"] = "V0JobRequest"
    executor_class: ExecutorClass | None = None
    docker_image_name: str | None = None
    raw_script: str | None = None
    docker_run_options_preset: DockerRunOptionsPreset
    docker_run_cmd: list[str]
    volume: Volume | None = None
    output_upload: OutputUpload | None = None

    @model_validator(mode="after")
    def _image_or_script(self) -> Self:
        if not (self.docker_image_name or self.raw_script):
            raise ValueError("Expected at least one of `docker_image_name` or `raw_script`")
        return self


class V0JobAcceptedReceiptRequest(WireModel):
    message_type: Literal["V0JobAcceptedReceiptRequest"] = "V0JobAcceptedReceiptRequest"
    payload: JobAcceptedReceiptPayload
    signature: str

    def blob_for_signing(self) -> str:
        return self.payload.blob_for_signing()


class V0JobFinishedReceiptRequest(WireModel):
    message_type: Literal["V0JobFinishedReceiptRequest"] = "V0JobFinishedReceiptRequest"
    payload: JobFinishedReceiptPayload
    signature: str

    def blob_for_signing(self) -> str:
        return self.payload.blob_for_signing()


ValidatorMessage = (
    V0AuthenticateRequest
    | V0InitialJobRequest
    | V0JobRequest
    | V0JobAcceptedReceiptRequest
    | V0JobFinishedReceiptRequest
    | V0MachineSpecsRequest
    | GenericError
)
