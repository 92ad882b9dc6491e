"""Start the weights service: `python -m horde_weights` (or `horde run weights`)."""

from horde_common.service import run_service
from horde_weights.app import SPEC

if __name__ == "__main__":
    run_service(SPEC)
