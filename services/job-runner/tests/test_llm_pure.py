"""LLM synthetic jobs, the parts without I/O (docs/synthetic-batch.md, "LLM jobs"; docs/crossval.md §7.5):
the job's shape, its verification through `check_answers`, whose fault a failed answers download
is, which jobs get their answers downloaded, and which samples a shard consumes.
"""

from __future__ import annotations

import random
import uuid

import pytest
from pydantic import TypeAdapter

from horde_common.crossval import ANSWERS_MISMATCH, ANSWERS_MISSING, AnswersFormatError, solver_cmd
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_common.protocol.miner.values import MultiUpload, MultiVolume, OutputUpload, Volume
from horde_common.s3 import S3DownloadError, S3ObjectTooLarge, S3Timeout
from horde_job_runner.generators import (
    CLASS_ALWAYS_ON_LLM_A6000,
    LLM_IMAGE,
    LlmPromptSample,
    LlmPromptsJobGenerator,
    make_generator,
)
from horde_job_runner.synthetic.llm_answers import Fault, answers_to_fetch, download_fault
from horde_job_runner.synthetic.llm_samples import llm_sample_ids
from horde_job_runner.synthetic.model import JobState

HOTKEY = "5FakeMinerHotkey"
FILE = uuid.UUID("00000000-0000-4000-8000-00000000f11e")
PUT = "http://s3.test/answers/solved/00000000-0000-4000-8000-00000000f11e.json?X-Amz-Signature=abc"
GET = "http://s3.test/answers/solved/00000000-0000-4000-8000-00000000f11e.json"


def sample(expected: dict[str, str] | None = None, *, sample_id: int | None = 7) -> LlmPromptSample:
    return LlmPromptSample(
        series_url="http://s3.test/prompts/series-1",
        seed=4242,
        expected_answers=expected if expected is not None else {"p1": "a1", "p2": "a2"},
        answers_put_url=PUT,
        answers_url=GET,
        file_uuid=FILE,
        sample_id=sample_id,
    )


def llm_job(s: LlmPromptSample | None = None, **state: object) -> JobState:
    gen = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, llm_sample=s or sample())
    job = JobState(
        job_uuid=str(gen.job_uuid),
        miner_hotkey=HOTKEY,
        executor_class=LLM_EXECUTOR_CLASS,
        generator=gen,
        spin_up=1.0,
        timeout=48.0,
    )
    for name, value in state.items():
        setattr(job, name, value)
    return job


def test_the_job_runs_the_solver_on_the_whole_series_and_uploads_to_the_presigned_put() -> None:
    gen = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, llm_sample=sample())
    assert isinstance(gen, LlmPromptsJobGenerator)
    assert gen.file_uuid == FILE  # the uuid the PUT was signed for, not a fresh one
    assert gen.docker_run_cmd() == solver_cmd(4242, FILE)
    assert gen.docker_run_cmd()[-3:] == ["--seed", "4242", f"/volume/{FILE}.txt"]
    assert gen.timeout_seconds() == 48 and gen.docker_image_name() == LLM_IMAGE
    assert gen.job_description() == "LLM prompts synthetic job"
    # The volume goes with the initial request, the upload with the job request.
    assert gen.initial_request_volume() == {
        "volume_type": "multi_volume",
        "volumes": [
            {
                "volume_type": "single_file",
                "url": "http://s3.test/prompts/series-1",
                "relative_path": f"{FILE}.txt",
            }
        ],
    }
    assert gen.job_request_volume() is None
    upload = gen.output_upload()
    assert upload["output_upload_type"] == "multi_upload"
    assert upload["uploads"] == [
        {
            "output_upload_type": "single_file_put",
            "url": PUT,
            "relative_path": f"{FILE}.json",
            "signed_headers": None,
        }
    ]
    # The wire models take both as they are.
    volume = TypeAdapter(Volume).validate_python(gen.initial_request_volume())
    output = TypeAdapter(OutputUpload).validate_python(upload)
    assert isinstance(volume, MultiVolume) and isinstance(output, MultiUpload)
    assert output.uploads[0].url == PUT


