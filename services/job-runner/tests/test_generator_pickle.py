"""A hashcat generator crosses from the worker process to the validator as a compact pickle.

Only what sending and judging need travels (`HashcatJobGenerator.__reduce__`): everything the
batch reads from a generator must be the same after the round trip, for every flavour and both
difficulties, and the passwords must stay behind.
"""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime

import pytest

from horde_job_runner.generators import HashcatJobGenerator, make_generator

NOW = datetime(2026, 12, 2, 0, 55, 1, tzinfo=UTC)
HOTKEY = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


def everything_read(gen: HashcatJobGenerator) -> tuple[object, ...]:
    return (
        gen.executor_class,
        gen.weights_version,
        gen.flavour,
        gen.miner_hotkey,
        gen.difficulty,
        gen.job_uuid,
        gen.algorithms,
        gen.params,
        gen.masks,
        gen.salts,
        gen.first_password,
        gen.expected_answer,
        gen.base_docker_image_name(),
        gen.docker_image_name(),
        gen.docker_run_options_preset(),
        gen.docker_run_cmd(),
        gen.raw_script(),
        gen.volume(),
        gen.volume_in_initial_req(),
        gen.initial_request_volume(),
        gen.initial_request_volume_json(),
        gen.job_request_volume(),
        gen.output_upload(),
        gen.timeout_seconds(),
        gen.payload(),
        gen.job_description(),
        str(gen),
        gen.score(3.0),
        gen.verify(gen.expected_answer, 2.0),
        gen.verify("wrong", 2.0),
    )


@pytest.mark.parametrize("weights_version", range(5))
@pytest.mark.parametrize("difficulty", ["production", "localnet"])
def test_a_round_trip_keeps_everything_the_batch_reads(weights_version: int, difficulty: str) -> None:
    for executor_class in ("always_on.gpu-24gb", "spin_up-4min.gpu-24gb"):
        gen = make_generator(executor_class, weights_version, HOTKEY, difficulty, random.Random(3), now=NOW)
        assert isinstance(gen, HashcatJobGenerator)
        copy = pickle.loads(pickle.dumps(gen))
        assert isinstance(copy, HashcatJobGenerator)
        assert everything_read(copy) == everything_read(gen)
        assert copy.verify(gen.expected_answer, 1.0).correct


def test_the_passwords_stay_in_the_worker() -> None:
    gen = make_generator("always_on.gpu-24gb", 4, HOTKEY, "production", random.Random(4), now=NOW)
    assert isinstance(gen, HashcatJobGenerator)
    blob = pickle.dumps(gen)
    assert not hasattr(pickle.loads(blob), "passwords")
    # The volume and about 300 bytes of plain values: the 300 passwords (~3 KB pickled) are not in it.
    assert len(blob) < len(gen.volume()["contents"]) + 1_000
