"""Honest job execution for the simulated executors: unpack the volume, decrypt, crack, answer.

This is what a real executor does with a hashcat job (docs/miner-protocol.md §3.13), minus docker and the GPU:

* **no `raw_script`** (weights version 0): the image's entrypoint is hashcat, so `docker_run_cmd` is a
  hashcat command line over `/volume/payload.txt`;
* **with `raw_script`** (weights versions 1-4): the script's job is emulated: the pickled stages are
  decrypted with Fernet (stage 0 with `argv[1]` when the command carries one), cracked one by one,
  and the answer is `urlsafe_b64(sha256(every stage's sorted passwords))`. With `run_scripts=True`
  the validator's script itself runs in a subprocess, with this module standing in for hashcat.

Any other job (neither a hashcat command line, `generic.is_hashcat_command`, nor `/script.py` with a
`raw_script`; the LLM images are `llm_jobs`' business) is not run at all: it exits 0 with a stdout
describing what a real executor would have run (`generic.describe_generic_job`).

Cracking is a brute-force mask attack in Python: fine for the localnet difficulty (620 candidates per
stage, about a millisecond per job), hopeless for production parameters, which fail the job rather
than hang (`MAX_KEYSPACE`). Everything here is synchronous CPU work with no module-level state, and
imports nothing heavy, so it can run in a worker process.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import itertools
import os
import pickle
import string
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from .generic import describe_generic_job, is_hashcat_command, is_script_job

MAX_KEYSPACE = 2_000_000
"""Largest mask keyspace the simulator brute-forces; bigger masks fail the job (exit status 1)."""

STDOUT_LIMIT = 1000

HASHCAT_MODES: dict[str, Callable[[bytes], Any]] = {
    "1410": hashlib.sha256,  # sha256($pass.$salt)
    "10810": hashlib.sha384,  # sha384($pass.$salt)
    "1710": hashlib.sha512,  # sha512($pass.$salt)
}
BUILTIN_CHARSETS = {
    "l": string.ascii_lowercase,
    "u": string.ascii_uppercase,
    "d": string.digits,
    "s": " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
}


class JobError(Exception):
    """The job fails: the container would exit non-zero. `str()` goes to stderr."""


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    exit_status: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


# ------------------------------------------------------------------------------------------ cracking


def expand_charset(spec: str, custom: dict[str, str] | None = None) -> str:
    """`?l?d?u` -> the characters, in order, without duplicates."""
    out: list[str] = []
    i = 0
    while i < len(spec):
        if spec[i] == "?" and i + 1 < len(spec):
            key = spec[i + 1]
            if key in BUILTIN_CHARSETS:
                out.extend(BUILTIN_CHARSETS[key])
            elif custom is not None and key in custom:
                out.extend(custom[key])
            elif key == "?":
                out.append("?")
            else:
                raise JobError(f"unknown charset ?{key}")
            i += 2
        else:
            out.append(spec[i])
            i += 1
    return "".join(dict.fromkeys(out))


def mask_positions(mask: str, custom: dict[str, str]) -> list[str]:
    """One charset per password position of a hashcat mask."""
    positions: list[str] = []
    i = 0
    while i < len(mask):
        if mask[i] == "?" and i + 1 < len(mask):
            key = mask[i + 1]
            if key in custom:
                positions.append(custom[key])
            elif key in BUILTIN_CHARSETS:
                positions.append(BUILTIN_CHARSETS[key])
            elif key == "?":
                positions.append("?")
            else:
                raise JobError(f"unknown mask charset ?{key}")
            i += 2
        else:
            positions.append(mask[i])
            i += 1
    return positions


def parse_hash_lines(text: str) -> dict[bytes, set[bytes]]:
    """`"{hash_hex}:{salt_hex}"` lines -> salt -> set of raw digests."""
    targets: dict[bytes, set[bytes]] = {}
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        digest, sep, salt_hex = line.partition(":")
        if not sep:
            raise JobError(f"line without a salt: {line[:80]!r}")
        try:
            salt, raw_digest = bytes.fromhex(salt_hex), bytes.fromhex(digest)
        except ValueError:
            raise JobError(f"bad hex in line: {line[:80]!r}") from None
        targets.setdefault(salt, set()).add(raw_digest)
    return targets


def crack(
    hash_mode: str, hash_lines: str, mask: str, custom_charsets: dict[str, str] | None = None
) -> list[str]:
    """Brute-force salted hashes over a mask; returns the cracked passwords in discovery order."""
    if hash_mode not in HASHCAT_MODES:
        raise JobError(f"unsupported hash type {hash_mode}")
    hasher = HASHCAT_MODES[hash_mode]
    custom = {k: expand_charset(v) for k, v in (custom_charsets or {}).items()}
    positions = mask_positions(mask, custom)
    keyspace = 1
    for charset in positions:
        keyspace *= len(charset)
    if keyspace > MAX_KEYSPACE:
        raise JobError(f"mask {mask} has {keyspace} candidates: too many for the simulator")
    targets = parse_hash_lines(hash_lines)
    candidates = _candidates(tuple(positions)) if keyspace <= CACHED_KEYSPACE else None
    found: list[str] = []
    for salt, digests in targets.items():
        remaining = set(digests)
        pool = candidates if candidates is not None else _generate(positions)
        for candidate in pool:
            digest = hasher(candidate + salt).digest()
            if digest in remaining:
                found.append(candidate.decode("ascii"))
                remaining.discard(digest)
                if not remaining:
                    break
    return found


CACHED_KEYSPACE = 100_000


def _generate(positions: list[str] | tuple[str, ...]) -> Iterator[bytes]:
    for combo in itertools.product(*positions):
        yield "".join(combo).encode("ascii")


@functools.lru_cache(maxsize=32)
def _candidates(positions: tuple[str, ...]) -> tuple[bytes, ...]:
    """Every candidate of a small mask, computed once per worker (localnet masks have 620)."""
    return tuple(_generate(positions))


# ----------------------------------------------------------------------------------------- volumes


def unpack_volume(volume: dict[str, Any] | None) -> dict[str, bytes]:
    """Files of an inline volume (path under `/volume/` -> bytes). Other volume types need a network."""
    if volume is None:
        return {}
    kind = volume.get("volume_type")
    if kind == "multi_volume":
        files: dict[str, bytes] = {}
        for sub in volume.get("volumes") or []:
            files.update(unpack_volume(sub))
        return files
    if kind != "inline":
        raise JobError(f"volume type {kind!r} is not supported by the simulator")
    prefix = (volume.get("relative_path") or "").strip("/")
    try:
        raw = base64.b64decode(volume["contents"], validate=False)
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return {
                (f"{prefix}/{name}" if prefix else name): zf.read(name)
                for name in zf.namelist()
                if not name.endswith("/")
            }
    except (binascii.Error, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise JobError(f"cannot unpack the inline volume: {exc}") from None


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global: the hashcat payload holds only dicts, lists, strings and ints."""

    def find_class(self, module: str, name: str) -> Any:
        raise JobError(f"payload pickle references {module}.{name}")


