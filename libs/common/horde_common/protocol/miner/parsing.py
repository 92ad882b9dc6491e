"""Frame ⇄ message conversion for each direction, with the original's error texts
(docs/miner-protocol.md §1.5).

A frame is valid only if its `message_type` belongs to the receiving side's set and the whole
object validates against that type; unknown fields are ignored. Error texts follow the original:
the JSON decoder's message for bad JSON, otherwise the JSON list of pydantic errors (without URLs
and without the offending input, so a huge bad frame is never echoed back to its sender).

A miner's frame is also bounded before it is decoded, by its `message_type` (`check_miner_frame`):
a manifest is small, a job's final answer may carry its output. A frame above
`MAX_SMALL_FRAME` must also be made of strings rather than of many small JSON values
(`MAX_LARGE_FRAME_TOKENS`), so that decoding it never costs much more memory than its own size.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from typing import Annotated, Any, Final

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from .miner_messages import MinerMessage
from .validator_messages import ValidatorMessage

MAX_ERROR_TEXT: Final = 10_000

# Frames up to this size (characters of a text frame, bytes of a binary one) are decoded without
# looking at them first: even one made only of tiny JSON values (`[[],[],...]`) decodes to ~1.5 MB.
MAX_SMALL_FRAME: Final = 64 * 1024
# A manifest of `MAX_MANIFEST_ENTRIES` entries written compactly is ~4 KB (~6 KB pretty-printed).
MAX_MANIFEST_FRAME: Final = 16 * 1024
# A job's final answer carries the job's stdout and stderr, which the protocol does not bound: the
# transport's own frame cap (`TransportSettings.max_size`, 50 MiB) is the limit.
MAX_JOB_RESULT_FRAME: Final = 50 * 2**20
# Everything else (accept, decline, ready, executor failed, machine specs, errors) is a few hundred
# bytes; machine specs, the largest, are a few KB of nvidia-smi and /proc facts.
MAX_OTHER_FRAME: Final = 256 * 1024
FRAME_LIMITS: Final[dict[str, int]] = {
    "V0ExecutorManifestRequest": MAX_MANIFEST_FRAME,
    "V0JobFinishedRequest": MAX_JOB_RESULT_FRAME,
    "V0JobFailedRequest": MAX_JOB_RESULT_FRAME,
    "V0AcceptJobRequest": MAX_OTHER_FRAME,
    "V0DeclineJobRequest": MAX_OTHER_FRAME,
    "V0ExecutorReadyRequest": MAX_OTHER_FRAME,
    "V0ExecutorFailedRequest": MAX_OTHER_FRAME,
    "V0MachineSpecsRequest": MAX_OTHER_FRAME,
    "GenericError": MAX_OTHER_FRAME,
    "UnauthorizedError": MAX_OTHER_FRAME,
}
# JSON tokens (strings, brackets, colons, commas) a frame above `MAX_SMALL_FRAME` may hold. A real
# large frame is a final answer (~12 tokens, its bulk in two strings) or machine specs (a few
# hundred); 10,000 tokens decode to well under 1 MB of objects whatever the frame's size.
MAX_LARGE_FRAME_TOKENS: Final = 10_000

# Where the next JSON token starts: a structural character or a string's opening quote. Strings
# are then skipped with the decoder's own C string scanner, at json.loads speed.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_TOKEN_START = re.compile(r'[{}\[\]:,"]')
# Longest string value taken as a message type name (the longest real one has 25 characters).
_MAX_TYPE_NAME: Final = 64

_MINER_ADAPTER: TypeAdapter[MinerMessage] = TypeAdapter(
    Annotated[MinerMessage, Field(discriminator="message_type")]  # type: ignore[arg-type]
)
_VALIDATOR_ADAPTER: TypeAdapter[ValidatorMessage] = TypeAdapter(
    Annotated[ValidatorMessage, Field(discriminator="message_type")]  # type: ignore[arg-type]
)


class ProtocolError(ValueError):
    """An invalid frame. `text` is what goes after "Malformed message ...: " in the GenericError reply."""

    def __init__(self, text: str, message_type: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        # The frame's `message_type` where it could be read (a too-large or invalid manifest, say),
        # so that the session can tell a refused manifest from stray garbage.
        self.message_type = message_type


def _truncate(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT] + " ... (truncated)"


def scan_message_type(raw: str, size: int | None = None) -> tuple[str | None, int]:
    """The top-level `message_type` of a frame (the last one, as the decoder keeps the last of a
    repeated key), and the number of JSON tokens seen. Stops after `MAX_LARGE_FRAME_TOKENS` + 1
    tokens, at a type whose `frame_limit` the frame exceeds, or at invalid JSON (the decoder will
    say what is wrong with it). `size`: the frame's length as received (default `len(raw)`).

    A lexer, not a parser: strings are skipped whole (brackets inside them are not structure),
    nesting is tracked, and only keys and values at depth 1 are looked at. One Python step per
    token; string contents cost what the decoder would spend on them.
    """
    size = len(raw) if size is None else size
    depth = 0
    expect_key = key_is_type = awaiting_value = False
    message_type: str | None = None
    tokens = 0
    pos = 0
    while (match := _TOKEN_START.search(raw, pos)) is not None:
        tokens += 1
        if tokens > MAX_LARGE_FRAME_TOKENS:
            break
        start = match.start()
        char = raw[start]
        pos = start + 1
        if char == '"':
            try:
                value, pos = _scanstring(raw, pos)
            except ValueError:
                break
            if depth != 1:
                continue
            if expect_key:
                expect_key = False
                key_is_type = value == "message_type"
            elif awaiting_value:
                awaiting_value = False
                if key_is_type:
                    message_type = value if len(value) <= _MAX_TYPE_NAME else "?"
                    if frame_limit(message_type) < size:
                        break  # too large for this type: a later repeat of the key cannot excuse it
        elif char in "{[":
            if depth == 1:
                awaiting_value = False
            depth += 1
            expect_key = depth == 1
        elif char in "}]":
            depth -= 1
        elif depth == 1:
            if char == ":":
                awaiting_value = True
            else:  # ","
                expect_key, awaiting_value = True, False
    return message_type, tokens


def frame_limit(message_type: str | None) -> int:
    """The largest frame a miner may send with this `message_type` (unknown types: small frames only)."""
    if message_type is None:
        return MAX_SMALL_FRAME
    return FRAME_LIMITS.get(message_type, MAX_SMALL_FRAME)


def _too_large(size: int, message_type: str | None) -> ProtocolError:
    return ProtocolError(
        f"frame of length {size} is too large for {message_type or 'an unknown message type'}"
        f" (limit {frame_limit(message_type)})",
        message_type,
    )


def check_miner_frame(raw: str, size: int | None = None) -> None:
    """Refuse, before decoding, a miner frame larger than its type allows or made of too many JSON
    values. Frames up to `MAX_SMALL_FRAME` pass at no cost (their type is checked after decoding).
    `size`: the frame's length as received (bytes of a binary frame), default `len(raw)`."""
    size = len(raw) if size is None else size
    if size <= MAX_SMALL_FRAME:
        return
    message_type, tokens = scan_message_type(raw, size)
    if size > frame_limit(message_type):
        raise _too_large(size, message_type)
    if tokens > MAX_LARGE_FRAME_TOKENS:
        raise ProtocolError(
            f"frame of length {size} holds more than {MAX_LARGE_FRAME_TOKENS} JSON tokens"
            f" (allowed only up to length {MAX_SMALL_FRAME})"
        )


