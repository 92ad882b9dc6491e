"""GPU hashcat synthetic jobs (docs/miner-protocol.md §3.13) for weights versions 0, 1-3 and 4.

Three flavours, chosen by the weights version:

* **v0** (weights version 0): one algorithm picked by `UTC hour % 3`, one password, `payload.txt` is
  `"{hash_hex}:{salt_hex}"`, the image's entrypoint is hashcat itself.
* **v1** (weights versions 1-3): all three algorithms chained; `payload.txt` is a pickle whose stages
  1 and 2 are Fernet-encrypted with keys derived from the previous stage's passwords.
* **v2** (weights version 4): like v1, but stage 0 is also encrypted, with a key derived from
  `first_password = "{miner_hotkey}-{48 random alphanumerics}"` that only travels in the job request's
  `docker_run_cmd`, while the volume is sent early with the initial request.

Building a job is pure CPU work (no I/O, no clock: pass `now`): about 1 ms for the production
parameters, dominated by password generation, hashing and AES. Build many jobs off the event loop
(e.g. `loop.run_in_executor` with a process or thread pool).
"""

from __future__ import annotations

import base64
import functools
import io
import math
import pickle
import random
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from horde_common.config import HashcatDifficulty

from .base import PRESET_NVIDIA_ALL, Entropy, JobGenerator, Verdict, Volume
from .hashcat_crypto import answer_for, fernet_encrypt, fernet_key, hashers, single_file_zip_b64
from .hashcat_passwords import ALPHANUMERIC, DIGITS, HashParams, random_passwords, salted_hash_list
from .hashcat_script import V1_SCRIPT, V2_SCRIPT

__all__ = [
    "ALGORITHMS",
    "HashAlgorithm",
    "HashParams",
    "HashcatFlavour",
    "HashcatJobGenerator",
    "answer_for",
    "fernet_encrypt",
    "fernet_key",
    "flavour_for",
    "hash_params",
    "hashcat_score",
    "single_file_zip_b64",
]

