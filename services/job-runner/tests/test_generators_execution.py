"""Hashcat job generators (docs/miner-protocol.md §3.13) through the shipped script, run as an executor
runs it (with a stand-in for the hashcat binary): round trips and scoring of the answers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from horde_common.config import HashcatDifficulty
from horde_job_runner.generators import (
    CLASS_SPIN_UP_4MIN_GPU_24GB,
    HashcatJobGenerator,
    make_generator,
)
from testing.miner_client import unzip_volume

HOTKEY = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
NOW = datetime(2024, 11, 28, 10, 0, 0, tzinfo=UTC)
LOCAL = HashcatDifficulty.LOCALNET

# A stand-in for the hashcat binary: mask attack over salted `sha*(password + salt)` hashes, printing
# the cracked plain passwords (`--outfile-format 2`), as the decryption script expects.
FAKE_HASHCAT = r"""
import hashlib, itertools, string, sys

args = sys.argv[1:]
mode = args[args.index("--hash-type") + 1]
custom = args[args.index("-1") + 1]
hash_file, mask = args[-2], args[-1]
algo = {"1410": hashlib.sha256, "10810": hashlib.sha384, "1710": hashlib.sha512}[mode]
builtin = {"l": string.ascii_lowercase, "u": string.ascii_uppercase, "d": string.digits}

def expand(spec):
    out, i = "", 0
    while i < len(spec):
        out += builtin[spec[i + 1]] if spec[i] == "?" else spec[i]
        i += 2 if spec[i] == "?" else 1
    return out

sets, i = [], 0
while i < len(mask):
    if mask[i] == "?":
        sets.append(expand(custom) if mask[i + 1] == "1" else builtin[mask[i + 1]])
        i += 2
    else:
        sets.append(mask[i])
        i += 1
targets = {}
for line in open(hash_file).read().split("\n"):
    if line:
        digest, salt = line.split(":")
        targets.setdefault(bytes.fromhex(salt), set()).add(digest)
for salt, digests in targets.items():
    for chars in itertools.product(*sets):
        pw = "".join(chars)
        if algo(pw.encode() + salt).hexdigest() in digests:
            print(pw)
"""


@pytest.fixture(scope="module")
def fake_hashcat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bin") / "hashcat"
    path.write_text(f"#!{sys.executable}\n{FAKE_HASHCAT}")
    path.chmod(0o755)
    return path


def run_job_like_an_executor(gen: HashcatJobGenerator, workdir: Path, fake_hashcat: Path) -> str:
    """Unpack the volume and run the job as the executor would (raw_script or hashcat entrypoint)."""
    volume_dir = workdir / "volume"
    volume_dir.mkdir()
    for name, data in unzip_volume(gen.volume()).items():
        (volume_dir / name).write_bytes(data)
    cmd = gen.docker_run_cmd()
    script = gen.raw_script()
    if script is None:  # v0: the image's entrypoint is hashcat
        argv = [str(fake_hashcat), *(a.replace("/volume/", f"{volume_dir}/") for a in cmd)]
    else:
        (workdir / "script.py").write_text(script)
        assert cmd[0] == "/script.py"
        argv = [sys.executable, str(workdir / "script.py"), *cmd[1:]]
    env = {**os.environ, "HORDE_JOB_VOLUME_DIR": str(volume_dir), "HORDE_HASHCAT": str(fake_hashcat)}
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("weights_version", [0, 1, 2, 3, 4])
def test_round_trip_through_the_shipped_script(
    weights_version: int, tmp_path: Path, fake_hashcat: Path
) -> None:
    gen = make_generator(
        CLASS_SPIN_UP_4MIN_GPU_24GB, weights_version, HOTKEY, LOCAL, random.Random(weights_version), now=NOW
    )
    assert isinstance(gen, HashcatJobGenerator)
    stdout = run_job_like_an_executor(gen, tmp_path, fake_hashcat)
    assert stdout.strip() == gen.expected_answer
    verdict = gen.verify(stdout, 10.0)
    assert verdict.correct and verdict.comment == ""
    expected_score = {0: 2 * (1 - 10.0 / (2 * gen.timeout_seconds())), 1: 0.1, 2: 0.1, 3: 1.0, 4: 1.0}
    assert verdict.score == pytest.approx(expected_score[weights_version])


@pytest.mark.parametrize("weights_version", [0, 1, 4])
def test_wrong_answer_fails_with_score_zero(weights_version: int) -> None:
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, weights_version, HOTKEY, LOCAL, random.Random(1))
    verdict = gen.verify("not-the-answer\n", 1.0)
    assert verdict == (False, verdict.comment, 0.0)
    assert verdict.comment.startswith("result does not match expected answer: ")
    assert not gen.verify("", 1.0).correct


def test_answer_is_stripped_before_comparison() -> None:
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, HOTKEY, LOCAL, random.Random(2))
    assert isinstance(gen, HashcatJobGenerator)
    assert gen.verify(f"  {gen.expected_answer}\n\n", 3.0).correct
