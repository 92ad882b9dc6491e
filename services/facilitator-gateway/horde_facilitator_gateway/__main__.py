"""Start the facilitator-gateway service: `python -m horde_facilitator_gateway` (or `horde run facilitator-gateway`)."""

from horde_common.service import run_service
from horde_facilitator_gateway.app import SPEC

if __name__ == "__main__":
    run_service(SPEC)
