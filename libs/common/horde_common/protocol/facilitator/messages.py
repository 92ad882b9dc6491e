"""Messages of the validator ↔ facilitator WebSocket link (docs/organic.md §1).

Names, field order and strictness are wire facts of the November-2024 facilitator: every top-level
message forbids unknown fields (an unknown field makes the whole frame unsupported), while the
nested objects the facilitator forwards verbatim (error entries, status metadata) allow them.
Volumes and output uploads are the miner protocol's models, because both links carry the same
schema and a job request's volume is handed on to the miner unchanged.

Sizes are bounded beyond what the original checked, but only far above anything a real facilitator
sends, so no genuine request is refused: the bounds cap the work one hostile frame can cause.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from horde_common.crypto import signature_hex

from ..miner.executor_class import ExecutorClass
from ..miner.values import OutputUpload, Volume

__all__ = [
    "JOB_REQUEST_TYPES",
    "MAX_ARGS",
    "MAX_DOCKER_IMAGE_LENGTH",
    "MAX_ENV_ENTRIES",
    "MAX_FRAME_BYTES",
    "MAX_ID_LENGTH",
    "MAX_VOLUME_ENTRIES",
    "AuthKeypair",
    "ErrorDetail",
    "JobRequest",
    "JobStatus",
    "JobStatusMetadata",
    "MinerResponse",
    "Response",
    "Signature",
    "V0AuthenticationRequest",
    "V0Heartbeat",
    "V0JobRequest",
    "V0JobStatusUpdate",
    "V0MachineSpecsUpdate",
    "V1JobRequest",
    "V2JobRequest",
]

MAX_FRAME_BYTES: Final = 2**20
"""Largest inbound frame: the original client's WebSocket default (1 MiB); the facilitator never
sent more, and every other bound below only matters within it."""

MAX_ID_LENGTH: Final = 256
"""Job uuids (36 characters), SS58 hotkeys (48), signature types ("bittensor"): 256 leaves room for
any id format while keeping ids out of the megabyte range in logs and database columns."""

MAX_DOCKER_IMAGE_LENGTH: Final = 1024
"""An image reference is registry host + path (each name at most 255) + tag (128) or digest (~71):
well under 1 KiB even for long registry paths."""

MAX_ARGS: Final = 4096
"""Arguments per job. Real jobs pass a handful (`python -c ...`); thousands still fit any command
line, while a frame of one million one-character arguments (about 4 bytes each) is refused."""

MAX_ENV_ENTRIES: Final = 1024
"""Environment entries per job (accepted, never forwarded to the miner): the same reasoning as
`MAX_ARGS`, for a value the validator only stores."""

MAX_VOLUME_ENTRIES: Final = 1024
"""Sub-volumes of a multi-volume, and single-file uploads of a multi-upload. LLM jobs use one or a
few; each entry becomes a download or upload on the executor, so a cap bounds that fan-out."""

JOB_REQUEST_TYPES: Final = frozenset({"V0JobRequest", "V1JobRequest", "V2JobRequest"})
"""The only facilitator → validator messages carrying a `message_type` in this protocol version."""


class _Forbid(BaseModel):
    """Top-level messages: unknown fields make the frame invalid, as in the original."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Allow(BaseModel):
    """Nested objects the facilitator forwards verbatim: extra keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


Id = Annotated[str, Field(max_length=MAX_ID_LENGTH)]

# ------------------------------------------------------------------------ validator → facilitator


class AuthKeypair(Protocol):
    """What building an authentication frame needs from a hotkey (a `bittensor_core.Keypair` fits)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class V0AuthenticationRequest(_Forbid):
    """First frame on every connection: the raw public key, signed by itself (no nonce, no time)."""

    message_type: Literal["V0AuthenticationRequest"] = "V0AuthenticationRequest"
    public_key: str  # hex of the 32 raw public-key bytes, no `0x`
    signature: str  # `0x` + hex of the sr25519 signature over those 32 bytes

    @classmethod
    def from_keypair(cls, keypair: AuthKeypair) -> Self:
        """The frame for this hotkey. sr25519 signatures are randomised: verify, never compare."""
        public_key = bytes(keypair.public_key)
        return cls(public_key=public_key.hex(), signature=signature_hex(bytes(keypair.sign(public_key))))

    def verify_signature(self) -> bool:
        """The facilitator's check (used by fakes and tests). Never raises on malformed values."""
        try:
            from bittensor_core import Keypair  # lazy: only fakes and tests verify

            raw_key = bytes.fromhex(self.public_key)
            text = self.signature[2:] if self.signature[:2] in ("0x", "0X") else self.signature
            raw_signature = bytes.fromhex(text)
            if len(raw_key) != 32 or len(raw_signature) != 64:
                return False
            return bool(Keypair(public_key=raw_key).verify(raw_key, raw_signature))
        except Exception:
            return False


class V0Heartbeat(_Forbid):
    """Liveness; the facilitator dispatches jobs only to validators heard from recently."""

    message_type: Literal["V0Heartbeat"] = "V0Heartbeat"


