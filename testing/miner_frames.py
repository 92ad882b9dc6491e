"""Example validator <-> miner frames (docs/miner-protocol.md §2) and builders of valid frame dicts, shared
by the wire-format tests of libs/common/tests/test_protocol_miner_*.py."""

from __future__ import annotations

from typing import Any

# Example frames of each message of docs/miner-protocol.md §2, as the original library writes them.
VALIDATOR_EXAMPLES = [
    r'{"message_type":"V0AuthenticateRequest","payload":{"validator_hotkey":"5Gvali...","miner_hotkey":"5Fminer...","timestamp":1732795200},"signature":"0x4a1f...c80e"}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0InitialJobRequest","executor_class":"spin_up-4min.gpu-24gb","base_docker_image_name":"backenddevelopersltd/compute-horde-job:v1-latest","timeout_seconds":53,"volume":{"volume_type":"inline","contents":"UEsDBBQAAAAAA...","relative_path":null},"volume_type":null,"job_started_receipt_payload":{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","miner_hotkey":"5Fminer...","validator_hotkey":"5Gvali...","timestamp":"2024-11-28T10:00:00.120000Z","receipt_type":"JobStartedReceipt","executor_class":"spin_up-4min.gpu-24gb","max_timeout":53,"is_organic":false,"ttl":240},"job_started_receipt_signature":"0x9c2e...11"}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0JobRequest","executor_class":"spin_up-4min.gpu-24gb","docker_image_name":"backenddevelopersltd/compute-horde-job:v1-latest","raw_script":"import hashlib\nimport pickle\n...","docker_run_options_preset":"nvidia_all","docker_run_cmd":["/script.py","5Fminer...-aZ3k...48chars"],"volume":null,"output_upload":null}',
    r'{"job_uuid":"...","message_type":"V0JobRequest","executor_class":"always_on.llm.a6000","docker_image_name":"docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest","raw_script":null,"docker_run_options_preset":"nvidia_all","docker_run_cmd":["--temperature=0.5","--top-p=0.8","--max-tokens=256","--seed","1234567","/volume/7d0c...e1.txt"],"volume":null,"output_upload":{"output_upload_type":"multi_upload","uploads":[{"output_upload_type":"single_file_put","url":"https://s3.amazonaws.com/<answers-bucket>/solved/7d0c...e1.json?X-Amz-...","relative_path":"7d0c...e1.json","signed_headers":null}],"system_output":null}}',
    r'{"message_type":"V0JobAcceptedReceiptRequest","payload":{"job_uuid":"3fa8...","miner_hotkey":"5Fminer...","validator_hotkey":"5Gvali...","timestamp":"2024-11-28T10:00:01.503211Z","receipt_type":"JobAcceptedReceipt","time_accepted":"2024-11-28T10:00:01.502977Z","ttl":360},"signature":"0x..."}',
    r'{"message_type":"V0JobFinishedReceiptRequest","payload":{"job_uuid":"3fa8...","miner_hotkey":"5Fminer...","validator_hotkey":"5Gvali...","timestamp":"2024-11-28T10:05:10.000100Z","receipt_type":"JobFinishedReceipt","time_started":"2024-11-28T10:04:01.000200Z","time_took_us":31234567,"score_str":"1.3"},"signature":"0x..."}',
    r'{"message_type":"GenericError","details":"Malformed message from miner 5Fminer...(1.2.3.4:8000): Expecting value: line 1 column 1 (char 0)"}',
]
MINER_EXAMPLES = [
    r'{"message_type":"V0ExecutorManifestRequest","manifest":{"executor_classes":[{"executor_class":"spin_up-4min.gpu-24gb","count":3},{"executor_class":"always_on.llm.a6000","count":1}]}}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0AcceptJobRequest"}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0DeclineJobRequest"}',
    r'{"job_uuid":"3fa8...","message_type":"V0ExecutorReadyRequest"}',
    r'{"job_uuid":"3fa8...","message_type":"V0ExecutorFailedRequest"}',
    r'{"job_uuid":"3fa8...","message_type":"V0JobFinishedRequest","docker_process_stdout":"5IAeOQb3qzcApWUHtBzfLzYb-d0akK_K6fqTRsfFfr4=\n","docker_process_stderr":""}',
    r'{"job_uuid":"3fa8...","message_type":"V0JobFailedRequest","docker_process_exit_status":1,"docker_process_stdout":"","docker_process_stderr":"hashcat: ..."}',
    r'{"job_uuid":"3fa8...","message_type":"V0MachineSpecsRequest","specs":{"specs":{"gpu":{"count":1,"details":[{"name":"NVIDIA GeForce RTX 4090","driver":"550.54","capacity":"24564","cuda":"8.9","power_limit":"450.00","graphics_speed":"2520","memory_speed":"10501","uuid":"GPU-...","serial":"[N/A]"}]},"cpu":{"count":32,"model":"...","clocks":[3000.0]},"ram":{"total":131072000,"free":1,"available":1,"used":1},"hard_disk":{"total":1,"used":1,"free":1},"os":"Ubuntu 22.04.4 LTS"}}}',
    r'{"message_type":"GenericError","details":"Unknown validator: 5Gvali..."}',
    r'{"message_type":"UnauthorizedError","code":"TOKEN_TOO_OLD","details":"..."}',
]

JOB_UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
STARTED_PAYLOAD: dict[str, Any] = {
    "job_uuid": JOB_UUID,
    "miner_hotkey": "5Fminer",
    "validator_hotkey": "5Gvali",
    "timestamp": "2024-11-28T10:00:00.120000Z",
    "receipt_type": "JobStartedReceipt",
    "executor_class": "spin_up-4min.gpu-24gb",
    "max_timeout": 53,
    "is_organic": False,
    "ttl": 240,
}


def initial_frame(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_type": "V0InitialJobRequest",
        "job_uuid": JOB_UUID,
        "job_started_receipt_payload": STARTED_PAYLOAD,
        "job_started_receipt_signature": "0x00",
    }
    return base | fields


def job_request_frame(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_type": "V0JobRequest",
        "job_uuid": JOB_UUID,
        "docker_image_name": "backenddevelopersltd/compute-horde-job:v1-latest",
        "docker_run_options_preset": "nvidia_all",
        "docker_run_cmd": [],
    }
    return base | fields
