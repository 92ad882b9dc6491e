"""`LocalChainClient`: the `Chain` port over HTTP to the localnet chain simulator."""

from __future__ import annotations

import operator
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from horde_common.chain.commit_hash import U16_MAX, U64_MAX, commit_hash_hex
from horde_common.chain.local_models import (
    BlockInfo,
    CommitWeightsRequest,
    ErrorBody,
    NeuronsUpdate,
    PendingCommits,
    RevealWeightsRequest,
    SetWeightsRequest,
    WeightsHistory,
)
from horde_common.chain.models import (
    ChainError,
    CommitResult,
    Hyperparameters,
    Metagraph,
    Neuron,
    RevealResult,
    SetWeightsResult,
    hotkey_signer,
    quantize_weights,
)

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT = 10.0


class LocalChainClient:
    """Talks to `horde_localnet.chain`. Every request has a timeout; any transport failure, HTTP
    error or malformed answer becomes a one-line `ChainError`."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"LocalChainClient({self.url!r})"

    async def __aenter__(self) -> LocalChainClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout)
        return self._http

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        request_timeout: float | None = None,
    ) -> httpx.Response:
        what = f"{method} {path}"
        try:
            return await self._client().request(
                method, path, params=params, json=json, timeout=request_timeout or self.timeout
            )
        except httpx.TimeoutException:
            raise ChainError(
                f"local chain {self.url}: no answer to {what} within {request_timeout or self.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise ChainError(
                f"local chain {self.url} unreachable ({what}): {type(exc).__name__}: {exc}"
            ) from None

    def _error(self, response: httpx.Response, what: str) -> ChainError:
        body = _parse_error(response)
        if body is not None:
            return ChainError(f"local chain refused {what}: {body.message}")
        return ChainError(f"local chain {self.url} answered HTTP {response.status_code} to {what}")

    def _parse(self, response: httpx.Response, model: type[M], what: str) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise ChainError(f"local chain {self.url} sent a malformed answer to {what}") from None

    async def _get(
        self,
        path: str,
        model: type[M],
        *,
        params: dict[str, Any] | None = None,
        request_timeout: float | None = None,
    ) -> M:
        response = await self._request("GET", path, params=params, request_timeout=request_timeout)
        if response.status_code != 200:
            raise self._error(response, f"GET {path}")
        return self._parse(response, model, f"GET {path}")

    # --- the Chain port ---

    async def current_block(self) -> int:
        return (await self._get("/block", BlockInfo)).number

    async def block_hash(self, block: int) -> str:
        return (await self._get(f"/blocks/{int(block)}", BlockInfo)).hash

    async def metagraph(self, netuid: int, block: int | None = None) -> Metagraph:
        params = {"block": int(block)} if block is not None else None
        return await self._get(f"/subnets/{int(netuid)}/metagraph", Metagraph, params=params)

    async def hyperparameters(self, netuid: int) -> Hyperparameters:
        return await self._get(f"/subnets/{int(netuid)}/hyperparameters", Hyperparameters)

    async def weights_rate_limit(self, netuid: int) -> int:
        return (await self.hyperparameters(netuid)).weights_rate_limit

    async def commit_reveal_enabled(self, netuid: int) -> bool:
        return (await self.hyperparameters(netuid)).commit_reveal_enabled

    async def set_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        weights: Sequence[float],
        version_key: int,
        keypair: Any,
    ) -> SetWeightsResult:
        signer = hotkey_signer(keypair)
        try:
            q_uids, q_values = quantize_weights(uids, weights)
        except ValueError as exc:
            return SetWeightsResult(success=False, message=str(exc), code="invalid_argument")
        request = SetWeightsRequest(
            netuid=netuid,
            hotkey=signer.ss58_address,
            uids=q_uids,
            weights=q_values,
            version_key=version_key,
            nonce=uuid.uuid4().hex,
        )
        request.signature = "0x" + bytes(signer.sign(request.signing_payload())).hex()
        answer = await self._submit(f"/subnets/{int(netuid)}/weights", request, SetWeightsResult)
        if isinstance(answer, ErrorBody):
            return SetWeightsResult(success=False, message=answer.message, code=answer.code)
        return answer

    async def _submit(self, path: str, request: BaseModel, model: type[M]) -> M | ErrorBody:
        """POST a signed write. A 4xx `ErrorBody` is the chain refusing (returned, the caller
        turns it into a `success=False` result); anything else that is not a 200 is an error."""
        response = await self._request("POST", path, json=request.model_dump())
        if response.status_code == 200:
            return self._parse(response, model, f"POST {path}")
        body = _parse_error(response)
        if body is not None and 400 <= response.status_code < 500:
            return body
        raise self._error(response, f"POST {path}")

    async def min_allowed_weights(self, netuid: int) -> int:
        return (await self.hyperparameters(netuid)).min_allowed_weights

    async def max_weight_limit(self, netuid: int) -> int:
        return (await self.hyperparameters(netuid)).max_weight_limit

    async def commit_reveal_interval(self, netuid: int) -> int:
        return (await self.hyperparameters(netuid)).commit_reveal_interval

    async def commit_weights(self, netuid: int, commit_hash: bytes | str, keypair: Any) -> CommitResult:
        signer = hotkey_signer(keypair)
        digest = commit_hash_hex(commit_hash)  # ValueError before any I/O, as the port says
        request = CommitWeightsRequest(
            netuid=netuid, hotkey=signer.ss58_address, commit_hash=digest, nonce=uuid.uuid4().hex
        )
        request.signature = "0x" + bytes(signer.sign(request.signing_payload())).hex()
        answer = await self._submit(f"/subnets/{int(netuid)}/commits", request, CommitResult)
        if isinstance(answer, ErrorBody):
            return CommitResult(success=False, message=answer.message, code=answer.code)
        return answer

    async def reveal_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        values: Sequence[int],
        salt: Sequence[int],
        version_key: int,
        keypair: Any,
    ) -> RevealResult:
        signer = hotkey_signer(keypair)
        if len(uids) != len(values):
            raise ValueError(f"uids and values differ in length: {len(uids)} != {len(values)}")
        if not 0 <= int(version_key) <= U64_MAX:
            raise ValueError(f"version_key {version_key} is not a u64")
        request = RevealWeightsRequest(
            netuid=netuid,
            hotkey=signer.ss58_address,
            uids=_u16s("uids", uids),
            values=_u16s("values", values),
            salt=_u16s("salt", salt),  # bytes iterate as ints 0..255, the way the chain takes them
            version_key=int(version_key),
            nonce=uuid.uuid4().hex,
        )
        request.signature = "0x" + bytes(signer.sign(request.signing_payload())).hex()
        answer = await self._submit(f"/subnets/{int(netuid)}/reveals", request, RevealResult)
        if isinstance(answer, ErrorBody):
            return RevealResult(success=False, message=answer.message, code=answer.code)
        return answer

    # --- localnet extras (not part of the Chain port) ---

    async def wait_for_block(self, number: int, max_wait: float = 30.0) -> int:
        """Return once the head is at least `number` (served by the simulator, no polling)."""
        info = await self._get(
            "/block/wait",
            BlockInfo,
            params={"number": int(number), "timeout": max_wait},
            request_timeout=max_wait + self.timeout,
        )
        return info.number

    async def weights(self, netuid: int, hotkey: str | None = None, limit: int = 100) -> WeightsHistory:
        params: dict[str, Any] = {"limit": limit}
        if hotkey is not None:
            params["hotkey"] = hotkey
        return await self._get(f"/subnets/{int(netuid)}/weights", WeightsHistory, params=params)

    async def pending_commits(self, netuid: int, hotkey: str | None = None) -> PendingCommits:
        """Legacy commits the simulator holds and that were not revealed yet."""
        params = {"hotkey": hotkey} if hotkey is not None else None
        return await self._get(f"/subnets/{int(netuid)}/commits", PendingCommits, params=params)

    async def replace_neurons(self, netuid: int, neurons: Sequence[Neuron]) -> Metagraph:
        """Scenario control: make `neurons` the subnet's whole metagraph."""
        path = f"/admin/subnets/{int(netuid)}/neurons"
        body = NeuronsUpdate(neurons=list(neurons)).model_dump(mode="json")
        response = await self._request("PUT", path, json=body)
        if response.status_code != 200:
            raise self._error(response, f"PUT {path}")
        return self._parse(response, Metagraph, f"PUT {path}")


def _u16s(name: str, items: Sequence[int]) -> list[int]:
    """The items as u16 ints; `ValueError` (`TypeError` for floats) for what the chain cannot encode."""
    values = [operator.index(v) for v in items]
    if any(not 0 <= v <= U16_MAX for v in values):
        raise ValueError(f"{name} must all be u16 (0..65535)")
    return values


def _parse_error(response: httpx.Response) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate_json(response.content)
    except ValidationError:
        return None