class JobStatus(StrEnum):
    """The four statuses the November-2024 facilitator understands."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    COMPLETED = "completed"


class MinerResponse(_Allow):
    """What the miner last said about the job; `message_type` is null when it said nothing final."""

    job_uuid: str
    message_type: str | None
    docker_process_stderr: str
    docker_process_stdout: str


class JobStatusMetadata(_Allow):
    comment: str
    miner_response: MinerResponse | None = None


class V0JobStatusUpdate(_Forbid):
    """A job's progress, keyed by the facilitator's job uuid. The facilitator's reply is not awaited."""

    message_type: Literal["V0JobStatusUpdate"] = "V0JobStatusUpdate"
    uuid: str
    status: JobStatus
    metadata: JobStatusMetadata | None = None


class V0MachineSpecsUpdate(_Forbid):
    """An executor's specs as reported in a synthetic batch; `specs` is opaque to the validator."""

    message_type: Literal["V0MachineSpecsUpdate"] = "V0MachineSpecsUpdate"
    miner_hotkey: str
    validator_hotkey: str
    specs: dict[str, Any]
    batch_id: str


# ------------------------------------------------------------------------ facilitator → validator


class ErrorDetail(_Allow):
    """One error of a `Response`; facilitators forward pydantic error dicts (`loc`, `input`, ...)."""

    msg: str
    type: str
    help: str = ""


class Response(_Forbid):
    """The facilitator's answer to authentication (and, asynchronously, to other frames). No type tag."""

    status: Literal["error", "success"]
    errors: list[ErrorDetail] = []


class Signature(_Forbid):
    """A V2 request's signature. `signature` is standard base64 of the 64 raw bytes on the wire."""

    signature_type: Annotated[str, Field(max_length=MAX_ID_LENGTH)] = ""
    signatory: Annotated[str, Field(max_length=MAX_ID_LENGTH)] = ""  # SS58 of the signer
    timestamp_ns: int = 0  # Unix time in nanoseconds; signed, never checked for age
    signature: str

    @field_validator("signature")
    @classmethod
    def _base64(cls, value: str) -> str:
        signature_bytes(value)  # raises ValueError (a validation error) when not base64
        return value

    @property
    def raw(self) -> bytes:
        """The decoded signature bytes."""
        return signature_bytes(self.signature)


def signature_bytes(text: str) -> bytes:
    """Decode a wire signature like the original (`base64.b64decode`, non-alphabet characters skipped)."""
    try:
        return base64.b64decode(text.encode("utf-8", "surrogatepass"))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"signature is not base64: {exc}") from None


Args = Annotated[list[str], Field(max_length=MAX_ARGS)]
Env = Annotated[dict[str, str], Field(max_length=MAX_ENV_ENTRIES)]
DockerImage = Annotated[str, Field(max_length=MAX_DOCKER_IMAGE_LENGTH)]


class _JobRequestBase(_Forbid):
    """Fields and rules every version shares. `type` routes the frame in the facilitator's channel
    layer; it is part of the frame, optional, and must be `job.new` when present."""

    type: Literal["job.new"] = "job.new"

    @model_validator(mode="after")
    def _image_or_script(self) -> Self:
        if not (getattr(self, "docker_image", "") or getattr(self, "raw_script", "")):
            raise ValueError("Expected at least one of `docker_image` or `raw_script`")
        return self

    @model_validator(mode="after")
    def _bounded_volumes(self) -> Self:
        volume = getattr(self, "volume", None)
        upload = getattr(self, "output_upload", None)
        if len(getattr(volume, "volumes", ())) > MAX_VOLUME_ENTRIES:
            raise ValueError(f"more than {MAX_VOLUME_ENTRIES} volumes")
        if len(getattr(upload, "uploads", ())) > MAX_VOLUME_ENTRIES:
            raise ValueError(f"more than {MAX_VOLUME_ENTRIES} uploads")
        return self


class V0JobRequest(_JobRequestBase):
    """Legacy request naming its miner; input and output are plain URLs ("" for none)."""

    message_type: Literal["V0JobRequest"] = "V0JobRequest"
    uuid: Id
    miner_hotkey: Id
    executor_class: ExecutorClass
    docker_image: DockerImage
    raw_script: str
    args: Args
    env: Env
    use_gpu: bool
    input_url: str
    output_url: str


class V1JobRequest(_JobRequestBase):
    """Like V0, with structured volume and output upload instead of URLs."""

    message_type: Literal["V1JobRequest"] = "V1JobRequest"
    uuid: Id
    miner_hotkey: Id
    executor_class: ExecutorClass
    docker_image: DockerImage
    raw_script: str
    args: Args
    env: Env
    use_gpu: bool
    volume: Volume | None = None
    output_upload: OutputUpload | None = None


class V2JobRequest(_JobRequestBase):
    """Signed request without a miner: the validator picks one. Only a verified signature from a
    whitelisted signer makes it runnable (`signature.verify_v2_request`)."""

    message_type: Literal["V2JobRequest"] = "V2JobRequest"
    signature: Signature | None = None
    uuid: Id
    # Every field below is covered by the signature (docs/organic.md §1.6).
    executor_class: ExecutorClass
    docker_image: DockerImage
    raw_script: str
    args: Args
    env: Env
    use_gpu: bool
    volume: Volume | None = None
    output_upload: OutputUpload | None = None


JobRequest = Annotated[V0JobRequest | V1JobRequest | V2JobRequest, Field(discriminator="message_type")]
