"""`BittensorChain`: the `Chain` port over the bittensor 11 SDK (a thin adapter).

One connection per instance, opened on first use and dropped after a transport failure so the
next call reconnects. Every call has a timeout. SDK exceptions never leave this module: a read
or a write that cannot reach the chain raises `ChainError`, and a write the chain (or the SDK's
preflight) refuses is a result with `success=False`. The writes themselves live in
`bittensor_chain_weights`; `docs/weights.md` §7 describes which extrinsic each method sends.

bittensor is imported on first use, not with this module: the SDK takes about two seconds to
import and only the real chain needs it (the localnet client and the tests of everything else
do not).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from horde_common.chain import bittensor_chain_weights as writes
from horde_common.chain.models import (
    NOT_SERVING_IP,
    ChainError,
    CommitResult,
    Hyperparameters,
    Metagraph,
    Neuron,
    RevealResult,
    SetWeightsResult,
)

if TYPE_CHECKING:
    import bittensor as bt

T = TypeVar("T")

RAO_PER_TAO = 1_000_000_000

DEFAULT_TIMEOUT = 30.0
"""Seconds for one read (including connecting). A healthy node answers a whole metagraph in about
two seconds; 30 s leaves room for the SDK rotating to a fallback endpoint, yet keeps a
once-a-minute task from hanging on a dead node."""

DEFAULT_WRITE_TIMEOUT = 120.0
"""Seconds for one weights submission, waiting for inclusion: the preflight reads, then the
extrinsic must land in a block (12 s each; a busy pool may hold it a few blocks). Ten blocks
is enough on a healthy chain; past that the outcome is unknown and the caller retries."""


def _sdk() -> Any:
    """The bittensor package, imported on first need (see the module docstring)."""
    import bittensor

    return bittensor


def _amount(value: Any) -> float:
    """A stake as a plain number of whole units (TAO or alpha), whatever the SDK gave."""
    if value is None:
        return 0.0
    rao = getattr(value, "rao", None)
    if rao is not None:
        return int(rao) / RAO_PER_TAO
    return float(value)


def parse_axon(axon: str | None) -> tuple[str, int]:
    """`"1.2.3.4:8000"` / `"[::1]:8000"` / None -> (ip, port); None is `("0.0.0.0", 0)`."""
    if not axon:
        return NOT_SERVING_IP, 0
    host, _, port = axon.rpartition(":")
    if not host:
        return NOT_SERVING_IP, 0
    host = host.removeprefix("[").removesuffix("]")
    try:
        return host, int(port)
    except ValueError:
        return NOT_SERVING_IP, 0


def neuron_from_sdk(n: Any) -> Neuron:
    """Map a `bittensor.MetagraphNeuron` (or anything shaped like one) to a `Neuron`."""
    ip, port = parse_axon(getattr(n, "axon", None))
    stake = getattr(n, "total_stake", None)
    if stake is None:
        stake = getattr(n, "stake", None)
    return Neuron(
        uid=int(n.uid),
        hotkey=str(n.hotkey),
        coldkey=str(getattr(n, "coldkey", "") or ""),
        stake=max(0.0, _amount(stake)),
        validator_permit=bool(getattr(n, "validator_permit", False)),
        axon_ip=ip,
        axon_port=port,
        last_update=int(getattr(n, "last_update", 0) or 0),
    )


class BittensorChain:
    """The real chain. `network` is `finney`, `test`, `local` or a `ws(s)://` URL.

    Constructing is offline (it imports the SDK to validate the network name, nothing connects
    until the first call). `substrate` (tests only) replaces the SDK's RPC backend with an
    in-memory implementation of `bittensor.Substrate`; everything above it is the real SDK.
    """

    def __init__(
        self,
        network: str = "finney",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        substrate: Any = None,
    ) -> None:
        self.network = network
        self.timeout = timeout
        self.write_timeout = write_timeout
        self._substrate = substrate
        self._client: bt.Client | None = None
        self._lock = asyncio.Lock()
        bt_sdk = _sdk()
        try:
            bt_sdk.settings.resolve_endpoint(network)
        except (ValueError, bt_sdk.BittensorError) as exc:
            raise ChainError(f"bad bittensor network {network!r}: {writes.one_line(exc)}") from None

    def __repr__(self) -> str:
        return f"BittensorChain({self.network!r})"

    async def aclose(self) -> None:
        """Close the connection (if any); the next call opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _connected(self) -> bt.Client:
        async with self._lock:
            if self._client is None:
                bt_sdk = _sdk()
                if self._substrate is not None:
                    client = bt_sdk.Client(self.network, substrate=self._substrate)
                else:
                    client = bt_sdk.Client(self.network)
                await client.connect()
                self._client = client
            return self._client

    async def _call(
        self,
        what: str,
        make: Callable[[bt.Client], Awaitable[T]],
        limit: float | None = None,
        *,
        refusals: bool = False,
    ) -> T:
        """Run `make(client)` under a timeout and translate every SDK failure into `ChainError`;
        with `refusals`, an SDK error that is the chain (or the preflight) saying no is raised
        as `writes.Refused` instead, for the caller to turn into a `success=False` result."""
        limit = limit or self.timeout
        bt_sdk = _sdk()
        try:
            client = await asyncio.wait_for(self._connected(), limit)
            return await asyncio.wait_for(make(client), limit)
        except TimeoutError:
            await self.aclose()
            raise ChainError(f"chain {self.network}: no answer to {what} within {limit:g}s") from None
        except Exception as exc:
            if writes.is_transport_failure(exc):
                await self.aclose()
                raise ChainError(
                    f"chain {self.network} unreachable ({what}): {writes.one_line(exc)}"
                ) from exc
            if not isinstance(exc, bt_sdk.BittensorError):
                raise
            if refusals:
                raise writes.Refused(exc) from None
            raise ChainError(f"chain {self.network}: {what} failed: {writes.one_line(exc)}") from exc

    # --- reads ---

    async def current_block(self) -> int:
        return int(await self._call("current block", lambda c: c.block()))

    async def block_hash(self, block: int) -> str:
        info = await self._call(f"block {block}", lambda c: c.block_info(int(block)))
        if info is None or not info.hash:
            raise ChainError(f"chain {self.network}: block {block} not found")
        return str(info.hash)

    async def metagraph(self, netuid: int, block: int | None = None) -> Metagraph:
        mg = await self._call(
            f"metagraph of subnet {netuid}",
            lambda c: c.subnets.metagraph(netuid, block=block, commitments=False),
        )
        if mg is None:
            raise ChainError(f"chain {self.network}: subnet {netuid} does not exist")
        return Metagraph(
            netuid=netuid,
            block=int(mg.block),
            neurons=[neuron_from_sdk(n) for n in mg.neurons],
        )

    async def weights_rate_limit(self, netuid: int) -> int:
        return int(
            await self._call("weights rate limit", lambda c: c.hyperparameters.weights_rate_limit(netuid))
        )

    async def commit_reveal_enabled(self, netuid: int) -> bool:
        return bool(await self._call("commit-reveal flag", lambda c: c.subnets.commit_reveal_enabled(netuid)))

    async def min_allowed_weights(self, netuid: int) -> int:
        return int(
            await self._call("min allowed weights", lambda c: c.hyperparameters.min_allowed_weights(netuid))
        )

    async def max_weight_limit(self, netuid: int) -> int:
        return int(await self._call("max weight limit", lambda c: c.hyperparameters.max_weight_limit(netuid)))

    async def commit_reveal_interval(self, netuid: int) -> int:
        """Derived, the chain stores no interval any more: `docs/weights.md` §7.2."""
        return (await self.hyperparameters(netuid)).commit_reveal_interval

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        """Every value read at one block, so no two come from different chain states."""

        async def read(c: bt.Client) -> Hyperparameters:
            at = await c.at()
            hp = at.hyperparameters
            storage = _sdk().storage.SubtensorModule
            tempo, version, rate, cr, reveal, min_w, max_w = await asyncio.gather(
                at.query(storage.Tempo, [netuid]),
                at.query(storage.WeightsVersionKey, [netuid]),
                hp.weights_rate_limit(netuid),
                at.subnets.commit_reveal_enabled(netuid),
                hp.reveal_period(netuid),
                hp.min_allowed_weights(netuid),
                hp.max_weight_limit(netuid),
            )
            if tempo is None:
                raise ChainError(f"chain {self.network}: subnet {netuid} does not exist")
            return Hyperparameters(
                netuid=netuid,
                tempo=int(tempo),
                weights_rate_limit=int(rate),
                commit_reveal_enabled=bool(cr),
                reveal_period_epochs=int(reveal),
                min_allowed_weights=int(min_w),
                max_weight_limit=int(max_w),
                weights_version=int(version or 0),
                commit_reveal_interval=writes.commit_reveal_interval(int(tempo), int(reveal)),
            )

        return await self._call(f"hyperparameters of subnet {netuid}", read)

    # --- writes (signed by the hotkey of `keypair`; `docs/weights.md` §7.3) ---

    async def set_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        version_key: int,
        keypair: Any,
    ) -> SetWeightsResult:
        """`bt.SetWeights`: the SDK preflights registration and rate limit, scales to u16, and
        sends a direct set or a timelocked commit, as the subnet's hyperparameters say."""
        hotkey = writes.hotkey_of(keypair)
        intent = (netuid, list(uids), list(weights), int(version_key))
        outcome = await self._write("set weights", lambda c: writes.send_set_weights(c, *intent, hotkey))
        return writes.set_weights_result(outcome)

    async def commit_weights(self, netuid: int, commit_hash: bytes | str, keypair: Any) -> CommitResult:
        """The legacy salted commit: extrinsic `commit_weights(netuid, commit_hash)`."""
        hotkey = writes.hotkey_of(keypair)
        hash_hex = writes.canonical_hash(commit_hash)  # ValueError before any I/O
        outcome = await self._write(
            "commit weights", lambda c: writes.send_commit(c, netuid, hash_hex, hotkey)
        )
        return writes.commit_result(outcome, hash_hex)

    async def reveal_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        values: Sequence[int],
        salt: Sequence[int],
        version_key: int,
        keypair: Any,
    ) -> RevealResult:
        """The legacy reveal: extrinsic `reveal_weights(netuid, uids, values, salt, version_key)`
        with the committed integers exactly as given (zeros kept, no rescaling)."""
        hotkey = writes.hotkey_of(keypair)
        args = writes.reveal_args(netuid, uids, values, salt, version_key)  # ValueError before any I/O
        outcome = await self._write("reveal weights", lambda c: writes.send_reveal(c, args, hotkey))
        return writes.reveal_result(outcome)

    async def _write(self, what: str, make: Callable[[bt.Client], Awaitable[Any]]) -> writes.Outcome:
        """Submit under the write timeout: a refusal becomes an `Outcome`, transport raises."""
        try:
            result = await self._call(what, make, self.write_timeout, refusals=True)
        except writes.Refused as refused:
            return writes.refusal(refused.error)
        return writes.outcome_of(result)


if TYPE_CHECKING:
    from horde_common.chain.base import Chain

    def _implements_the_port(chain: BittensorChain) -> Chain:
        """mypy proves here that every `Chain` method exists with the port's signature."""
        return chain
