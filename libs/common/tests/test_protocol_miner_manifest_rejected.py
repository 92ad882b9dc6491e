"""A refused manifest ends the conversation at once (sans-I/O): the miner sends its manifest once,
so an invalid one is the miner's fault now, never a timeout the validator waits out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from horde_common.crypto import keypair_from_seed
from horde_common.protocol.miner import MinerSession
from horde_common.protocol.miner.events import ManifestReceived, ManifestRejected
from horde_common.protocol.miner.miner_messages import MAX_MANIFEST_ENTRIES

VALIDATOR = keypair_from_seed("//horde-validator-0")
MINER = keypair_from_seed("//horde-miner-0").ss58_address
T0 = datetime(2024, 11, 28, 10, 0, 0, tzinfo=UTC)
AO = "always_on.gpu-24gb"


def manifest(entries: list[object]) -> str:
    return json.dumps(
        {"message_type": "V0ExecutorManifestRequest", "manifest": {"executor_classes": entries}}
    )


def session() -> MinerSession:
    s = MinerSession.with_keypair(VALIDATOR, miner_hotkey=MINER, miner_address="1.2.3.4", miner_port=8000)
    s.connected(T0)
    return s


def test_too_many_entries_is_rejected_and_closes() -> None:
    s = session()
    got = s.receive(manifest([{"executor_class": AO, "count": 1}] * (MAX_MANIFEST_ENTRIES + 1)), T0)
    assert got.close
    assert [type(e) for e in got.events if isinstance(e, ManifestRejected)] == [ManifestRejected]
    assert s.manifest is None


def test_oversized_manifest_frame_is_rejected_before_decoding() -> None:
    s = session()
    got = s.receive(manifest([{"executor_class": AO, "count": 1}] * 100_000), T0)
    assert got.close
    (rejected,) = [e for e in got.events if isinstance(e, ManifestRejected)]
    assert "too large for V0ExecutorManifestRequest" in rejected.error


def test_bad_field_in_manifest_is_rejected() -> None:
    got = session().receive(manifest([{"executor_class": AO, "count": "many"}]), T0)
    assert got.close and any(isinstance(e, ManifestRejected) for e in got.events)


def test_garbage_that_is_not_a_manifest_does_not_close() -> None:
    got = session().receive('{"message_type": "V0NoSuchThing"}', T0)
    assert not got.close
    assert not any(isinstance(e, ManifestRejected) for e in got.events)


def test_a_bad_second_manifest_after_a_good_one_does_not_close() -> None:
    s = session()
    first = s.receive(manifest([{"executor_class": AO, "count": 2}]), T0)
    assert any(isinstance(e, ManifestReceived) for e in first.events)
    got = s.receive(manifest([{"executor_class": AO, "count": "x"}]), T0)
    assert not got.close
    assert s.manifest is not None
