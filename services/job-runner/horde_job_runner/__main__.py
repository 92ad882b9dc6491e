"""Start the job-runner service: `python -m horde_job_runner` (or `horde run job-runner`)."""

from horde_common.service import run_service
from horde_job_runner.app import SPEC

if __name__ == "__main__":
    run_service(SPEC)
