"""A simulated miner's receipts: verified and counter-signed as the miner does, served over HTTP.

The WebSocket server answers plain HTTP on the same port: `/receipts/receipts.csv`
(docs/miner-protocol.md §2.4.6)
is the receipts of the last 24 h, any path other than the validator interface is a 404.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from horde_common.crypto import sign, verify
from horde_common.protocol.miner import Receipt

from .config import RECEIPTS_MAX_AGE

VALIDATOR_PATH = re.compile(r"^/v0\.1/validator_interface/(?P<hotkey>[^/?#]+)/?(?:\?.*)?$")
RECEIPTS_PATH = "/receipts/receipts.csv"


def check_and_sign(
    keypair: Any, payload: Any, signature: str, validator: str, *, check_miner_hotkey: bool = True
) -> tuple[Receipt | None, str]:
    """The receipt counter-signed with `keypair`, or None and the reason the miner would reject it.

    A trusted miner (`check_miner_hotkey=False`) takes receipts naming any miner hotkey: the
    validator may not know its key (docs/crossval.md §8)."""
    if check_miner_hotkey and payload.miner_hotkey != str(keypair.ss58_address):
        return None, "wrong miner hotkey"
    if payload.validator_hotkey != validator:
        return None, "wrong validator hotkey"
    blob = payload.blob_for_signing()
    if not verify(validator, blob, signature):
        return None, "bad signature"
    return Receipt(payload=payload, validator_signature=signature, miner_signature=sign(keypair, blob)), ""


def receipts_csv(receipts: Iterable[Receipt]) -> str:
    """The receipts of the last 24 h in the miner's CSV layout (docs/miner-protocol.md §2.4.6)."""
    cutoff = datetime.now(UTC) - RECEIPTS_MAX_AGE
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    for receipt in receipts:
        if receipt.payload.timestamp < cutoff:
            continue
        payload = receipt.payload.model_dump(mode="json")
        for key in payload:
            if key not in columns:
                columns.append(key)
        rows.append(
            {
                "type": payload["receipt_type"],
                "validator_signature": receipt.validator_signature,
                "miner_signature": receipt.miner_signature or "",
                **payload,
            }
        )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["type", "validator_signature", "miner_signature", *columns])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def http_response(
    connection: ServerConnection, request: Request, receipts: Callable[[], str]
) -> Response | None:
    """The HTTP answer for a request that is not a validator WebSocket, or None to upgrade it."""
    path = request.path
    if path.split("?", 1)[0] == RECEIPTS_PATH:
        body = receipts().encode("utf-8")
        headers = Headers([("Content-Type", "text/csv"), ("Content-Length", str(len(body)))])
        return Response(200, "OK", headers, body)
    if VALIDATOR_PATH.match(path) is None:
        return connection.respond(404, "Not Found\n")
    return None