HASHCAT_CHARSET_1 = "?l?d?u"
PAYLOAD_FILE = "payload.txt"
FIRST_PASSWORD_RANDOM_CHARS = 48
SALT_BYTES = 8
SUPPORTED_WEIGHTS_VERSIONS = (0, 1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class HashAlgorithm:
    name: str
    hashcat_mode: str
    hashlib_name: str

    def digest_hex(self, data: bytes) -> str:
        return _HASHERS[self.hashlib_name](data).hexdigest()

    def __str__(self) -> str:
        return self.name


_HASHERS = hashers()
SHA256 = HashAlgorithm("SHA256", "1410", "sha256")
SHA384 = HashAlgorithm("SHA384", "10810", "sha384")
SHA512 = HashAlgorithm("SHA512", "1710", "sha512")
ALGORITHMS: tuple[HashAlgorithm, ...] = (SHA256, SHA384, SHA512)
"""All algorithms in spec order; also the v0 choice by `UTC hour % 3`."""


class HashcatFlavour(IntEnum):
    V0 = 0
    V1 = 1
    V2 = 2


def flavour_for(weights_version: int) -> HashcatFlavour:
    if weights_version not in SUPPORTED_WEIGHTS_VERSIONS:
        raise ValueError(f"no hashcat job for weights version {weights_version}")
    if weights_version == 0:
        return HashcatFlavour.V0
    if weights_version <= 3:
        return HashcatFlavour.V1
    return HashcatFlavour.V2


# (params set, algorithm) -> parameters; params set 0 is weights version 0, set 1 is versions 1-4.
PRODUCTION_PARAMS: dict[int, dict[HashAlgorithm, HashParams]] = {
    0: {
        SHA256: HashParams(timeout=90, num_letters=6, num_digits=0, num_hashes=1),
        SHA384: HashParams(timeout=45, num_letters=5, num_digits=0, num_hashes=1),
        SHA512: HashParams(timeout=45, num_letters=5, num_digits=0, num_hashes=1),
    },
    1: {
        SHA256: HashParams(timeout=53, num_letters=6, num_digits=0, num_hashes=100),
        SHA384: HashParams(timeout=53, num_letters=5, num_digits=1, num_hashes=100),
        SHA512: HashParams(timeout=53, num_letters=5, num_digits=1, num_hashes=100),
    },
}

# Localnet: 1 letter + 1 digit (620 candidates per hash list), 2 hashes per algorithm; same timeouts,
# so the scoring rules are exercised unchanged while a CPU cracks a job in about a millisecond.
LOCALNET_PARAMS: dict[int, dict[HashAlgorithm, HashParams]] = {
    params_set: {
        alg: HashParams(timeout=p.timeout, num_letters=1, num_digits=1, num_hashes=min(p.num_hashes, 2))
        for alg, p in table.items()
    }
    for params_set, table in PRODUCTION_PARAMS.items()
}


def hash_params(
    weights_version: int, algorithm: HashAlgorithm, difficulty: HashcatDifficulty | str
) -> HashParams:
    table = (
        LOCALNET_PARAMS if HashcatDifficulty(difficulty) is HashcatDifficulty.LOCALNET else PRODUCTION_PARAMS
    )
    return table[0 if weights_version == 0 else 1][algorithm]


def hashcat_score(weights_version: int, time_took: float, timeout: float) -> float:
    """The score of a correct answer given within the limit (docs/miner-protocol.md §3.13 "Score function").

    v0: `2 * (1 - t / (2 * timeout))`; v1, v2: `1 / t`; v3, v4: `1`. A non-positive `t` (an out of
    order response, rejected earlier by the caller) scores 0 for the time-based versions.
    """
    if weights_version == 0:
        return 2 * (1 - time_took / (2 * timeout))
    if weights_version in (1, 2):
        return 1 / time_took if time_took > 0 else 0.0
    if weights_version in (3, 4):
        return 1.0
    raise ValueError(f"no score function for weights version {weights_version}")


def mask_for(flavour: HashcatFlavour, params: HashParams) -> str:
    if flavour is HashcatFlavour.V0:
        return "?1" * params.password_length
    return "?1" * params.num_letters + "?d" * params.num_digits


class HashcatJobGenerator(JobGenerator):
    """A hashcat job for any non-LLM executor class.

    Everything (passwords, salts, hashes, encryption, the zipped volume, the expected answer) is
    computed in `__init__`: CPU-heavy, ~1 ms with production parameters. The accessors are then free.
    A pickled copy (from a worker process) has everything but `passwords` (see `__reduce__`).
    """

    def __init__(
        self,
        *,
        executor_class: str,
        weights_version: int,
        miner_hotkey: str,
        difficulty: HashcatDifficulty | str = HashcatDifficulty.PRODUCTION,
        rng: random.Random | None = None,
        now: datetime | None = None,
    ) -> None:
        self.executor_class = executor_class
        self.weights_version = weights_version
        self.flavour = flavour_for(weights_version)
        self.miner_hotkey = miner_hotkey
        self.difficulty = HashcatDifficulty(difficulty)
        entropy = Entropy(rng)
        self.job_uuid: uuid.UUID = entropy.uuid4()

        if self.flavour is HashcatFlavour.V0:
            # v0 picks one algorithm by the UTC hour; without a clock reading it falls back to the rng.
            index = now.hour % 3 if now is not None else entropy.rng.randrange(3)
            self.algorithms: tuple[HashAlgorithm, ...] = (ALGORITHMS[index],)
        else:
            self.algorithms = ALGORITHMS
        self.params: tuple[HashParams, ...] = tuple(
            hash_params(weights_version, alg, self.difficulty) for alg in self.algorithms
        )
        self.masks: tuple[str, ...] = tuple(mask_for(self.flavour, p) for p in self.params)
        self.salts: tuple[bytes, ...] = tuple(entropy.token_bytes(SALT_BYTES) for _ in self.algorithms)

        if self.flavour is HashcatFlavour.V0:
            p = self.params[0]
            password = entropy.token_string(ALPHANUMERIC, p.num_letters) + entropy.token_string(
                DIGITS, p.num_digits
            )
            self.passwords: tuple[list[str], ...] = ([password],)
        else:
            self.passwords = tuple(random_passwords(entropy.rng, p) for p in self.params)

        self.first_password: str | None = None
        if self.flavour is HashcatFlavour.V2:
            suffix = entropy.token_string(ALPHANUMERIC, FIRST_PASSWORD_RANDOM_CHARS)
            self.first_password = f"{miner_hotkey}-{suffix}"

        hash_lists = [
            salted_hash_list(_HASHERS[alg.hashlib_name], salt, passwords)
            for alg, salt, passwords in zip(self.algorithms, self.salts, self.passwords, strict=True)
        ]
        if self.flavour is HashcatFlavour.V0:
            payload = hash_lists[0].encode("ascii")
            self.expected_answer = self.passwords[0][0]
        else:
            timestamp = int(now.timestamp()) if now is not None else 0
            payloads: list[str] = []
            for i, hash_list in enumerate(hash_lists):
                if i == 0 and self.first_password is None:
                    payloads.append(hash_list)  # v1: stage 0 in clear
                    continue
                secret = self.first_password if i == 0 else "\n".join(self.passwords[i - 1])
                assert secret is not None
                token = fernet_encrypt(
                    fernet_key(secret),
                    hash_list.encode("utf-8"),
                    iv=entropy.token_bytes(16),
                    timestamp=timestamp,
                )
                payloads.append(token.decode("ascii"))
            job = {
                "n": len(self.algorithms),
                "payloads": payloads,
                "masks": list(self.masks),
                "algorithms": [alg.hashcat_mode for alg in self.algorithms],
                "num_letters": [p.num_letters for p in self.params],
                "num_digits": [p.num_digits for p in self.params],
            }
            payload = pickle.dumps(job, protocol=4)
            self.expected_answer = answer_for(list(self.passwords))
        # Only the zipped form is kept: it is what is sent, and generators travel between processes.
        self._volume_contents = single_file_zip_b64(PAYLOAD_FILE, payload)
        self._timeout = max(p.timeout for p in self.params)

    # --- what is sent ---

    def base_docker_image_name(self) -> str:
        return self.docker_image_name()

    def docker_image_name(self) -> str:
        tag = "v0" if self.flavour is HashcatFlavour.V0 else "v1"
        return f"backenddevelopersltd/compute-horde-job:{tag}-latest"

    def docker_run_options_preset(self) -> str:
        return PRESET_NVIDIA_ALL

    def docker_run_cmd(self) -> list[str]:
        if self.flavour is HashcatFlavour.V0:
            # The v0 image's entrypoint is hashcat.
            return [
                "--runtime",
                "600",
                "--restore-disable",
                "--attack-mode",
                "3",
                "--workload-profile",
                "3",
                "--optimized-kernel-enable",
                "--hash-type",
                self.algorithms[0].hashcat_mode,
                "--hex-salt",
                "-1",
                HASHCAT_CHARSET_1,
                "--outfile-format",
                "2",
                "--quiet",
                f"/volume/{PAYLOAD_FILE}",
                self.masks[0],
            ]
        if self.first_password is not None:
            return ["/script.py", self.first_password]
        return ["/script.py"]

    def raw_script(self) -> str | None:
        if self.flavour is HashcatFlavour.V0:
            return None
        return V2_SCRIPT if self.flavour is HashcatFlavour.V2 else V1_SCRIPT

    def volume(self) -> Volume:
        return {"volume_type": "inline", "contents": self._volume_contents, "relative_path": None}

    def volume_in_initial_req(self) -> bool:
        return self.flavour is HashcatFlavour.V2

    def initial_request_volume_json(self) -> str:
        # `_volume_contents` is base64 (standard alphabet): nothing in it needs a JSON escape.
        if not self.volume_in_initial_req():
            return "null"
        return f'{{"volume_type":"inline","contents":"{self._volume_contents}","relative_path":null}}'

    def payload(self) -> bytes:
        """The `payload.txt` inside the volume (decoded on demand)."""
        raw = base64.b64decode(self._volume_contents)
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return zf.read(PAYLOAD_FILE)

    def timeout_seconds(self) -> int:
        return self._timeout

    # --- judging ---

    def score(self, time_took: float) -> float:
        return hashcat_score(self.weights_version, time_took, self._timeout)

    def verify(self, stdout: str, time_took: float) -> Verdict:
        got = stdout.strip()
        if got != self.expected_answer:
            shown = got if len(got) <= 210 else got[:100] + " ... " + got[-100:]
            return Verdict(
                False,
                f"result does not match expected answer: expected answer={self.expected_answer} "
                f"got={shown!r}",
                0.0,
            )
        score = self.score(time_took)
        if not math.isfinite(score):
            score = 0.0
        return Verdict(True, "", score)

    def job_description(self) -> str:
        return f"Hashcat {self}"

    def __reduce__(self) -> tuple[Any, ...]:
        """Generators are built in worker processes and shipped back. Pickled attribute by
        attribute, with 300 passwords, enums and dataclasses, that cost ~0.1 ms per job on each
        side, on top of the volume; now only what sending and judging need travels, as plain
        values. The passwords stay behind: judging needs only `expected_answer`."""
        state = (
            *(self.executor_class, self.weights_version, self.miner_hotkey, str(self.difficulty)),
            *(self.job_uuid.int, tuple(ALGORITHMS.index(a) for a in self.algorithms), self.salts),
            *(self.first_password, self.expected_answer, self._volume_contents, self._timeout),
        )
        return _rebuild, state

    def __str__(self) -> str:
        return _describe(self.flavour, self.algorithms, self.params)


def _rebuild(
    executor_class: str,
    weights_version: int,
    miner_hotkey: str,
    difficulty: str,
    job_uuid: int,
    algorithms: tuple[int, ...],
    salts: tuple[bytes, ...],
    first_password: str | None,
    expected_answer: str,
    volume_contents: str,
    timeout: int,
) -> HashcatJobGenerator:
    """A generator from `HashcatJobGenerator.__reduce__`'s state (without its passwords)."""
    gen = HashcatJobGenerator.__new__(HashcatJobGenerator)
    gen.executor_class, gen.weights_version, gen.miner_hotkey = executor_class, weights_version, miner_hotkey
    gen.flavour = flavour_for(weights_version)
    gen.difficulty = HashcatDifficulty(difficulty)
    gen.job_uuid = uuid.UUID(int=job_uuid)
    gen.algorithms = tuple(ALGORITHMS[i] for i in algorithms)
    gen.params = tuple(hash_params(weights_version, alg, gen.difficulty) for alg in gen.algorithms)
    gen.masks = tuple(mask_for(gen.flavour, p) for p in gen.params)
    gen.salts, gen.first_password, gen.expected_answer = salts, first_password, expected_answer
    gen._volume_contents, gen._timeout = volume_contents, timeout
    return gen


@functools.lru_cache(maxsize=64)
def _describe(
    flavour: HashcatFlavour, algorithms: tuple[HashAlgorithm, ...], params: tuple[HashParams, ...]
) -> str:
    """The job description, the same for every job of a kind: built once (dataclass reprs are
    slow, and the batch stores one per job)."""
    names = ", ".join(a.name for a in algorithms)
    return f"{flavour.name}SyntheticJob [{names}] {list(params)}"
