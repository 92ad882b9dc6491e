"""The pure parts of organic jobs: miner rotation, request -> miner job, outcome -> writes
(docs/organic.md, "Running organic jobs")."""

from __future__ import annotations

import pytest

from horde_common.protocol.miner.values import DockerRunOptionsPreset
from horde_job_runner.organic.details import JobDetailsError, job_spec
from horde_job_runner.organic.outcomes import Outcome, OutcomeKind, not_run_report, report
from horde_job_runner.organic.selection import next_miner

AO = "always_on.gpu-24gb"


def test_round_robin_wraps_around_in_hotkey_order() -> None:
    miners = [f"miner_{i}" for i in (3, 0, 4, 1, 2)]
    last = None
    picks = []
    for _ in range(10):
        last = next_miner(miners, last)
        picks.append(last)
    assert picks == [f"miner_{i}" for i in range(5)] * 2


def test_round_robin_edge_cases() -> None:
    assert next_miner([], "miner_1") is None
    assert next_miner(["a", "c"], "b") == "c"  # the last pick left the set: the order still holds
    assert next_miner(["a", "b", "c"], "a", blacklist={"b"}) == "c"
    assert next_miner(["a"], None, blacklist={"a"}) is None


def test_v0_urls_become_zip_volume_and_upload() -> None:
    spec = job_spec(
        "u",
        AO,
        {
            "message_type": "V0JobRequest",
            "executor_class": AO,
            "docker_image": "",
            "raw_script": "print(1)",
            "args": ["-c", "x"],
            "env": {"K": "V"},
            "use_gpu": True,
            "input_url": "https://x/in.zip",
            "output_url": "https://x/out.zip",
        },
    )
    assert spec.docker_image is None and spec.raw_script == "print(1)"
    assert spec.preset is DockerRunOptionsPreset.NVIDIA_ALL and spec.args == ["-c", "x"]
    assert spec.volume.model_dump(mode="json") == {
        "volume_type": "zip_url",
        "contents": "https://x/in.zip",
        "relative_path": None,
    }
    assert spec.output_upload.model_dump(mode="json") == {
        "output_upload_type": "zip_and_http_put",
        "url": "https://x/out.zip",
    }
    assert spec.volume_type == "zip_url" and not spec.chooses_miner and spec.env == {"K": "V"}


def test_v2_volume_passes_through_and_chooses_the_miner() -> None:
    volume = {"volume_type": "zip_url", "contents": "https://x/in.zip", "relative_path": None}
    spec = job_spec(
        "u",
        AO,
        {
            "message_type": "V2JobRequest",
            "docker_image": "img",
            "args": [],
            "use_gpu": False,
            "volume": volume,
        },
    )
    assert spec.chooses_miner and spec.preset is DockerRunOptionsPreset.NONE
    assert spec.volume.model_dump(mode="json") == volume and spec.output_upload is None


def test_a_broken_request_is_refused() -> None:
    with pytest.raises(JobDetailsError):
        job_spec("u", AO, None)
    with pytest.raises(JobDetailsError):
        job_spec("u", AO, {"message_type": "V9JobRequest"})


@pytest.mark.parametrize(
    ("kind", "status", "subtype", "comment_start"),
    [
        (OutcomeKind.CONNECTION_FAILED, "failed", "MINER_CONNECTION_ERROR", "Miner connection error: boom"),
        (
            OutcomeKind.NOT_ACCEPTED_IN_TIME,
            "failed",
            "JOB_NOT_STARTED",
            "Miner m(1.2.3.4:8000) timed out while preparing executor for job u after 300 seconds",
        ),
        (OutcomeKind.DECLINED, "rejected", "JOB_REJECTED", "Miner m(1.2.3.4:8000) won't do job: boom"),
        (
            OutcomeKind.NOT_READY_IN_TIME,
            "failed",
            "JOB_NOT_STARTED",
            "Miner m(1.2.3.4:8000) timed out while preparing",
        ),
        (
            OutcomeKind.EXECUTOR_FAILED,
            "failed",
            "JOB_REJECTED",
            "Miner m(1.2.3.4:8000) failed to start executor: boom",
        ),
        (
            OutcomeKind.FINAL_TIMEOUT,
            "failed",
            "JOB_EXECUTION_TIMEOUT",
            "Miner m(1.2.3.4:8000) timed out after 120 seconds",
        ),
        (OutcomeKind.JOB_FAILED, "failed", "FAILURE", "Miner m(1.2.3.4:8000) failed: boom"),
    ],
)
def test_outcome_mapping(kind: OutcomeKind, status: str, subtype: str, comment_start: str) -> None:
    result = report(
        Outcome(kind, detail="boom"), name="m(1.2.3.4:8000)", job_uuid="u", total_s=120, wait_s=300
    )
    assert (result.status, result.event_subtype, result.row_status) == (status, subtype, "FAILED")
    assert result.comment.startswith(comment_start)
    assert result.event_type == "MINER_ORGANIC_JOB_FAILURE"
    expected_type = "V0JobFailedRequest" if kind is OutcomeKind.JOB_FAILED else None
    assert result.miner_response("u")["message_type"] == expected_type


def test_finished_and_not_run() -> None:
    done = report(
        Outcome(OutcomeKind.FINISHED, stdout="a\n"), name="m(h:1)", job_uuid="u", total_s=1, wait_s=1
    )
    assert (done.status, done.row_status, done.comment) == (
        "completed",
        "COMPLETED",
        "Miner m(h:1) finished: stdout='a\\n' stderr=''",
    )
    assert done.miner_response("u")["docker_process_stdout"] == "a\n"
    assert not_run_report("why").status == "failed"
