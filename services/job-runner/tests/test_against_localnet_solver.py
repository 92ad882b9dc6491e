"""The localnet simulator's executor answers the job runner's real hashcat jobs, every weights version.

Moved from the simulator's own tests, which build their jobs from the wire format alone: this is
the check that the generators and the simulator agree (docs/miner-protocol.md §3.13).
"""

from __future__ import annotations

import random

import pytest

from horde_job_runner.generators import HashcatJobGenerator, make_generator
from horde_localnet.miners.solver import execute, run_script_subprocess, unpack_volume

GPU = "spin_up-4min.gpu-24gb"


def job_spec(gen: HashcatJobGenerator, **extra: object) -> dict[str, object]:
    """The plain values the simulated executor gets for a job (what its `execute` reads)."""
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


@pytest.mark.parametrize("weights_version", [1, 4])
def test_the_validators_script_runs_with_the_stand_in_hashcat(weights_version: int) -> None:
    gen = localnet_job(weights_version)
    result = run_script_subprocess(gen.raw_script() or "", gen.docker_run_cmd(), unpack_volume(gen.volume()))
    assert result.exit_status == 0, result
    assert gen.verify(result.stdout, 1.0).correct