def load_payload_pickle(data: bytes) -> dict[str, Any]:
    try:
        job = _DataOnlyUnpickler(io.BytesIO(data)).load()
    except JobError:
        raise
    except Exception as exc:
        raise JobError(f"payload.txt is not a pickle: {exc}") from None
    if not isinstance(job, dict):
        raise JobError("payload.txt does not hold a dict")
    return job


# --------------------------------------------------------------------------------------- execution


def derive_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode("utf-8")).digest())


def answer_for(stages: Iterable[list[str]]) -> str:
    joined = "".join("".join(stage) for stage in stages).encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.sha256(joined).digest()).decode("ascii")


def solve_chained(payload: bytes, argv: list[str]) -> str:
    """Emulate the decryption script on a pickled chained job; returns its stdout line."""
    job = load_payload_pickle(payload)
    try:
        n = int(job["n"])
        key = derive_key(argv[0]) if argv else None
        stages: list[list[str]] = []
        for i in range(n):
            text = job["payloads"][i]
            if key is not None:
                try:
                    text = Fernet(key).decrypt(text.encode("ascii")).decode("utf-8")
                except InvalidToken:
                    raise JobError(f"stage {i}: cannot decrypt (wrong key)") from None
            passwords = sorted(
                p for p in crack(str(job["algorithms"][i]), text, job["masks"][i], {"1": "?l?d?u"}) if p
            )
            stages.append(passwords)
            key = derive_key("\n".join(passwords))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise JobError(f"malformed payload: {exc!r}") from None
    return answer_for(stages) + "\n"


def _option(args: list[str], name: str) -> str | None:
    if name in args:
        i = args.index(name)
        if i + 1 < len(args):
            return args[i + 1]
    return None


