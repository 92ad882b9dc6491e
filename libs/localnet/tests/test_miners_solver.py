"""The simulated executor's honest execution: cracking, decrypting, failing like a real container."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import zipfile

import pytest

from horde_job_runner.generators import HashcatJobGenerator, make_generator
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

GPU = "spin_up-4min.gpu-24gb"


def job_spec(gen: HashcatJobGenerator, **extra: object) -> dict[str, object]:
    return {
        "volume": gen.volume(),
        "raw_script": gen.raw_script(),
        "docker_run_cmd": gen.docker_run_cmd(),
        "docker_image_name": gen.docker_image_name(),
        **extra,
    }


def localnet_job(weights_version: int, seed: int = 1, hotkey: str = "5Fminer") -> HashcatJobGenerator:
    gen = make_generator(GPU, weights_version, hotkey, "localnet", random.Random(seed))
    assert isinstance(gen, HashcatJobGenerator)
    return gen


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


@pytest.mark.parametrize("weights_version", [0, 1, 2, 3, 4])
def test_execute_gives_the_expected_answer(weights_version: int) -> None:
    gen = localnet_job(weights_version)
    result = execute(job_spec(gen))
    assert result.exit_status == 0, result
    assert gen.verify(result.stdout, 1.0).correct


def test_v4_needs_the_right_first_password() -> None:
    gen = localnet_job(4)
    spec = job_spec(gen)
    spec["docker_run_cmd"] = ["/script.py", "5Fsomeone-else-" + "a" * 48]
    result = execute(spec)
    assert result.exit_status == 1 and "cannot decrypt" in result.stderr


def test_production_job_fails_like_a_container() -> None:
    gen = make_generator(GPU, 4, "5Fminer", "production", random.Random(1))
    assert isinstance(gen, HashcatJobGenerator)
    result = execute(job_spec(gen))
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


@pytest.mark.parametrize("weights_version", [1, 4])
def test_the_validators_script_runs_with_the_stand_in_hashcat(weights_version: int) -> None:
    gen = localnet_job(weights_version)
    result = run_script_subprocess(gen.raw_script() or "", gen.docker_run_cmd(), unpack_volume(gen.volume()))
    assert result.exit_status == 0, result
    assert gen.verify(result.stdout, 1.0).correct


def test_hashcat_stand_in(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    salt = b"\x01" * 8
    hashes = Path(str(tmp_path)) / "h.txt"
    hashes.write_text(f"{hashlib.sha256(b'q7' + salt).hexdigest()}:{salt.hex()}")
    hashcat_main(["--hash-type", "1410", "--hex-salt", "-1", "?l?d?u", "--quiet", str(hashes), "?1?d"])
    assert capsys.readouterr().out == "q7\n"
    with pytest.raises(SystemExit):
        hashcat_main(["--hash-type", "9999", str(hashes), "?1"])
