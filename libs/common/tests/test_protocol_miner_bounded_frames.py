"""Bounded frames of the validator <-> miner protocol: oversized manifests and job outputs are rejected
(docs/miner-protocol.md §1.5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from horde_common.protocol.miner import (
    ExecutorClass,
    ProtocolError,
    V0ExecutorManifestRequest,
    V0JobFinishedRequest,
    parse_miner_message,
)


def _manifest_json(entries: list[dict[str, Any]], **extra: Any) -> str:
    body = {"message_type": "V0ExecutorManifestRequest", "manifest": {"executor_classes": entries}}
    return json.dumps({**body, **extra})


def _finished_json(stdout: str, **extra: Any) -> str:
    return json.dumps(
        {
            "message_type": "V0JobFinishedRequest",
            "job_uuid": "a",
            "docker_process_stdout": stdout,
            "docker_process_stderr": "",
            **extra,
        }
    )


def test_manifest_entries_are_capped() -> None:
    from horde_common.protocol.miner.miner_messages import MAX_MANIFEST_ENTRIES

    entry = {"executor_class": "always_on.gpu-24gb", "count": 1}
    ok = parse_miner_message(_manifest_json([entry] * MAX_MANIFEST_ENTRIES))
    assert isinstance(ok, V0ExecutorManifestRequest)
    assert ok.manifest.executor_counts() == {ExecutorClass.ALWAYS_ON_GPU_24GB: MAX_MANIFEST_ENTRIES}
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(_manifest_json([entry] * (MAX_MANIFEST_ENTRIES + 1)))
    assert "too_long" in info.value.text


def test_a_manifest_of_100000_entries_is_refused_before_decoding() -> None:
    import time
    import tracemalloc

    raw = _manifest_json([{"executor_class": "always_on.gpu-24gb", "count": 1}] * 100_000)
    for frame in (raw, raw.encode()):
        tracemalloc.start()
        started = time.process_time()
        try:
            with pytest.raises(ProtocolError) as info:
                parse_miner_message(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "too large for V0ExecutorManifestRequest" in info.value.text
        # Nothing of the 5 MB frame was decoded into objects (a binary frame is only made text).
        assert peak < 1_000_000 + (len(frame) if isinstance(frame, bytes) else 0)
        assert time.process_time() - started < 0.5


def test_frame_limits_follow_the_message_type() -> None:
    from horde_common.protocol.miner.parsing import MAX_MANIFEST_FRAME, MAX_OTHER_FRAME

    # A manifest padded past its limit (here with an ignored field), below the small-frame size too.
    padded = _manifest_json([{"executor_class": 0, "count": 1}], pad="x" * MAX_MANIFEST_FRAME)
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(padded)
    assert "too large for V0ExecutorManifestRequest" in info.value.text
    # A job's final answer may carry megabytes of output.
    big = parse_miner_message(_finished_json("y" * 3_000_000))
    assert isinstance(big, V0JobFinishedRequest) and len(big.docker_process_stdout) == 3_000_000
    # Any other message is small.
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(
            json.dumps({"message_type": "V0AcceptJobRequest", "job_uuid": "a", "pad": "z" * MAX_OTHER_FRAME})
        )
    assert "too large for V0AcceptJobRequest" in info.value.text


def test_a_large_frame_must_be_made_of_strings() -> None:
    # A final answer whose bulk is 100,000 tiny JSON values would decode to far more than its size.
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(_finished_json("", junk=[[]] * 100_000))
    assert "JSON tokens" in info.value.text
    # Braces and quotes inside a string are not structure.
    ok = parse_miner_message(_finished_json('{"a": [1, 2]}, ' * 20_000))
    assert isinstance(ok, V0JobFinishedRequest)


def test_a_decoy_message_type_does_not_buy_a_larger_limit() -> None:
    # The decoder keeps the last of repeated keys and decodes escapes in them: so does the size check.
    entries = [{"executor_class": "always_on.gpu-24gb", "count": 1}] * 5_000
    body = json.dumps({"executor_classes": entries})
    for spelled in ('"message_type"', '"message\\u005ftype"'):
        raw = (
            '{"message_type": "V0JobFinishedRequest", "nested": {"message_type": "V0JobFailedRequest"}, '
            f'{spelled}: "V0ExecutorManifestRequest", "manifest": {body}}}'
        )
        with pytest.raises(ProtocolError) as info:
            parse_miner_message(raw)
        assert "too large for V0ExecutorManifestRequest" in info.value.text
