"""`LocalChainClient`: the `Chain` port over HTTP to the localnet chain simulator."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from horde_common.chain.local_models import (
    BlockInfo,
    ErrorBody,
    NeuronsUpdate,
    SetWeightsRequest,
    WeightsHistory,
)
from horde_common.chain.models import (
    ChainError,
    Hyperparameters,
    Metagraph,
    Neuron,
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
        path = f"/subnets/{int(netuid)}/weights"
        response = await self._request("POST", path, json=request.model_dump())
        if response.status_code == 200:
            return self._parse(response, SetWeightsResult, f"POST {path}")
        body = _parse_error(response)
        if body is not None and 400 <= response.status_code < 500:
            return SetWeightsResult(success=False, message=body.message, code=body.code)
        raise self._error(response, f"POST {path}")

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

    async def replace_neurons(self, netuid: int, neurons: Sequence[Neuron]) -> Metagraph:
        """Scenario control: make `neurons` the subnet's whole metagraph."""
        path = f"/admin/subnets/{int(netuid)}/neurons"
        body = NeuronsUpdate(neurons=list(neurons)).model_dump(mode="json")
        response = await self._request("PUT", path, json=body)
        if response.status_code != 200:
            raise self._error(response, f"PUT {path}")
        return self._parse(response, Metagraph, f"PUT {path}")


def _parse_error(response: httpx.Response) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate_json(response.content)
    except ValidationError:
        return None
