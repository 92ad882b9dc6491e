"""Start the cross-validator service: `python -m horde_cross_validator` (or `horde run cross-validator`)."""

from horde_common.service import run_service
from horde_cross_validator.app import SPEC

if __name__ == "__main__":
    run_service(SPEC)
