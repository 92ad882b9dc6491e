"""`BittensorChain`: the `Chain` port over the bittensor 11 SDK (a thin adapter).

One connection per instance, opened on first use and dropped after a transport failure so the
next call reconnects. Every call has a timeout. SDK exceptions never leave this module: reads
raise `ChainError`, and a weights submission the chain refuses is `SetWeightsResult(success=False)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import bittensor as bt

from horde_common.chain.models import (
    NOT_SERVING_IP,
    ChainError,
    Hyperparameters,
    Metagraph,
    Neuron,
    SetWeightsResult,
)

RAO_PER_TAO = 1_000_000_000


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


def _block_of(result: Any) -> int | None:
    """The including block of an `ExtrinsicResult` (`extrinsic_id` is `"<block>-<index>"`)."""
    extrinsic_id = getattr(result, "extrinsic_id", None)
    if not extrinsic_id:
        return None
    head, _, _ = str(extrinsic_id).partition("-")
    return int(head) if head.isdigit() else None


class BittensorChain:
    """The real chain. `network` is `finney`, `test`, `local` or a `ws(s)://` URL.

    Constructing is offline; the connection opens on the first call. `substrate` (tests only)
    replaces the RPC backend with an in-memory `bittensor.Substrate` fake.
    """

    def __init__(
        self,
        network: str = "finney",
        *,
        timeout: float = 30.0,
        set_weights_timeout: float = 120.0,
        substrate: Any = None,
    ) -> None:
        self.network = network
        self.timeout = timeout
        self.set_weights_timeout = set_weights_timeout
        self._substrate = substrate
        self._client: bt.Client | None = None
        self._lock = asyncio.Lock()
        # Constructing the SDK object is offline; it validates the network name early.
        try:
            self._subtensor = bt.Subtensor(network) if substrate is None else None
        except (ValueError, bt.BittensorError) as exc:
            raise ChainError(f"bad bittensor network {network!r}: {_one_line(exc)}") from None

    def __repr__(self) -> str:
        return f"BittensorChain({self.network!r})"

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _connected(self) -> bt.Client:
        async with self._lock:
            if self._client is None:
                if self._substrate is not None:
                    client = bt.Client(self.network, substrate=self._substrate)
                    await client.connect()
                else:
                    subtensor = self._subtensor or bt.Subtensor(self.network)
                    self._subtensor = None  # an instance connects once; make a fresh one next time
                    client = await subtensor
                self._client = client
            return self._client

    async def _call(self, what: str, make: Any, limit: float | None = None, *, refusals: bool = False) -> Any:
        """Run `make(client)` with a timeout; translate every SDK failure into `ChainError`
        (or, with `refusals`, a non-transport SDK error into `_Refused`)."""
        limit = limit or self.timeout
        try:
            client = await asyncio.wait_for(self._connected(), limit)
            return await asyncio.wait_for(make(client), limit)
        except TimeoutError:
            await self.aclose()
            raise ChainError(f"chain {self.network}: no answer to {what} within {limit:g}s") from None
        except (bt.RpcConnectionError, bt.ConnectionNotReady, OSError) as exc:
            await self.aclose()
            raise ChainError(f"chain {self.network} unreachable ({what}): {_one_line(exc)}") from None
        except bt.BittensorError as exc:
            if refusals:
                raise _Refused(exc) from None
            raise ChainError(f"chain {self.network}: {what} failed: {_one_line(exc)}") from None

    # --- the Chain port ---

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

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        async def read(c: bt.Client) -> Hyperparameters:
            hp = c.hyperparameters
            info, rate, cr, reveal, min_w, max_w = await asyncio.gather(
                c.subnets.info(netuid),
                hp.weights_rate_limit(netuid),
                c.subnets.commit_reveal_enabled(netuid),
                hp.reveal_period(netuid),
                hp.min_allowed_weights(netuid),
                hp.max_weight_limit(netuid),
            )
            return Hyperparameters(
                netuid=netuid,
                tempo=int(info.tempo),
                weights_rate_limit=int(rate),
                commit_reveal_enabled=bool(cr),
                reveal_period_epochs=int(reveal),
                min_allowed_weights=int(min_w),
                max_weight_limit=int(max_w),
            )

        return await self._call(f"hyperparameters of subnet {netuid}", read)

    async def set_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        version_key: int,
        keypair: Any,
    ) -> SetWeightsResult:
        """`bt.SetWeights`: the SDK preflights registration and rate limit, scales to u16, and
        picks a direct set or a timelocked commit. `keypair` is a hotkey keypair or a wallet."""

        async def submit(c: bt.Client) -> Any:
            intent = bt.SetWeights(
                netuid=netuid,
                uids=[int(u) for u in uids],
                weights=[float(w) for w in weights],
                version_key=int(version_key),
            )
            return await c.execute(intent, keypair, wait_for_inclusion=True, wait_for_finalization=False)

        try:
            result = await self._call("set weights", submit, self.set_weights_timeout, refusals=True)
        except _Refused as refused:
            code = getattr(getattr(refused.error, "code", None), "value", None)
            return SetWeightsResult(
                success=False, message=_one_line(refused.error), code=code or "invalid_argument"
            )
        committed = "reveal_round" in (getattr(result, "data", None) or {})
        if not result.success:
            error = getattr(result, "error", None)
            code = getattr(getattr(error, "code", None), "value", None)
            return SetWeightsResult(
                success=False,
                message=_one_line(error) if error else (result.message or "weights extrinsic failed"),
                code=code,
                block=_block_of(result),
            )
        return SetWeightsResult(
            success=True,
            message=result.message or ("weights committed" if committed else "weights set"),
            block=_block_of(result),
            committed=committed,
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]


class _Refused(Exception):
    """The SDK or the chain refused a submission (as opposed to a transport failure)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
