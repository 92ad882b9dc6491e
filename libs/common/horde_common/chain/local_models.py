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
- `POST /subnets/{netuid}/commits`   (`CommitWeightsRequest`) -> `CommitResult`, or an `ErrorBody`
  with a 4xx status when refused (legacy salted commit-reveal, `docs/weights.md` §8)
- `POST /subnets/{netuid}/reveals`   (`RevealWeightsRequest`) -> `RevealResult`, or a 4xx `ErrorBody`
- `GET  /subnets/{netuid}/commits?hotkey=` -> `PendingCommits` (commits not revealed yet)
- `PUT  /admin/subnets/{netuid}/neurons` (`NeuronsUpdate`) -> `Metagraph` (scenario control)

Every error answer is an `ErrorBody`.
"""

from __future__ import annotations

import json
from typing import Literal

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


def _canonical_payload(model: BaseModel) -> bytes:
    """Canonical JSON (sorted keys, no spaces) of every field but the signature."""
    body = model.model_dump(exclude={"signature"})
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class CommitWeightsRequest(BaseModel):
    """A legacy weights commit, signed (sr25519, `0x`-hex) by `hotkey` over `signing_payload()`.

    `call` names the extrinsic so a signature over one kind of request never verifies as another.
    """

    call: Literal["commit_weights"] = "commit_weights"
    netuid: int = Field(ge=0, le=U16_MAX)
    hotkey: str
    commit_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    nonce: str = Field(min_length=8, max_length=64)
    signature: str = ""

    def signing_payload(self) -> bytes:
        return _canonical_payload(self)


class RevealWeightsRequest(BaseModel):
    """A legacy weights reveal (the committed u16 values and salt), signed like the commit."""

    call: Literal["reveal_weights"] = "reveal_weights"
    netuid: int = Field(ge=0, le=U16_MAX)
    hotkey: str
    uids: list[int]
    values: list[int]
    salt: list[int]
    version_key: int = Field(0, ge=0)
    nonce: str = Field(min_length=8, max_length=64)
    signature: str = ""

    def signing_payload(self) -> bytes:
        return _canonical_payload(self)


class PendingCommit(BaseModel):
    """A commit the simulated chain holds and that has not been revealed yet."""

    netuid: int
    hotkey: str
    commit_hash: str
    block: int


class PendingCommits(BaseModel):
    commits: list[PendingCommit]


class WeightsRecord(BaseModel):
    """Weights as the simulated chain took them (u16 values).

    `committed` with `reveal_block`: the weights were committed at `block` and took effect at
    `reveal_block` (a timelocked commit the chain reveals, or a legacy commit the validator
    revealed). Otherwise they were set directly at `block`.
    """

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
