"""The weights writes of `BittensorChain`: which SDK path each takes, and how its outcome maps
onto the port's results (`docs/weights.md` §7.3).

- `set_weights` is bittensor 11's `SetWeights` intent: the SDK reads the subnet's
  hyperparameters and sends either `set_mechanism_weights` (commit-reveal off) or a drand
  timelocked `commit_timelocked_mechanism_weights` that the chain reveals itself.
- `commit_weights` / `reveal_weights` are the legacy salted commit-reveal. The SDK's
  `CommitWeights` is the timelocked one and its `RevealWeights` re-quantises the values (dropping
  zeros, which changes the hash), so both are sent as the raw generated calls
  `SubtensorModule.commit_weights` / `reveal_weights` with our exact integers.

Nothing here imports bittensor at module level (see `bittensor_chain`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from horde_common.chain.commit_hash import U16_MAX, U64_MAX, commit_hash_hex
from horde_common.chain.models import (
    CommitResult,
    HotkeySigner,
    RevealResult,
    SetWeightsResult,
    hotkey_signer,
)

if TYPE_CHECKING:
    import bittensor as bt

MAX_MESSAGE_CHARS = 500
"""Chain messages go into logs and system events; the SDK's longest (a whole docs paragraph) fits."""

WAIT_FOR_INCLUSION = True
"""Every write waits until its extrinsic is in a block: only then is a dispatch error (rate limit,
hash mismatch, ...) known, and the block is what the caller records."""

WAIT_FOR_FINALIZATION = False
"""Not waited for: finality lags inclusion by a few blocks and never changes a weights outcome
in practice; the reference waited for inclusion only when setting and committing."""

# Chain error names (the pallet's) -> the port's refusal codes for the legacy commit-reveal, the
# same codes the localnet simulator uses. Other errors keep the SDK's `ErrorCode` value
# (`rate_limited`, `not_registered`, `invalid_argument`, ...).
CHAIN_ERROR_CODES: dict[str, str] = {
    "CommitRevealDisabled": "commit_reveal_disabled",
    "TooManyUnrevealedCommits": "commit_not_allowed",
    "NoWeightsCommitFound": "no_commit",
    "InvalidRevealCommitHashNotMatch": "hash_mismatch",
    "RevealTooEarly": "reveal_too_early",
    "ExpiredWeightCommit": "reveal_too_late",
}


@dataclass(frozen=True)
class Outcome:
    """One write's outcome, before it becomes the port's result type."""

    success: bool
    message: str
    code: str | None = None
    block: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """The SDK or the chain refused a submission (as opposed to a transport failure)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class RevealArgs:
    """A reveal's parameters, checked to fit the extrinsic's types before anything is sent."""

    netuid: int
    uids: list[int]
    values: list[int]
    salt: list[int]
    version_key: int


def one_line(exc: BaseException) -> str:
    """An exception as one bounded log line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:MAX_MESSAGE_CHARS]


def is_transport_failure(exc: BaseException) -> bool:
    """Whether `exc` means the chain could not be reached (raise) rather than that it said no.

    The SDK raises `RpcConnectionError` / `ConnectionNotReady` for a dead endpoint. A write that
    breaks between signing and inclusion for any other reason than a node rejection (a dropped
    websocket, say) comes out of the SDK as a `bittensor.ChainError` whose cause is that
    non-RPC exception, while a node rejection's cause is the RPC error itself.
    """
    import bittensor as bt_sdk
    from bittensor._transport.errors import SubstrateRequestException  # no public alias

    if isinstance(exc, (bt_sdk.RpcConnectionError, bt_sdk.ConnectionNotReady, OSError)):
        return True
    if type(exc).__module__.startswith("websockets"):  # a closed socket the SDK let through
        return True
    if isinstance(exc, bt_sdk.ChainError):
        cause = exc.__cause__
        return cause is not None and not isinstance(cause, (SubstrateRequestException, bt_sdk.BittensorError))
    return False


def hotkey_of(keypair: Any) -> HotkeySigner:
    """The hotkey keypair that signs: `keypair` itself, or the `.hotkey` of a wallet (never its
    coldkey: weights are hotkey-signed)."""
    return hotkey_signer(keypair)


def canonical_hash(commit_hash: bytes | str) -> str:
    """The commit hash as lowercase `0x`-hex; `ValueError` unless it is exactly 32 bytes."""
    return commit_hash_hex(commit_hash)


def _u16s(name: str, items: Sequence[int]) -> list[int]:
    values = [operator.index(v) for v in items]  # TypeError for floats: no silent truncation
    if any(not 0 <= v <= U16_MAX for v in values):
        raise ValueError(f"{name} must all be u16 (0..65535)")
    return values


def reveal_args(
    netuid: int, uids: Sequence[int], values: Sequence[int], salt: Sequence[int], version_key: int
) -> RevealArgs:
    """Check a reveal's parameters (caller errors raise `ValueError`, before any I/O)."""
    if len(uids) != len(values):
        raise ValueError(f"uids and values differ in length: {len(uids)} != {len(values)}")
    if not 0 <= int(version_key) <= U64_MAX:
        raise ValueError(f"version_key {version_key} is not a u64")
    return RevealArgs(
        netuid=int(netuid),
        uids=_u16s("uids", uids),
        values=_u16s("values", values),
        salt=_u16s("salt", list(salt)),
        version_key=int(version_key),
    )


