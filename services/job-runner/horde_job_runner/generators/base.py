"""The synthetic job generator interface shared by the hashcat and LLM generators.

A generator holds everything the batch needs to send one synthetic job and to judge its answer
(docs/miner-protocol.md §3.6, §3.13, §3.14). Values are plain JSON-ready dicts and strings, so this package
does not
depend on the wire models; the job-runner converts them with the protocol models when it builds the
`V0InitialJobRequest` / `V0JobRequest`.
"""

from __future__ import annotations

import functools
import random
import uuid
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

# Docker run option presets (docs/miner-protocol.md §2.1).
PRESET_NVIDIA_ALL = "nvidia_all"
PRESET_NONE = "none"

# Executor classes (docs/miner-protocol.md §5), as wire strings: a `StrEnum` member compares equal to them.
CLASS_SPIN_UP_4MIN_GPU_24GB = "spin_up-4min.gpu-24gb"
CLASS_ALWAYS_ON_GPU_24GB = "always_on.gpu-24gb"
CLASS_ALWAYS_ON_LLM_A6000 = "always_on.llm.a6000"

Volume = dict[str, Any]
"""A volume as its wire JSON, e.g. `{"volume_type": "inline", "contents": "...", "relative_path": None}`."""

OutputUpload = dict[str, Any]
"""An output upload as its wire JSON (docs/miner-protocol.md §2.1)."""


class Verdict(NamedTuple):
    """The result of checking one answer: `(correct, comment, score)` (docs/miner-protocol.md §3.10 step
    4)."""

    correct: bool
    comment: str
    score: float


class JobGenerator(ABC):
    """One synthetic job: what to send to the miner and how to check the answer.

    Every value is computed when the generator is built, so the accessors below are cheap and can be
    called on the event loop; building may be CPU-heavy (see the concrete classes).
    """

    executor_class: str
    job_uuid: uuid.UUID

    @abstractmethod
    def base_docker_image_name(self) -> str:
        """The image the executor pre-pulls during spin-up (`V0InitialJobRequest`)."""

    @abstractmethod
    def docker_image_name(self) -> str:
        """The image to run (`V0JobRequest`)."""

    def docker_run_options_preset(self) -> str:
        return PRESET_NVIDIA_ALL

    @abstractmethod
    def docker_run_cmd(self) -> list[str]:
        """The arguments after the image name in `docker run`."""

    def raw_script(self) -> str | None:
        """Python source mounted at `/script.py`, or None."""
        return None

    @abstractmethod
    def volume(self) -> Volume | None:
        """The job volume (wire JSON), or None."""

    @abstractmethod
    def volume_in_initial_req(self) -> bool:
        """True: the volume travels in `V0InitialJobRequest`; False: in `V0JobRequest` (never both)."""

    def initial_request_volume(self) -> Volume | None:
        """The volume to put in `V0InitialJobRequest` (None when it belongs to the job request)."""
        return self.volume() if self.volume_in_initial_req() else None

    def initial_request_volume_json(self) -> str | None:
        """`initial_request_volume()` as the wire JSON the protocol model writes (`null` for none),
        when the generator can give it without a serialiser; None: the caller uses the model.

        It lets the job runner splice a 62 KB volume into the frame instead of having it scanned
        and copied by a JSON encoder for every job (`synthetic/wire_frames.py`)."""
        return None

    def job_request_volume(self) -> Volume | None:
        """The volume to put in `V0JobRequest` (None when it was sent with the initial request)."""
        return None if self.volume_in_initial_req() else self.volume()

    def output_upload(self) -> OutputUpload | None:
        """Where the executor uploads `/output` (sent in `V0JobRequest`), or None."""
        return None

    @abstractmethod
    def timeout_seconds(self) -> int:
        """The job's time limit: executor container limit, JobStarted `max_timeout` and scoring limit."""

    @abstractmethod
    def verify(self, stdout: str, time_took: float) -> Verdict:
        """Judge a `V0JobFinishedRequest`: its stdout and the measured `time_took` in seconds.

        The caller applies the time limit (docs/miner-protocol.md §3.10 step 5) and the manifest multiplier
        (§3.15).
        """

    @abstractmethod
    def job_description(self) -> str:
        """The human-readable `SyntheticJob.job_description`."""


@functools.cache
def _translation(alphabet: str) -> tuple[bytes, bytes]:
    """A `bytes.translate` table mapping bytes onto `alphabet`, and the bytes to reject (no bias)."""
    n = len(alphabet)
    if not 0 < n <= 256 or not alphabet.isascii():
        raise ValueError("alphabet must be 1-256 ASCII characters")
    table = bytes(ord(alphabet[i % n]) for i in range(256))
    return table, bytes(range(256 - 256 % n, 256))


def random_chars(rng: random.Random, alphabet: str, k: int) -> str:
    """`k` uniform characters of the ASCII `alphabet`, drawn from `rng.randbytes` (fast: no per-char call)."""
    table, rejected = _translation(alphabet)
    out = b""
    while len(out) < k:
        need = k - len(out)
        out += rng.randbytes(need + need // 8 + 8).translate(table, rejected)
    return out[:k].decode("ascii")


_SYSTEM_RANDOM = random.SystemRandom()


class Entropy:
    """The randomness a generator draws from.

    With no `rng` (production) the secret material (salts, the v4 first password, Fernet IVs, job
    UUIDs) comes from the OS CSPRNG and the hashcat passwords from a freshly seeded `random.Random`.
    With a given `rng` everything comes from it, so a seeded `random.Random` makes generation fully
    reproducible: for tests and benchmarks only, since the secrets become predictable.
    """

    __slots__ = ("rng", "secret_rng")

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = random.Random() if rng is None else rng
        self.secret_rng: random.Random = _SYSTEM_RANDOM if rng is None else rng

    def token_bytes(self, n: int) -> bytes:
        return self.secret_rng.randbytes(n)

    def token_string(self, alphabet: str, k: int) -> str:
        return random_chars(self.secret_rng, alphabet, k)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.token_bytes(16), version=4)
