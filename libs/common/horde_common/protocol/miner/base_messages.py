"""Messages whose shape is the same in both directions, and the job-message base
(docs/miner-protocol.md §2.2.6–7, §2.3.6–7).

Every message is a JSON object discriminated by `message_type`; the strings are wire facts.
"""

from __future__ import annotations

from typing import Literal

from .values import MachineSpecs, WireModel


class JobMessage(WireModel):
    """A message about one job. `job_uuid` is a plain string: peers may echo anything back."""

    job_uuid: str


class GenericError(WireModel):
    """A free-text error; never linked to a job. Both peers only log it (the validator classifies it)."""

    message_type: Literal["GenericError"] = "GenericError"
    details: str | None = None


class V0MachineSpecsRequest(JobMessage):
    """Miner → validator: the executor's specs, sent just before the job's final response.

    The validator-side message of the same name and shape exists in the original but is never sent.
    """

    message_type: Literal["V0MachineSpecsRequest"] = "V0MachineSpecsRequest"
    specs: MachineSpecs
