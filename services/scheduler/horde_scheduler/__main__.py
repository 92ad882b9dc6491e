"""Start the scheduler service: `python -m horde_scheduler` (or `horde run scheduler`)."""

from horde_common.service import run_service
from horde_scheduler.app import SPEC

if __name__ == "__main__":
    run_service(SPEC)
