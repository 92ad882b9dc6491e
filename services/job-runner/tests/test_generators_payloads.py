"""Hashcat and LLM job generators (docs/miner-protocol.md §3.13, §3.14): the production payload layout,
images, scripts and timeouts, parameters, scores by weights version, determinism, LLM jobs."""

from __future__ import annotations

import base64
import hashlib
import pickle
import random
import string
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet, InvalidToken

from horde_common.config import HashcatDifficulty
from horde_job_runner.generators import (
    ALGORITHMS,
    CLASS_ALWAYS_ON_GPU_24GB,
    CLASS_ALWAYS_ON_LLM_A6000,
    CLASS_SPIN_UP_4MIN_GPU_24GB,
    LLM_IMAGE,
    PRODUCTION_PARAMS,
    SHA256,
    SHA384,
    SHA512,
    HashcatFlavour,
    HashcatJobGenerator,
    LlmPromptSample,
    LlmPromptsJobGenerator,
    NoPromptsAvailable,
    fernet_key,
    hash_params,
    hashcat_score,
    make_generator,
)
from testing.miner_client import unzip_volume

HOTKEY = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
OTHER_HOTKEY = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
NOW = datetime(2024, 11, 28, 10, 0, 0, tzinfo=UTC)
LOCAL = HashcatDifficulty.LOCALNET


def decrypt_stages(gen: HashcatJobGenerator, first_password: str | None) -> list[str]:
    """Decode `payload.txt` as the script does, using the generator's own passwords for chaining."""
    job = pickle.loads(unzip_volume(gen.volume())["payload.txt"])
    stages = []
    for i in range(job["n"]):
        text = job["payloads"][i]
        if i == 0 and first_password is not None:
            text = Fernet(fernet_key(first_password)).decrypt(text.encode()).decode()
        elif i > 0:
            text = Fernet(fernet_key("\n".join(gen.passwords[i - 1]))).decrypt(text.encode()).decode()
        stages.append(text)
    return stages


@pytest.mark.parametrize("weights_version", [1, 3, 4])
def test_production_payload_layout(weights_version: int) -> None:
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, weights_version, HOTKEY, rng=random.Random(5), now=NOW)
    assert isinstance(gen, HashcatJobGenerator)
    files = unzip_volume(gen.volume())
    assert list(files) == ["payload.txt"]
    job = pickle.loads(files["payload.txt"])
    assert files["payload.txt"][:2] == b"\x80\x04"  # pickle protocol 4
    assert job["n"] == 3
    assert job["algorithms"] == ["1410", "10810", "1710"]
    assert job["masks"] == ["?1?1?1?1?1?1", "?1?1?1?1?1?d", "?1?1?1?1?1?d"]
    assert job["num_letters"] == [6, 5, 5]
    assert job["num_digits"] == [0, 1, 1]
    first = gen.first_password
    if weights_version == 4:
        assert first is not None
    else:
        assert first is None
    stages = decrypt_stages(gen, first)
    for alg, salt, passwords, text in zip(gen.algorithms, gen.salts, gen.passwords, stages, strict=True):
        assert len(passwords) == 100 == len(set(passwords))
        assert passwords == sorted(passwords)
        hasher = getattr(hashlib, alg.hashlib_name)
        assert text.split("\n") == [
            f"{hasher(p.encode() + salt).hexdigest()}:{salt.hex()}" for p in passwords
        ]
        assert len(salt) == 8
    letters = set(string.ascii_letters + string.digits)
    for pw in gen.passwords[0]:
        assert len(pw) == 6 and set(pw) <= letters
    for stage in gen.passwords[1:]:
        for pw in stage:
            assert len(pw) == 6 and set(pw[:5]) <= letters and pw[5] in string.digits
    concat = "".join("".join(p) for p in gen.passwords).encode()
    assert gen.expected_answer == base64.urlsafe_b64encode(hashlib.sha256(concat).digest()).decode()
    assert len(gen.expected_answer) == 44
    if weights_version < 4:
        assert job["payloads"][0] == stages[0]  # v1: stage 0 in clear


def test_v4_first_password_is_bound_to_the_miner_hotkey() -> None:
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, HOTKEY, LOCAL, random.Random(7))
    assert isinstance(gen, HashcatJobGenerator)
    first = gen.first_password
    assert first is not None
    prefix, _, suffix = first.rpartition("-")
    assert prefix == HOTKEY
    assert len(suffix) == 48 and suffix.isalnum() and suffix.isascii()
    assert gen.docker_run_cmd() == ["/script.py", first]
    # The volume goes early, in the initial request; the key only with the job request.
    assert gen.volume_in_initial_req()
    assert gen.initial_request_volume() == gen.volume()
    assert gen.job_request_volume() is None
    job = pickle.loads(unzip_volume(gen.volume())["payload.txt"])
    token = job["payloads"][0].encode()
    Fernet(fernet_key(first)).decrypt(token)
    with pytest.raises(InvalidToken):
        Fernet(fernet_key(f"{OTHER_HOTKEY}-{suffix}")).decrypt(token)
    with pytest.raises(InvalidToken):
        Fernet(fernet_key(HOTKEY)).decrypt(token)
    other = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, OTHER_HOTKEY, LOCAL, random.Random(7))
    assert isinstance(other, HashcatJobGenerator)
    assert other.first_password == f"{OTHER_HOTKEY}-{suffix}"
    with pytest.raises(InvalidToken):
        Fernet(fernet_key(other.first_password)).decrypt(token)


