"""The localnet chain simulator's state: blocks, the metagraph and recorded weights (no I/O).

Split from `horde_localnet.chain` (which keeps the HTTP app, serving and the CLI and re-exports
these names) so each module stays small. See that module's docstring for the behaviour.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import bittensor_core as sp_core

from horde_common.chain import U16_MAX, Hyperparameters, Metagraph, Neuron, SetWeightsResult
from horde_common.chain.commit_hash import commit_hash
from horde_common.chain.local_models import (
    BlockInfo,
    CommitWeightsRequest,
    PendingCommit,
    RevealWeightsRequest,
    SetWeightsRequest,
    WeightsRecord,
)
from horde_common.chain.models import CommitResult, RevealResult
from horde_localnet.chain_spec import LocalnetSpec, SpecError
from horde_localnet.chain_weights import may_commit, reveal_window, within_max_weight

# Same logger name as before the split from `chain`, so log filters keep matching.
log = logging.getLogger("horde_localnet.chain")

MAX_RECORDS = 10_000
MAX_NONCES = 100_000


class Refused(Exception):
    """The simulated chain refuses a request: becomes an `ErrorBody` answer with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ChainSim:
    """The simulated chain state. No I/O: the HTTP app and tests drive it directly."""

    def __init__(
        self,
        spec: LocalnetSpec,
        *,
        block_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.netuid = spec.netuid
        self.block_interval = float(block_interval or spec.chain.block_interval)
        if not self.block_interval > 0:
            raise SpecError(f"block interval must be > 0, got {self.block_interval}")
        self.start_block = spec.chain.start_block
        self.genesis = spec.chain.genesis
        self.hyperparameters: Hyperparameters = spec.hyperparameters()
        self._neurons: list[Neuron] = spec.build_neurons()
        self._clock = clock
        self._t0 = clock()
        self._records: deque[WeightsRecord] = deque(maxlen=MAX_RECORDS)
        self._nonces: set[str] = set()
        self._nonce_order: deque[str] = deque()
        self._commits: dict[tuple[int, str], PendingCommit] = {}

    # --- blocks ---

    def current_block(self) -> int:
        elapsed = max(0.0, self._clock() - self._t0)
        return self.start_block + int(elapsed / self.block_interval)

    def seconds_until(self, number: int) -> float:
        """Time until the head reaches `number` (<= 0 if it already has)."""
        return self._t0 + (number - self.start_block) * self.block_interval - self._clock()

    def block_hash(self, number: int) -> str:
        if number < 0:
            raise Refused(404, "not_found", f"no block {number}")
        head = self.current_block()
        if number > head:
            raise Refused(404, "not_found", f"block {number} is in the future (head is {head})")
        digest = hashlib.blake2b(f"{self.genesis}:{number}".encode(), digest_size=32).hexdigest()
        return "0x" + digest

    def block_info(self, number: int | None = None) -> BlockInfo:
        n = self.current_block() if number is None else number
        return BlockInfo(number=n, hash=self.block_hash(n))

    # --- subnet ---

    def _check_netuid(self, netuid: int) -> None:
        if netuid != self.netuid:
            raise Refused(404, "subnet_not_exists", f"subnet {netuid} does not exist")

    def metagraph(self, netuid: int, block: int | None = None) -> Metagraph:
        self._check_netuid(netuid)
        head = self.current_block()
        if block is None:
            block = head
        elif block < 0 or block > head:
            raise Refused(404, "not_found", f"block {block} is not on the chain (head is {head})")
        return Metagraph(netuid=netuid, block=block, neurons=list(self._neurons))

    def get_hyperparameters(self, netuid: int) -> Hyperparameters:
        self._check_netuid(netuid)
        return self.hyperparameters

    def replace_neurons(self, netuid: int, neurons: Sequence[Neuron]) -> Metagraph:
        self._check_netuid(netuid)
        ordered = sorted(neurons, key=lambda n: n.uid)
        if len({n.uid for n in ordered}) != len(ordered):
            raise Refused(422, "invalid_argument", "duplicate uids")
        if len({n.hotkey for n in ordered}) != len(ordered):
            raise Refused(422, "invalid_argument", "duplicate hotkeys")
        self._neurons = ordered
        return self.metagraph(netuid)

    # --- weights ---

    def _writer(self, req: SignedRequest) -> Neuron:
        """Transaction-level checks of a signed write: subnet, signature, registration, replay."""
        self._check_netuid(req.netuid)
        if not _signature_ok(req):
            raise Refused(403, "bad_signature", f"bad signature for hotkey {req.hotkey}")
        neuron = next((n for n in self._neurons if n.hotkey == req.hotkey), None)
        if neuron is None:
            raise Refused(
                403, "not_registered", f"hotkey {req.hotkey} is not registered on subnet {req.netuid}"
            )
        if req.nonce in self._nonces:
            raise Refused(409, "replayed", f"nonce {req.nonce} was already used")
        return neuron

    def _check_set(
        self, neuron: Neuron, netuid: int, uids: list[int], values: list[int], version_key: int, head: int
    ) -> None:
        """What subtensor checks before it sets weights (directly or from a reveal)."""
        self_weight = uids == [neuron.uid]
        if not neuron.validator_permit and not self_weight:
            raise Refused(
                403,
                "not_authorized",
                f"hotkey {neuron.hotkey} (uid {neuron.uid}) has no validator permit on subnet {netuid}",
            )
        hp = self.hyperparameters
        if version_key < hp.weights_version:
            raise Refused(
                422,
                "invalid_argument",
                f"version key {version_key} is older than the subnet's {hp.weights_version}",
            )
        self._check_weights(netuid, uids, values, self_weight)
        if hp.weights_rate_limit and neuron.last_update > 0:
            since = head - neuron.last_update
            if since < hp.weights_rate_limit:
                raise Refused(
                    429,
                    "rate_limited",
                    f"weights on subnet {netuid} were set {since} blocks ago by uid {neuron.uid}; "
                    f"the rate limit is {hp.weights_rate_limit} blocks: retry in "
                    f"{hp.weights_rate_limit - since} blocks",
                )

    def _take(self, neuron: Neuron, nonce: str, record: WeightsRecord, head: int) -> None:
        """Accept a weights write at `head`: burn the nonce, bump `last_update` (what the rate
        limit counts from; a timelocked commit counts too), keep the record."""
        self._remember_nonce(nonce)
        self._neurons = [
            n.model_copy(update={"last_update": head}) if n.uid == neuron.uid else n for n in self._neurons
        ]
        self._records.append(record)

    def set_weights(self, req: SetWeightsRequest) -> SetWeightsResult:
        """Check a submission like subtensor does; record it or raise `Refused`."""
        neuron = self._writer(req)
        head = self.current_block()
        self._check_set(neuron, req.netuid, req.uids, req.weights, req.version_key, head)
        hp = self.hyperparameters
        committed = hp.commit_reveal_enabled
        reveal_block = head + hp.reveal_period_epochs * hp.tempo if committed else None
        record = WeightsRecord(
            netuid=req.netuid,
            hotkey=req.hotkey,
            uid=neuron.uid,
            block=head,
            uids=list(req.uids),
            weights=list(req.weights),
            version_key=req.version_key,
            committed=committed,
            reveal_block=reveal_block,
        )
        self._take(neuron, req.nonce, record, head)
        message = (
            f"weights committed at block {head}, revealed at block {reveal_block}"
            if committed
            else f"weights set at block {head}"
        )
        log.info("uid %s: %s (%d uids)", neuron.uid, message, len(req.uids))
        return SetWeightsResult(success=True, message=message, block=head, committed=committed)

    def _check_weights(self, netuid: int, uids: list[int], values: list[int], self_weight: bool) -> None:
        def bad(message: str) -> Refused:
            return Refused(422, "invalid_argument", message)

        if len(uids) != len(values):
            raise bad(f"{len(uids)} uids but {len(values)} weights")
        if not uids:
            raise bad("no weights (all weights are zero)")
        if len(set(uids)) != len(uids):
            raise bad("duplicate uids")
        known = {n.uid for n in self._neurons}
        unknown = sorted(set(uids) - known)
        if unknown:
            raise bad(f"uids not on subnet {netuid}: {unknown[:10]}")
        if any(not 0 <= w <= U16_MAX for w in values):
            raise bad("weights must be u16 (0..65535)")
        hp = self.hyperparameters
        if not self_weight and len(uids) < hp.min_allowed_weights:
            raise bad(f"subnet {netuid} needs at least {hp.min_allowed_weights} weights, got {len(uids)}")
        if not self_weight and not within_max_weight(values, hp.max_weight_limit):
            raise bad(
                f"a weight exceeds the subnet's max weight limit {hp.max_weight_limit}/{U16_MAX} of the total"
            )

    # --- legacy commit-reveal (`docs/weights.md` §8) ---

    def _check_commit_reveal_enabled(self, netuid: int) -> None:
        if not self.hyperparameters.commit_reveal_enabled:
            raise Refused(
                403, "commit_reveal_disabled", f"commit-reveal is disabled on subnet {netuid}: set weights"
            )

    def commit_weights(self, req: CommitWeightsRequest) -> CommitResult:
        """Store the hotkey's commit hash with its block, or raise `Refused`."""
        neuron = self._writer(req)
        self._check_commit_reveal_enabled(req.netuid)
        head = self.current_block()
        interval = self.hyperparameters.commit_reveal_interval
        key = (req.netuid, req.hotkey)
        previous = self._commits.get(key)
        if previous is not None and not may_commit(previous.block, head, interval):
            start, _ = reveal_window(previous.block, interval)
            raise Refused(
                409,
                "commit_not_allowed",
                f"uid {neuron.uid} already committed at block {previous.block} in this interval; "
                f"the next commit (or its reveal) is possible from block {start}",
            )
        self._remember_nonce(req.nonce)
        self._commits[key] = PendingCommit(
            netuid=req.netuid, hotkey=req.hotkey, commit_hash=req.commit_hash, block=head
        )
        start, end = reveal_window(head, interval)
        message = f"weights hash committed at block {head}; reveal in blocks {start}..{end - 1}"
        log.info("uid %s: %s", neuron.uid, message)
        return CommitResult(success=True, message=message, block=head, commit_hash=req.commit_hash)

    def reveal_weights(self, req: RevealWeightsRequest) -> RevealResult:
        """Check a reveal against the pending commit, then set the weights; or raise `Refused`.

        A refused reveal leaves the commit pending (it may be retried within the window).
        """
        neuron = self._writer(req)
        self._check_commit_reveal_enabled(req.netuid)
        key = (req.netuid, req.hotkey)
        pending = self._commits.get(key)
        if pending is None:
            raise Refused(404, "no_commit", f"uid {neuron.uid} has no pending weights commit")
        head = self.current_block()
        start, end = reveal_window(pending.block, self.hyperparameters.commit_reveal_interval)
        if head < start:
            raise Refused(
                409,
                "reveal_too_early",
                f"commit of block {pending.block} may be revealed in blocks {start}..{end - 1}; head is {head}",
            )
        if head >= end:
            raise Refused(
                409,
                "reveal_too_late",
                f"commit of block {pending.block} could be revealed in blocks {start}..{end - 1}; "
                f"head is {head}",
            )
        try:
            revealed = commit_hash(
                _public_key(req.hotkey), req.netuid, req.uids, req.values, req.salt, req.version_key
            )
        except (ValueError, TypeError) as exc:
            raise Refused(422, "invalid_argument", f"cannot hash the reveal: {exc}") from None
        if revealed != pending.commit_hash:
            raise Refused(
                409,
                "hash_mismatch",
                f"revealed weights hash to {revealed}, the commit of block {pending.block} is "
                f"{pending.commit_hash}",
            )
        self._check_set(neuron, req.netuid, req.uids, req.values, req.version_key, head)
        del self._commits[key]
        record = WeightsRecord(
            netuid=req.netuid,
            hotkey=req.hotkey,
            uid=neuron.uid,
            block=pending.block,
            uids=list(req.uids),
            weights=list(req.values),
            version_key=req.version_key,
            committed=True,
            reveal_block=head,
        )
        self._take(neuron, req.nonce, record, head)
        message = f"weights committed at block {pending.block} revealed at block {head}"
        log.info("uid %s: %s (%d uids)", neuron.uid, message, len(req.uids))
        return RevealResult(success=True, message=message, block=head)

    def pending_commits(self, netuid: int, hotkey: str | None = None) -> list[PendingCommit]:
        """Commits not revealed yet, oldest first."""
        self._check_netuid(netuid)
        commits = sorted(self._commits.values(), key=lambda c: (c.block, c.hotkey))
        return [c for c in commits if hotkey is None or c.hotkey == hotkey]

    def _remember_nonce(self, nonce: str) -> None:
        self._nonces.add(nonce)
        self._nonce_order.append(nonce)
        while len(self._nonce_order) > MAX_NONCES:
            self._nonces.discard(self._nonce_order.popleft())

    def weights(self, netuid: int, hotkey: str | None = None, limit: int = 100) -> list[WeightsRecord]:
        """Recorded submissions, oldest first, the last `limit` of them."""
        self._check_netuid(netuid)
        records = [r for r in self._records if hotkey is None or r.hotkey == hotkey]
        return records[-limit:] if limit > 0 else []


class SignedRequest(Protocol):
    """What every signed write carries (`SetWeightsRequest`, `CommitWeightsRequest`, ...)."""

    netuid: int
    hotkey: str
    nonce: str
    signature: str

    def signing_payload(self) -> bytes: ...


def _public_key(ss58_address: str) -> bytes:
    """The 32-byte account a commit hash covers (the hotkey is registered, so it decodes)."""
    return bytes(sp_core.ss58_decode(ss58_address))


def _signature_ok(req: SignedRequest) -> bool:
    sig = req.signature.removeprefix("0x")
    try:
        return bool(sp_core.verify(req.signing_payload(), bytes.fromhex(sig), req.hotkey))
    except ValueError:  # not hex, wrong length, not an ss58 address
        return False
