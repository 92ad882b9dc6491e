"""Plain chain values shared by every `Chain` implementation (and by the localnet wire format)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

U16_MAX = 65535
NOT_SERVING_IP = "0.0.0.0"


class ChainError(Exception):
    """The chain could not be read or written (unreachable, timed out, answered nonsense).

    `str()` is one operator-readable line; the original exception, if any, is the `__cause__`.
    A chain that *answers* and refuses a weights submission is not an error: `set_weights`
    returns `SetWeightsResult(success=False, ...)` for that.
    """


class Neuron(BaseModel):
    """One registered uid of a subnet, as the validator needs it."""

    model_config = ConfigDict(frozen=True)

    uid: int = Field(ge=0, le=U16_MAX)
    hotkey: str
    coldkey: str = ""
    stake: float = Field(0.0, ge=0)
    validator_permit: bool = False
    axon_ip: str = NOT_SERVING_IP
    axon_port: int = Field(0, ge=0, le=65535)
    last_update: int = Field(0, ge=0)

    @property
    def is_serving(self) -> bool:
        """A miner is tested only if it serves an axon (the reference's `axon.ip != "0.0.0.0"`)."""
        return self.axon_ip != NOT_SERVING_IP


class Metagraph(BaseModel):
    """The neurons of one subnet at one block, ordered by uid."""

    model_config = ConfigDict(frozen=True)

    netuid: int = Field(ge=0, le=U16_MAX)
    block: int = Field(ge=0)
    neurons: list[Neuron]

    @property
    def hotkeys(self) -> list[str]:
        return [n.hotkey for n in self.neurons]

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        for n in self.neurons:
            if n.hotkey == hotkey:
                return n
        return None

    def by_uid(self, uid: int) -> Neuron | None:
        for n in self.neurons:
            if n.uid == uid:
                return n
        return None

    @property
    def serving(self) -> list[Neuron]:
        return [n for n in self.neurons if n.is_serving]


class SetWeightsResult(BaseModel):
    """The outcome of one weights submission.

    `committed` is True when the chain took a (timelocked) commit that it reveals itself, False for
    a direct set. `code` tags refusals with the `bittensor.ErrorCode` values (`rate_limited`,
    `not_registered`, `not_authorized`, `invalid_argument`, ...); the simulator adds
    `bad_signature` and `replayed`.
    """

    success: bool
    message: str
    block: int | None = None
    committed: bool = False
    code: str | None = None


class CommitResult(BaseModel):
    """The outcome of one legacy `commit_weights` (a salted hash the validator reveals itself).

    `commit_hash` is the `0x`-hex hash the chain took, `block` the block it was stored at. A
    refusal is `success=False` with the chain's message and a `code` as in `SetWeightsResult`
    (`commit_reveal_disabled`, `commit_not_allowed`, ...).
    """

    success: bool
    message: str
    block: int | None = None
    commit_hash: str | None = None
    code: str | None = None


class RevealResult(BaseModel):
    """The outcome of one legacy `reveal_weights`.

    On success the revealed weights are set at `block`. A refusal is `success=False` with the
    chain's message and a `code` (`no_commit`, `hash_mismatch`, `reveal_too_early`,
    `reveal_too_late`, `rate_limited`, `invalid_argument`, ...).
    """

    success: bool
    message: str
    block: int | None = None
    code: str | None = None


DEFAULT_COMMIT_REVEAL_INTERVAL = 722
"""Subnet 12's legacy commit-reveal interval in blocks (two 361-block epochs), `docs/weights.md` §8."""


class Hyperparameters(BaseModel):
    """The subnet hyperparameters the validator may care about.

    `max_weight_limit` is the raw u16 (`MaxWeightsLimit`; 65535 = no cap). `commit_reveal_interval`
    is the legacy commit-reveal interval in blocks: a commit made in interval k
    (`[k*L, (k+1)*L)`) is revealed in interval k+1.
    """

    netuid: int
    tempo: int
    weights_rate_limit: int
    commit_reveal_enabled: bool
    reveal_period_epochs: int = 1
    min_allowed_weights: int = 0
    max_weight_limit: int = U16_MAX
    weights_version: int = 0
    commit_reveal_interval: int = DEFAULT_COMMIT_REVEAL_INTERVAL


@runtime_checkable
class HotkeySigner(Protocol):
    """An sr25519 keypair (e.g. `bittensor.sp_core.Keypair`) that signs as the validator hotkey."""

    @property
    def ss58_address(self) -> str: ...

    def sign(self, payload: bytes) -> bytes: ...


def hotkey_signer(keypair_or_wallet: Any) -> HotkeySigner:
    """The hotkey keypair of a keypair or of a wallet-shaped object (`.hotkey`)."""
    if isinstance(keypair_or_wallet, HotkeySigner):
        return keypair_or_wallet
    hotkey = getattr(keypair_or_wallet, "hotkey", None)
    if isinstance(hotkey, HotkeySigner):
        return hotkey
    raise TypeError(
        f"cannot sign weights with {type(keypair_or_wallet).__name__}: "
        "expected a keypair or a wallet with a .hotkey keypair"
    )


def quantize_weights(uids: Sequence[int], weights: Sequence[float]) -> tuple[list[int], list[int]]:
    """Scale weights so the largest is 65535, round, and drop entries that round to 0.

    This is what the chain stores (u16 per uid). All-zero input gives two empty lists.
    Raises `ValueError` on mismatched lengths, duplicate or out-of-range uids, or weights
    that are negative or not finite.
    """
    if len(uids) != len(weights):
        raise ValueError(f"uids and weights differ in length: {len(uids)} != {len(weights)}")
    if len(set(uids)) != len(uids):
        raise ValueError("duplicate uids in weights")
    if any(not 0 <= int(u) <= U16_MAX for u in uids):
        raise ValueError("uids must be in 0..65535")
    floats = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in floats):
        raise ValueError("weights must be finite and non-negative")
    top = max(floats, default=0.0)
    if top <= 0:
        return [], []
    out_uids: list[int] = []
    out_values: list[int] = []
    for uid, w in zip(uids, floats, strict=True):
        value = round(w / top * U16_MAX)
        if value > 0:
            out_uids.append(int(uid))
            out_values.append(value)
    return out_uids, out_values