@pytest.mark.parametrize("weights_version", [0, 1, 2, 3])
def test_volume_goes_with_the_job_request_before_v4(weights_version: int) -> None:
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, weights_version, HOTKEY, LOCAL, random.Random(3))
    assert not gen.volume_in_initial_req()
    assert gen.initial_request_volume() is None
    assert gen.job_request_volume() == gen.volume()


@pytest.mark.parametrize(
    ("weights_version", "image", "script", "timeout"),
    [
        (0, "v0", False, None),
        (1, "v1", True, 53),
        (2, "v1", True, 53),
        (3, "v1", True, 53),
        (4, "v1", True, 53),
    ],
)
def test_images_script_and_timeout(
    weights_version: int, image: str, script: bool, timeout: int | None
) -> None:
    gen = make_generator(CLASS_ALWAYS_ON_GPU_24GB, weights_version, HOTKEY, rng=random.Random(4), now=NOW)
    assert gen.executor_class == CLASS_ALWAYS_ON_GPU_24GB
    assert gen.docker_image_name() == f"backenddevelopersltd/compute-horde-job:{image}-latest"
    assert gen.base_docker_image_name() == gen.docker_image_name()
    assert gen.docker_run_options_preset() == "nvidia_all"
    assert (gen.raw_script() is not None) is script
    assert gen.output_upload() is None
    if timeout is not None:
        assert gen.timeout_seconds() == timeout
    assert gen.job_description().startswith("Hashcat ")


@pytest.mark.parametrize(
    ("hour", "alg", "timeout", "length"), [(9, SHA256, 90, 6), (10, SHA384, 45, 5), (11, SHA512, 45, 5)]
)
def test_v0_picks_the_algorithm_by_utc_hour(hour: int, alg: object, timeout: int, length: int) -> None:
    gen = make_generator(
        CLASS_SPIN_UP_4MIN_GPU_24GB, 0, HOTKEY, rng=random.Random(1), now=NOW.replace(hour=hour)
    )
    assert isinstance(gen, HashcatJobGenerator)
    assert gen.flavour is HashcatFlavour.V0
    assert gen.algorithms == (alg,)
    assert gen.timeout_seconds() == timeout
    (password,) = gen.passwords[0]
    assert len(password) == length
    assert gen.expected_answer == password
    payload = unzip_volume(gen.volume())["payload.txt"].decode()
    salt = gen.salts[0]
    digest = getattr(hashlib, gen.algorithms[0].hashlib_name)(password.encode() + salt).hexdigest()
    assert payload == f"{digest}:{salt.hex()}"
    cmd = gen.docker_run_cmd()
    assert cmd == (
        "--runtime 600 --restore-disable --attack-mode 3 --workload-profile 3 --optimized-kernel-enable "
        f"--hash-type {gen.algorithms[0].hashcat_mode} --hex-salt -1 ?l?d?u --outfile-format 2 --quiet "
        f"/volume/payload.txt {'?1' * length}"
    ).split(" ")


def test_production_parameters_match_the_spec_table() -> None:
    table = {
        (0, SHA256): (90, 6, 0, 1),
        (0, SHA384): (45, 5, 0, 1),
        (0, SHA512): (45, 5, 0, 1),
    }
    for wv in (1, 2, 3, 4):
        table |= {(wv, SHA256): (53, 6, 0, 100), (wv, SHA384): (53, 5, 1, 100), (wv, SHA512): (53, 5, 1, 100)}
    for (wv, alg), expected in table.items():
        p = hash_params(wv, alg, HashcatDifficulty.PRODUCTION)
        assert (p.timeout, p.num_letters, p.num_digits, p.num_hashes) == expected
    assert [a.hashcat_mode for a in ALGORITHMS] == ["1410", "10810", "1710"]
    assert [a.name for a in ALGORITHMS] == ["SHA256", "SHA384", "SHA512"]
    assert set(PRODUCTION_PARAMS) == {0, 1}


def test_localnet_parameters_are_cpu_crackable() -> None:
    for wv in (0, 1, 4):
        for alg in ALGORITHMS:
            p = hash_params(wv, alg, "localnet")
            assert (p.num_letters, p.num_digits) == (1, 1)
            assert p.num_hashes <= 2
            assert p.keyspace == 620
            assert p.timeout == hash_params(wv, alg, "production").timeout


