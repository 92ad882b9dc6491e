"""Wire format between `LocalChainClient` and the localnet chain simulator (`horde_localnet.chain`).

Both sides import these models, so a change here changes both at once. Endpoints (all JSON):

- `GET  /healthz`
- `GET  /block`                      -> `BlockInfo` of the head
- `GET  /block/wait?number=N&timeout=S` -> `BlockInfo` once the head reaches N (408 on timeout)
- `GET  /blocks/{number}`            -> `BlockInfo` (404 if in the future)
- `GET  /subnets/{netuid}/metagraph?block=N` -> `Metagraph`
- `GET  /subnets/{netuid}/hyperparameters`   -> `Hyperparameters`
- `POST /subnets/{netuid}/weights`   (`SetWeightsRequest`) -> `SetWeightsResult`, or an
  `ErrorBody` with a 4xx status when refused
- `GET  /subnets/{netuid}/weights?hotkey=&limit=` -> `WeightsHistory`, newest last
- `PUT  /admin/subnets/{netuid}/neurons` (`NeuronsUpdate`) -> `Metagraph` (scenario control)

Every error answer is an `ErrorBody`.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from horde_common.chain.models import U16_MAX, Neuron


class ErrorBody(BaseModel):
    code: str
    message: str


class BlockInfo(BaseModel):
    number: int = Field(ge=0)
    hash: str


class SetWeightsRequest(BaseModel):
    """A weights submission, signed (sr25519, `0x`-hex) by `hotkey` over `signing_payload()`."""

    netuid: int = Field(ge=0, le=U16_MAX)
    hotkey: str
    uids: list[int]
    weights: list[int]
    version_key: int = Field(0, ge=0)
    nonce: str = Field(min_length=8, max_length=64)
    signature: str = ""

    def signing_payload(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces) of every field but the signature."""
        body = self.model_dump(exclude={"signature"})
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class WeightsRecord(BaseModel):
    """Weights as the simulated chain took them (u16 values)."""

    netuid: int
    hotkey: str
    uid: int
    block: int
    uids: list[int]
    weights: list[int]
    version_key: int
    committed: bool
    reveal_block: int | None = None


class WeightsHistory(BaseModel):
    records: list[WeightsRecord]


class NeuronsUpdate(BaseModel):
    neurons: list[Neuron]