def run_hashcat_cmd(args: list[str], read_file: Callable[[str], str]) -> str:
    """Run a hashcat command line (mask attack, `--outfile-format 2`); returns hashcat's stdout."""
    mode = _option(args, "--hash-type") or _option(args, "-m")
    if mode is None:
        raise JobError("hashcat: no --hash-type")
    custom = {str(k): v for k in range(1, 5) if (v := _option(args, f"-{k}")) is not None}
    if len(args) < 2:
        raise JobError("hashcat: no hash file and mask")
    hash_file, mask = args[-2], args[-1]
    found = crack(mode, read_file(hash_file), mask, custom)
    return "".join(f"{p}\n" for p in found)


def warm_up() -> None:
    """A no-op task that makes a worker process import this module before the first job."""


def truncate_output(text: str) -> str:
    """The executor's rule: longer than 1000 characters -> first 100 + " ... " + last 100."""
    if len(text) > STDOUT_LIMIT:
        return text[:100] + " ... " + text[-100:]
    return text


def execute(job: dict[str, Any]) -> ExecutionResult:
    """Run one job honestly. `job` holds plain values: `volume` (wire dict or None), `raw_script`,
    `docker_run_cmd`, `docker_image_name`, `output_upload` (wire dict or None), `run_scripts`
    (bool). A job that is neither a hashcat command line nor the hashcat script is only described
    (`generic`). Never raises."""
    try:
        cmd: list[str] = list(job.get("docker_run_cmd") or [])
        script = job.get("raw_script")
        if not (is_script_job(script, cmd) if script is not None else is_hashcat_command(cmd)):
            stdout = describe_generic_job(job, unpack_volume)  # not hashcat: described, not run
            return ExecutionResult(0, truncate_output(stdout), "")
        files = unpack_volume(job.get("volume"))
        if script is None:
            stdout = run_hashcat_cmd(cmd, lambda path: _volume_file(files, path).decode("utf-8"))
        elif job.get("run_scripts"):
            return run_script_subprocess(script, cmd, files)
        else:
            stdout = solve_chained(_volume_file(files, "/volume/payload.txt"), cmd[1:])
        return ExecutionResult(0, truncate_output(stdout), "")
    except JobError as exc:
        return ExecutionResult(1, "", truncate_output(str(exc)))
    except Exception as exc:  # a simulator bug must not kill the miner
        return ExecutionResult(1, "", truncate_output(f"simulator error: {type(exc).__name__}: {exc}"))


def _volume_file(files: dict[str, bytes], path: str) -> bytes:
    rel = path.removeprefix("/volume/").lstrip("/")
    if rel not in files:
        raise JobError(f"{path}: no such file in the volume")
    return files[rel]


# ------------------------------------------------------------------------ the real script, for fidelity


def run_script_subprocess(
    script: str, cmd: list[str], files: dict[str, bytes], timeout: float = 120
) -> ExecutionResult:
    """Run the validator's `raw_script` with `python`, this module standing in for hashcat."""
    with tempfile.TemporaryDirectory(prefix="horde-executor-") as tmp:
        root = Path(tmp)
        volume = root / "volume"
        volume.mkdir()
        for name, data in files.items():
            target = (volume / name).resolve()
            if not target.is_relative_to(volume.resolve()):
                raise JobError(f"volume path escapes /volume: {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (root / "script.py").write_text(script, encoding="utf-8")
        fake = root / "hashcat"
        fake.write_text(
            f"#!{sys.executable}\nfrom horde_localnet.miners.solver import hashcat_main\nhashcat_main()\n"
        )
        fake.chmod(0o755)
        argv = cmd[1:] if cmd and cmd[0] == "/script.py" else cmd
        env = {**os.environ, "HORDE_JOB_VOLUME_DIR": str(volume), "HORDE_HASHCAT": str(fake)}
        try:
            proc = subprocess.run(
                [sys.executable, str(root / "script.py"), *argv],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ExecutionResult(None, "", "timed out")
        return ExecutionResult(proc.returncode, truncate_output(proc.stdout), truncate_output(proc.stderr))


def hashcat_main(argv: list[str] | None = None) -> None:
    """A `hashcat` stand-in: mask attacks on salted SHA-2 hashes, plain passwords on stdout."""
    args = sys.argv[1:] if argv is None else argv
    try:
        out = run_hashcat_cmd(args, lambda path: Path(path).read_text(encoding="utf-8"))
    except JobError as exc:
        sys.stderr.write(f"hashcat: {exc}\n")
        raise SystemExit(255) from None
    sys.stdout.write(out)
