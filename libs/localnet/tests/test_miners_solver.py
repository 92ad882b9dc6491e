"""The simulated executor's honest execution: cracking, decrypting, failing like a real container."""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import zipfile
from typing import Any

import pytest
from cryptography.fernet import Fernet

from horde_localnet.miners.solver import (
    JobError,
    crack,
    execute,
    expand_charset,
    hashcat_main,
    run_script_subprocess,
    truncate_output,
    unpack_volume,
)

# Jobs are written here in the wire format of docs/miner-protocol.md §3.13, not made by the job
# runner's generators; that the simulator answers those is tested in
# services/job-runner/tests/test_against_localnet_solver.py.
SALT = bytes.fromhex("0011223344556677")
HASHCAT_CMD = ["--hash-type", "1410", "--hex-salt", "-1", "?l?d?u", "--outfile-format", "2", "--quiet"]


def hash_lines(hasher: Any, passwords: list[str]) -> str:
    return "\n".join(f"{hasher(p.encode() + SALT).hexdigest()}:{SALT.hex()}" for p in passwords)


def inline_volume(payload: bytes) -> dict[str, object]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", payload)
    return {
        "volume_type": "inline",
        "contents": base64.b64encode(buf.getvalue()).decode(),
        "relative_path": None,
    }


def fernet_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


STAGES = [["a1", "b2"], ["Z9"]]
CHAINED_ANSWER = base64.urlsafe_b64encode(hashlib.sha256(b"a1b2Z9").digest()).decode()


def chained_job(first_password: str) -> dict[str, object]:
    """Two stages: stage 0 encrypted with `first_password`, stage 1 with stage 0's passwords."""
    stage0 = Fernet(fernet_key(first_password)).encrypt(hash_lines(hashlib.sha256, STAGES[0]).encode())
    stage1 = Fernet(fernet_key("\n".join(STAGES[0]))).encrypt(hash_lines(hashlib.sha384, STAGES[1]).encode())
    payload = {
        "n": 2,
        "payloads": [stage0.decode(), stage1.decode()],
        "masks": ["?1?d", "?1?d"],
        "algorithms": ["1410", "10810"],
    }
    return {
        "volume": inline_volume(pickle.dumps(payload, protocol=4)),
        "raw_script": "# emulated",
        "docker_run_cmd": ["/script.py", first_password],
    }


def test_expand_charset() -> None:
    chars = expand_charset("?l?d?u")
    assert len(chars) == 62 and chars.startswith("abc") and "0" in chars and "Z" in chars


def test_crack_salted_hashes() -> None:
    salt = bytes.fromhex("0011223344556677")
    lines = "\n".join(f"{hashlib.sha384(p.encode() + salt).hexdigest()}:{salt.hex()}" for p in ["a1", "Z9"])
    assert sorted(crack("10810", lines, "?1?d", {"1": "?l?d?u"})) == ["Z9", "a1"]


def test_production_masks_are_refused_not_attempted() -> None:
    with pytest.raises(JobError, match="too many"):
        crack("1410", "00:00", "?1?1?1?1?1?1", {"1": "?l?d?u"})


def test_execute_a_hashcat_command_line() -> None:
    volume = inline_volume(hash_lines(hashlib.sha256, ["q7"]).encode())
    result = execute({"volume": volume, "docker_run_cmd": [*HASHCAT_CMD, "/volume/payload.txt", "?1?d"]})
    assert (result.exit_status, result.stdout) == (0, "q7\n")


def test_execute_a_chained_script_job() -> None:
    result = execute(chained_job("5Fminer-secret"))
    assert result.exit_status == 0, result
    assert result.stdout == CHAINED_ANSWER + "\n"


def test_a_chained_job_needs_the_right_first_password() -> None:
    spec = chained_job("5Fminer-secret")
    spec["docker_run_cmd"] = ["/script.py", "5Fsomeone-else"]
    result = execute(spec)
    assert result.exit_status == 1 and "cannot decrypt" in result.stderr


def test_a_production_mask_fails_like_a_container() -> None:
    volume = inline_volume(hash_lines(hashlib.sha256, ["q7"]).encode())
    cmd = [*HASHCAT_CMD, "/volume/payload.txt", "?1?1?1?1?1?1?d?d"]
    result = execute({"volume": volume, "docker_run_cmd": cmd})
    assert result.exit_status == 1 and "too many" in result.stderr


def test_bad_volumes_fail_the_job() -> None:
    assert (
        execute({"volume": {"volume_type": "inline", "contents": "!!!"}, "docker_run_cmd": []}).exit_status
        == 1
    )
    remote = {"volume_type": "zip_url", "contents": "http://example.invalid/x.zip"}
    assert (
        "not supported"
        in execute({"volume": remote, "docker_run_cmd": ["/script.py"], "raw_script": "x"}).stderr
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.txt", b"cos\nsystem\n(S'echo pwned'\ntR.")  # a malicious pickle
    volume = {
        "volume_type": "inline",
        "contents": base64.b64encode(buf.getvalue()).decode(),
        "relative_path": None,
    }
    result = execute({"volume": volume, "raw_script": "x", "docker_run_cmd": ["/script.py"]})
    assert result.exit_status == 1 and "references" in result.stderr


def test_unpack_relative_path() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"A")
    volume = {
        "volume_type": "inline",
        "contents": base64.b64encode(buf.getvalue()).decode(),
        "relative_path": "sub",
    }
    assert unpack_volume({"volume_type": "multi_volume", "volumes": [volume]}) == {"sub/a.txt": b"A"}


def test_stdout_truncation() -> None:
    assert truncate_output("x" * 1000) == "x" * 1000
    long = "a" * 100 + "b" * 1000 + "c" * 100
    assert truncate_output(long) == "a" * 100 + " ... " + "c" * 100


STAND_IN_SCRIPT = """import os, subprocess, sys
volume = os.environ["HORDE_JOB_VOLUME_DIR"]
args = [os.environ["HORDE_HASHCAT"], *sys.argv[1:], volume + "/payload.txt", "?1?d"]
print(subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip())
"""


def test_a_script_runs_with_the_volume_and_the_stand_in_hashcat() -> None:
    files = unpack_volume(inline_volume(hash_lines(hashlib.sha256, ["q7"]).encode()))
    result = run_script_subprocess(STAND_IN_SCRIPT, ["/script.py", *HASHCAT_CMD], files)
    assert (result.exit_status, result.stdout) == (0, "q7\n"), result


def test_hashcat_stand_in(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    salt = b"\x01" * 8
    hashes = Path(str(tmp_path)) / "h.txt"
    hashes.write_text(f"{hashlib.sha256(b'q7' + salt).hexdigest()}:{salt.hex()}")
    hashcat_main(["--hash-type", "1410", "--hex-salt", "-1", "?l?d?u", "--quiet", str(hashes), "?1?d"])
    assert capsys.readouterr().out == "q7\n"
    with pytest.raises(SystemExit):
        hashcat_main(["--hash-type", "9999", str(hashes), "?1"])