def commit_reveal_interval(tempo: int, reveal_period_epochs: int) -> int:
    """The legacy interval in blocks as today's chain defines it: a commit made in one epoch
    (`tempo + 1` blocks) is revealable `RevealPeriodEpochs` epochs later (`docs/weights.md` §7.2)."""
    return max(1, reveal_period_epochs) * (tempo + 1)


# --- sending (the client is connected; the caller applies the timeout) ---


async def send_set_weights(
    client: bt.Client,
    netuid: int,
    uids: list[int],
    weights: list[float],
    version_key: int,
    hotkey: HotkeySigner,
) -> bt.ExtrinsicResult:
    """`SetWeights` through the SDK's executor (preflight, u16 quantisation, set or commit)."""
    import bittensor as bt_sdk

    intent = bt_sdk.SetWeights(
        netuid=int(netuid),
        uids=[int(u) for u in uids],
        weights=[float(w) for w in weights],
        version_key=int(version_key),
    )
    return await client.execute(
        intent,
        hotkey,
        wait_for_inclusion=WAIT_FOR_INCLUSION,
        wait_for_finalization=WAIT_FOR_FINALIZATION,
    )


async def send_commit(
    client: bt.Client, netuid: int, hash_hex: str, hotkey: HotkeySigner
) -> bt.ExtrinsicResult:
    """Generated call `SubtensorModule.commit_weights(netuid, commit_hash)`, hotkey-signed."""
    import bittensor as bt_sdk

    call = bt_sdk.calls.SubtensorModule.commit_weights(netuid=int(netuid), commit_hash=hash_hex)
    return await client.submit_call(
        call,
        hotkey,
        signer="hotkey",
        wait_for_inclusion=WAIT_FOR_INCLUSION,
        wait_for_finalization=WAIT_FOR_FINALIZATION,
    )


async def send_reveal(client: bt.Client, args: RevealArgs, hotkey: HotkeySigner) -> bt.ExtrinsicResult:
    """Generated call `SubtensorModule.reveal_weights(netuid, uids, values, salt, version_key)`."""
    import bittensor as bt_sdk

    call = bt_sdk.calls.SubtensorModule.reveal_weights(
        netuid=args.netuid,
        uids=args.uids,
        values=args.values,
        salt=args.salt,
        version_key=args.version_key,
    )
    return await client.submit_call(
        call,
        hotkey,
        signer="hotkey",
        wait_for_inclusion=WAIT_FOR_INCLUSION,
        wait_for_finalization=WAIT_FOR_FINALIZATION,
    )


# --- outcomes ---


def block_of(result: Any) -> int | None:
    """The including block of an `ExtrinsicResult` (`extrinsic_id` is `"<block>-<index>"`)."""
    extrinsic_id = getattr(result, "extrinsic_id", None)
    if not extrinsic_id:
        return None
    head, _, _ = str(extrinsic_id).partition("-")
    return int(head) if head.isdigit() else None


def _code_of(error: Any) -> str | None:
    name = getattr(error, "name", None)
    if name in CHAIN_ERROR_CODES:
        return CHAIN_ERROR_CODES[name]
    code = getattr(getattr(error, "code", None), "value", None)
    return str(code) if code is not None else None


def refusal(error: BaseException) -> Outcome:
    """A refusal raised before anything was sent (the SDK's preflight or argument checks)."""
    return Outcome(success=False, message=one_line(error), code=_code_of(error) or "invalid_argument")


def outcome_of(result: Any) -> Outcome:
    """An `ExtrinsicResult` (the chain's answer to a sent extrinsic) as an `Outcome`."""
    block = block_of(result)
    data = dict(getattr(result, "data", None) or {})
    if result.success:
        return Outcome(success=True, message=str(result.message or ""), block=block, data=data)
    error = getattr(result, "error", None)
    message = one_line(error) if error is not None else (result.message or "extrinsic failed")
    return Outcome(success=False, message=message, code=_code_of(error), block=block, data=data)


def set_weights_result(outcome: Outcome) -> SetWeightsResult:
    """`committed` is True when the SDK took the timelocked path (it reports a drand round)."""
    committed = outcome.success and "reveal_round" in outcome.data
    if outcome.success:
        message = "weights committed (timelocked)" if committed else "weights set"
    else:
        message = outcome.message
    return SetWeightsResult(
        success=outcome.success, message=message, code=outcome.code, block=outcome.block, committed=committed
    )


def commit_result(outcome: Outcome, hash_hex: str) -> CommitResult:
    """`commit_hash` is set only when the chain took the commit."""
    return CommitResult(
        success=outcome.success,
        message="weights commit stored" if outcome.success else outcome.message,
        block=outcome.block,
        commit_hash=hash_hex if outcome.success else None,
        code=outcome.code,
    )


def reveal_result(outcome: Outcome) -> RevealResult:
    """On success the chain has set the revealed weights at `block`."""
    return RevealResult(
        success=outcome.success,
        message="weights revealed" if outcome.success else outcome.message,
        block=outcome.block,
        code=outcome.code,
    )
