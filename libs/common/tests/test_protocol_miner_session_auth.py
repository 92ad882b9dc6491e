"""Behaviour tables of the sans-I/O validator-side `MinerSession`: connection, authentication and the
manifest (docs/miner-protocol.md §1.4-§1.8)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from horde_common.crypto import verify
from horde_common.protocol.miner import (
    ExecutorClass,
    IgnoredMessage,
    IgnoreReason,
    MalformedMessage,
    ManifestReceived,
    ManifestRejected,
    MinerSession,
    V0AuthenticateRequest,
    dumps,
)
from testing.miner_session import MANIFEST, MINER, T0, VALIDATOR, at, make_session, only, started


def test_first_frame_is_a_verifiable_authentication() -> None:
    session = make_session()
    (auth,) = session.connected(T0)
    assert isinstance(auth, V0AuthenticateRequest)
    assert auth.payload.validator_hotkey == VALIDATOR.ss58_address
    assert auth.payload.miner_hotkey == MINER
    assert auth.payload.timestamp == int(T0.timestamp())
    wire = json.loads(dumps(auth))
    assert verify(VALIDATOR.ss58_address, json.dumps(wire["payload"], sort_keys=True), wire["signature"])


def test_every_reconnect_re_authenticates_with_a_fresh_timestamp() -> None:
    session = make_session()
    session.connected(T0)
    session.disconnected(at(30))
    assert not session.connected_now
    (auth,) = session.connected(at(45))
    assert isinstance(auth, V0AuthenticateRequest)
    assert auth.payload.timestamp == int(at(45).timestamp())
    assert session.connections == 2 and session.connected_now


def test_url_and_name() -> None:
    session = make_session()
    assert session.url() == f"ws://1.2.3.4:8000/v0.1/validator_interface/{VALIDATOR.ss58_address}"
    assert session.name == f"{MINER}(1.2.3.4:8000)"
    v6 = MinerSession(
        validator_hotkey="5V", sign=lambda b: "0x", miner_hotkey="5M", miner_address="::1", miner_port=9
    )
    assert v6.url() == "ws://[::1]:9/v0.1/validator_interface/5V"


def test_custom_signer_is_used_for_authentication() -> None:
    blobs: list[str] = []

    def signer(blob: str) -> str:
        blobs.append(blob)
        return "0xabc"

    session = MinerSession(
        validator_hotkey="5V", sign=signer, miner_hotkey="5M", miner_address="h", miner_port=1
    )
    (auth,) = session.connected(datetime.fromtimestamp(1732795200, tz=UTC))
    assert isinstance(auth, V0AuthenticateRequest)
    assert blobs == ['{"miner_hotkey": "5M", "timestamp": 1732795200, "validator_hotkey": "5V"}']
    assert auth.signature == "0xabc"


# ------------------------------------------------------------------------------------- manifest


def test_manifest_first_wins() -> None:
    session = started()
    event = only(session.receive(MANIFEST, at(1)).events, ManifestReceived)
    assert event.manifest.executor_counts() == {ExecutorClass.SPIN_UP_4MIN_GPU_24GB: 2}
    assert session.manifest_at == at(1)
    second = MANIFEST.replace('"count": 2', '"count": 50')
    ignored = only(session.receive(second, at(2)).events, IgnoredMessage)
    assert ignored.reason is IgnoreReason.DUPLICATE and ignored.message_type == "V0ExecutorManifestRequest"
    assert session.manifest is not None and session.manifest.total_count == 2


def test_manifest_with_unknown_class_string_is_malformed_and_not_recorded() -> None:
    session = started()
    bad = MANIFEST.replace("spin_up-4min.gpu-24gb", "always_on.gpu-80gb")
    got = session.receive(bad, at(1))
    # The whole manifest is invalid; it is sent once, so the session closes now (the miner's
    # MANIFEST_ERROR) instead of letting the validator wait out the manifest deadline.
    assert [type(e) for e in got.events] == [MalformedMessage, ManifestRejected]
    assert got.close
    assert session.manifest is None