def test_production_file_uuids_are_fresh_and_unguessable_without_a_given_one() -> None:
    bare = LlmPromptSample(series_url="u", seed=1, expected_answers={"p": "a"}, answers_put_url="x")
    a = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, llm_sample=bare)
    b = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, llm_sample=bare)
    assert isinstance(a, LlmPromptsJobGenerator) and isinstance(b, LlmPromptsJobGenerator)
    assert a.file_uuid != b.file_uuid and a.file_uuid != a.job_uuid and a.file_uuid.version == 4
    seeded = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, rng=random.Random(3), llm_sample=bare)
    again = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, rng=random.Random(3), llm_sample=bare)
    assert isinstance(seeded, LlmPromptsJobGenerator) and isinstance(again, LlmPromptsJobGenerator)
    assert seeded.file_uuid == again.file_uuid  # only a test's rng makes them reproducible


@pytest.mark.parametrize(
    ("answers", "verdict"),
    [
        (None, (False, ANSWERS_MISSING, 0.0)),  # download failed: every prompt is missing
        ({}, (False, ANSWERS_MISSING, 0.0)),
        ({"p1": "a1"}, (False, ANSWERS_MISSING, 0.0)),
        ({"p1": "a1", "p2": "a2 "}, (False, ANSWERS_MISMATCH, 0.0)),  # exact equality, no strip
        ({"p1": "wrong", "p3": "x"}, (False, ANSWERS_MISMATCH, 0.0)),  # first prompt decides
        ({"p1": "a1", "p2": "a2", "other": "whatever"}, (True, "", 1.0)),
    ],
)
def test_verify_checks_the_sampled_prompts_exactly(
    answers: dict[str, str] | None, verdict: tuple[bool, str, float]
) -> None:
    gen = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, llm_sample=sample())
    assert isinstance(gen, LlmPromptsJobGenerator)
    gen.set_answers(answers)
    assert tuple(gen.verify("stdout is never looked at", 1.0)) == verdict


def test_only_the_sampled_answers_are_kept() -> None:
    gen = make_generator(CLASS_ALWAYS_ON_LLM_A6000, 4, HOTKEY, llm_sample=sample())
    assert isinstance(gen, LlmPromptsJobGenerator)
    gen.set_answers({"p1": "a1", "p2": "a2", **{f"junk{i}": "x" * 100 for i in range(1000)}})
    assert gen.answers == {"p1": "a1", "p2": "a2"}


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (S3DownloadError("GET u: HTTP 404 NoSuchKey", status=404), Fault.MINER),
        (S3DownloadError("GET u: HTTP 403 AccessDenied", status=403), Fault.MINER),
        (S3ObjectTooLarge("GET u: more than 4 bytes"), Fault.MINER),
        (AnswersFormatError("answers must be a JSON object, got list"), Fault.MINER),
        (S3DownloadError("GET u: ConnectError: refused"), Fault.VALIDATOR),  # S3 unreachable
        (S3Timeout("GET u: not done within 5 s"), Fault.VALIDATOR),
        (S3DownloadError("GET u: HTTP 503 SlowDown", status=503), Fault.VALIDATOR),
        (S3DownloadError("GET u: HTTP 400 InvalidRequest", status=400), Fault.VALIDATOR),
    ],
)
def test_whose_fault_a_failed_download_is(error: Exception, fault: Fault) -> None:
    assert download_fault(error) is fault


def test_answers_are_fetched_only_for_jobs_that_finished_after_their_request() -> None:
    finished = llm_job(final_kind="finished")
    failed = llm_job(final_kind="failed")
    silent = llm_job()
    early = llm_job(final_kind="finished", final_before_job_request=True)
    excluded = llm_job(final_kind="finished", excluded=True)
    no_url = llm_job(
        LlmPromptSample(series_url="u", seed=1, expected_answers={"p": "a"}, answers_put_url="x"),
        final_kind="finished",
    )
    jobs = [finished, failed, silent, early, excluded, no_url]
    assert answers_to_fetch(jobs) == [finished]


def test_every_generated_llm_job_consumes_its_sample_whatever_its_outcome() -> None:
    passed = llm_job(sample(sample_id=1), success=True)
    failed = llm_job(sample(sample_id=2), success=False, comment=ANSWERS_MISMATCH)
    excluded = llm_job(sample(sample_id=3), excluded=True)
    untracked = llm_job(sample(sample_id=None))
    assert llm_sample_ids([passed, failed, excluded, untracked]) == {
        1: uuid.UUID(passed.job_uuid),
        2: uuid.UUID(failed.job_uuid),
        3: uuid.UUID(excluded.job_uuid),
    }