def test_score_functions_by_weights_version() -> None:
    assert hashcat_score(0, 0.0, 90) == 2
    assert hashcat_score(0, 45, 90) == pytest.approx(1.5)
    assert hashcat_score(0, 90, 90) == pytest.approx(1.0)
    assert hashcat_score(1, 4.0, 53) == 0.25
    assert hashcat_score(2, 0.5, 53) == 2.0
    assert hashcat_score(2, 0.0, 53) == 0.0
    assert hashcat_score(3, 52.0, 53) == 1.0
    assert hashcat_score(4, 0.01, 53) == 1.0
    with pytest.raises(ValueError):
        hashcat_score(5, 1.0, 53)


def test_unsupported_weights_version() -> None:
    with pytest.raises(ValueError, match="weights version 5"):
        make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 5, HOTKEY)


def _fingerprint(gen: HashcatJobGenerator) -> tuple:
    return (gen.job_uuid, gen.volume(), gen.docker_run_cmd(), gen.expected_answer, gen.raw_script())


@pytest.mark.parametrize("weights_version", [0, 1, 4])
@pytest.mark.parametrize("difficulty", ["production", "localnet"])
def test_deterministic_with_a_seeded_rng(weights_version: int, difficulty: str) -> None:
    def build(seed: int) -> HashcatJobGenerator:
        gen = make_generator(
            CLASS_SPIN_UP_4MIN_GPU_24GB, weights_version, HOTKEY, difficulty, random.Random(seed), now=NOW
        )
        assert isinstance(gen, HashcatJobGenerator)
        return gen

    assert _fingerprint(build(11)) == _fingerprint(build(11))
    assert _fingerprint(build(11)) != _fingerprint(build(12))


def test_unseeded_jobs_differ() -> None:
    a = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, HOTKEY, now=NOW)
    b = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, HOTKEY, now=NOW)
    assert isinstance(a, HashcatJobGenerator) and isinstance(b, HashcatJobGenerator)
    assert a.job_uuid != b.job_uuid and a.job_uuid.version == 4
    assert a.first_password != b.first_password
    assert a.salts != b.salts


def test_fernet_tokens_are_standard() -> None:
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, HOTKEY, LOCAL, random.Random(9), now=NOW)
    assert isinstance(gen, HashcatJobGenerator) and gen.first_password is not None
    job = pickle.loads(unzip_volume(gen.volume())["payload.txt"])
    f = Fernet(fernet_key(gen.first_password))
    assert f.extract_timestamp(job["payloads"][0].encode()) == int(NOW.timestamp())
    assert len(fernet_key("x")) == 44


def test_llm_without_prompts_raises() -> None:
    with pytest.raises(NoPromptsAvailable):
        make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY)


def test_llm_job_shape_and_verification() -> None:
    sample = LlmPromptSample(
        series_url="http://s3/prompts/series-1",
        seed=1234567,
        expected_answers={"What is 2+2?": "4"},
        answers_put_url="http://s3/answers/solved/x.json?sig",
    )
    gen = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, rng=random.Random(1), llm_sample=sample)
    assert isinstance(gen, LlmPromptsJobGenerator)
    fu = gen.file_uuid
    assert gen.timeout_seconds() == 48
    assert gen.docker_image_name() == gen.base_docker_image_name() == LLM_IMAGE
    assert gen.docker_run_cmd() == [
        "--temperature=0.5",
        "--top-p=0.8",
        "--max-tokens=256",
        "--seed",
        "1234567",
        f"/volume/{fu}.txt",
    ]
    assert gen.volume_in_initial_req()
    assert gen.volume() == {
        "volume_type": "multi_volume",
        "volumes": [{"volume_type": "single_file", "url": sample.series_url, "relative_path": f"{fu}.txt"}],
    }
    upload = gen.output_upload()
    assert upload["uploads"][0]["relative_path"] == f"{fu}.json"
    assert gen.verify("", 1.0) == (False, "result does not contain all answers", 0.0)
    gen.set_answers({"What is 2+2?": "5"})
    assert gen.verify("", 1.0) == (False, "results does not match expected answers", 0.0)
    gen.set_answers({"What is 2+2?": "4", "other": "x"})
    assert gen.verify("", 1.0) == (True, "", 1.0)


def test_generators_pickle_compactly() -> None:
    """Generators are built in worker processes and shipped back: only the zipped payload travels."""
    gen = make_generator(CLASS_SPIN_UP_4MIN_GPU_24GB, 4, HOTKEY, rng=random.Random(8), now=NOW)
    assert isinstance(gen, HashcatJobGenerator)
    assert gen.payload() == unzip_volume(gen.volume())["payload.txt"]
    copy = pickle.loads(pickle.dumps(gen))
    assert _fingerprint(copy) == _fingerprint(gen)
    assert copy.verify(gen.expected_answer, 1.0).correct
    assert len(pickle.dumps(gen)) < 1.3 * len(gen.volume()["contents"])
