"""Frame ⇄ message conversion for each direction, with the original's error texts (spec A §1.5).

A frame is valid only if its `message_type` belongs to the receiving side's set and the whole
object validates against that type; unknown fields are ignored. Error texts follow the original:
the JSON decoder's message for bad JSON, otherwise the JSON list of pydantic errors (without URLs
and without the offending input, so a huge bad frame is never echoed back to its sender).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from .miner_messages import MinerMessage
from .validator_messages import ValidatorMessage

MAX_ERROR_TEXT: Final = 10_000

_MINER_ADAPTER: TypeAdapter[MinerMessage] = TypeAdapter(
    Annotated[MinerMessage, Field(discriminator="message_type")]  # type: ignore[arg-type]
)
_VALIDATOR_ADAPTER: TypeAdapter[ValidatorMessage] = TypeAdapter(
    Annotated[ValidatorMessage, Field(discriminator="message_type")]  # type: ignore[arg-type]
)


class ProtocolError(ValueError):
    """An invalid frame. `text` is what goes after "Malformed message ...: " in the GenericError reply."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _truncate(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT] + " ... (truncated)"


def _load(raw: str | bytes | bytearray | memoryview) -> Any:
    """JSON-decode a text or binary frame (binary frames holding JSON are accepted too)."""
    try:
        data = bytes(raw) if isinstance(raw, bytearray | memoryview) else raw
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError(exc.args[0]) from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"Invalid UTF-8: {exc}") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except Exception as exc:  # TypeError for a non-frame, anything odd: still just a bad frame
        raise ProtocolError(f"{type(exc).__name__}: {exc}") from None


def _validate(adapter: TypeAdapter[Any], raw: str | bytes | bytearray | memoryview) -> Any:
    data = _load(raw)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(_truncate(exc.json(include_url=False, include_input=False))) from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except Exception as exc:
        raise ProtocolError(_truncate(f"{type(exc).__name__}: {exc}")) from None


def parse_miner_message(raw: str | bytes | bytearray | memoryview) -> MinerMessage:
    """A frame the validator received from a miner. Raises only `ProtocolError`."""
    result: MinerMessage = _validate(_MINER_ADAPTER, raw)
    return result


def parse_validator_message(raw: str | bytes | bytearray | memoryview) -> ValidatorMessage:
    """A frame a miner received from a validator (the miner simulator's side). Raises only `ProtocolError`."""
    result: ValidatorMessage = _validate(_VALIDATOR_ADAPTER, raw)
    return result


def dumps(message: BaseModel) -> str:
    """Compact JSON with every field written, `null` for unset optionals, as the original serialiser."""
    return message.model_dump_json()