def _text(frame: bytes) -> str:
    """A binary frame as text, decoded as `json.loads` would (UTF-8, or UTF-16/32 by its BOM)."""
    try:
        return frame.decode(json.detect_encoding(frame), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"Invalid UTF-8: {exc}") from None


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
    return _validate_data(adapter, _load(raw))


def _validate_data(adapter: TypeAdapter[Any], data: Any) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        message_type = data.get("message_type") if isinstance(data, dict) else None
        raise ProtocolError(
            _truncate(exc.json(include_url=False, include_input=False)),
            message_type if isinstance(message_type, str) else None,
        ) from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except Exception as exc:
        raise ProtocolError(_truncate(f"{type(exc).__name__}: {exc}")) from None


def parse_miner_message(raw: str | bytes | bytearray | memoryview) -> MinerMessage:
    """A frame the validator received from a miner, within its type's size (`check_miner_frame`).
    Raises only `ProtocolError`."""
    frame: Any = bytes(raw) if isinstance(raw, bytearray | memoryview) else raw
    size = len(frame) if isinstance(frame, str | bytes) else 0
    if size > MAX_SMALL_FRAME:
        if isinstance(frame, bytes):
            frame = _text(frame)  # once, for the scan and the decoder
        check_miner_frame(frame, size)
    data = _load(frame)
    # The decoded type is the one that counts (the scan before only lexes), and a manifest's limit
    # is below `MAX_SMALL_FRAME`. A frame without a known type gets the decoder's error instead.
    message_type = data.get("message_type") if isinstance(data, dict) else None
    if isinstance(message_type, str) and size > FRAME_LIMITS.get(message_type, size):
        raise _too_large(size, message_type)
    result: MinerMessage = _validate_data(_MINER_ADAPTER, data)
    return result


def parse_validator_message(raw: str | bytes | bytearray | memoryview) -> ValidatorMessage:
    """A frame a miner received from a validator (the miner simulator's side). Raises only `ProtocolError`."""
    result: ValidatorMessage = _validate(_VALIDATOR_ADAPTER, raw)
    return result


def dumps(message: BaseModel) -> str:
    """Compact JSON with every field written, `null` for unset optionals, as the original serialiser."""
    return message.model_dump_json()
