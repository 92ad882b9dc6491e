"""Byte-level checks of the signed blobs and signatures against docs/miner-protocol.md §1.6–§1.7."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from horde_common.config import ConfigError, load_settings
from horde_common.crypto import (
    canonical_json,
    keypair_from_seed,
    receipt_payload_json,
    sign,
    verify,
    wire_datetime,
)
from horde_common.protocol.miner import ExecutorClass, JobStartedReceiptPayload
from horde_common.wallet import load_hotkey

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
DEV_PHRASE = "bottom drive obey lake curtain smoke basket hold race lonely fit walk"

AUTH_BLOB = '{"miner_hotkey": "5FminerSS58...", "timestamp": 1732795200, "validator_hotkey": "5GvaliSS58..."}'
JOB_STARTED_BLOB = (
    '{"executor_class": "spin_up-4min.gpu-24gb", "is_organic": false, '
    '"job_uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "max_timeout": 53, "miner_hotkey": "5MINER", '
    '"receipt_type": "JobStartedReceipt", "timestamp": "2024-11-20T12:00:00.120000Z", "ttl": 240, '
    '"validator_hotkey": "5VALI"}'
)

# Signed with py-sr25519-bindings 0.2.4 (the library behind November-2024 miners) from the
# mini-secret bytes 0..31, over AUTH_BLOB: proves our verifier accepts what miners' keys produce.
INDEPENDENT_SEED = bytes(range(32))
INDEPENDENT_SS58 = "5HB7kpn92RS7uF9uWn8bXSvPVKFPg8kPUFDd5sbveGjX6Dbi"
INDEPENDENT_SIG = (
    "0xa29c6d6aaebda44949389611607b0bfb65a555e8fd75d75d26139d1b9f4ca818"
    "57253821df43c3024b0ad42fc8c8670f0149790a848f9d53034e3d17437fc98f"
)


@pytest.fixture(scope="module")
def alice():  # type: ignore[no-untyped-def]
    return keypair_from_seed("//Alice")


def test_auth_blob_is_the_spec_example() -> None:
    payload = {"validator_hotkey": "5GvaliSS58...", "miner_hotkey": "5FminerSS58...", "timestamp": 1732795200}
    assert canonical_json(payload) == AUTH_BLOB


def test_job_started_blob_is_the_spec_example() -> None:
    payload = JobStartedReceiptPayload(
        job_uuid="3fa85f64-5717-4562-b3fc-2c963f66afa6",
        miner_hotkey="5MINER",
        validator_hotkey="5VALI",
        timestamp=datetime(2024, 11, 20, 12, 0, 0, 120000, tzinfo=UTC),
        executor_class=ExecutorClass.SPIN_UP_4MIN_GPU_24GB,
        max_timeout=53,
        is_organic=False,
        ttl=240,
    )
    assert canonical_json(receipt_payload_json(payload)) == JOB_STARTED_BLOB
    assert payload.blob_for_signing() == JOB_STARTED_BLOB


def test_canonical_json_escapes_non_ascii_and_uses_default_separators() -> None:
    assert (
        canonical_json({"b": [1, True, None], "a": "é☃"}) == '{"a": "\\u00e9\\u2603", "b": [1, true, null]}'
    )
    assert not canonical_json({"a": 1}).endswith("\n")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2024, 11, 20, 12, 0, 0, tzinfo=UTC), "2024-11-20T12:00:00Z"),
        (datetime(2024, 11, 20, 12, 0, 0, 120000, tzinfo=UTC), "2024-11-20T12:00:00.120000Z"),
        (datetime(2024, 11, 28, 10, 0, 1, 503211, tzinfo=UTC), "2024-11-28T10:00:01.503211Z"),
        (
            datetime(2024, 11, 20, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
            "2024-11-20T12:00:00.000001+02:00",
        ),
        (datetime(2024, 11, 20, 12, 0, 0), "2024-11-20T12:00:00"),
    ],
)
def test_wire_datetime_matches_pydantic_and_the_spec(value: datetime, text: str) -> None:
    from pydantic import TypeAdapter

    assert wire_datetime(value) == text
    assert TypeAdapter(datetime).dump_python(value, mode="json") == text


def test_keypair_from_seed_accepts_uri_mnemonic_and_hex() -> None:
    assert keypair_from_seed("//Alice").ss58_address == ALICE
    assert keypair_from_seed(f"{DEV_PHRASE}//Alice").ss58_address == ALICE
    root = keypair_from_seed(DEV_PHRASE).ss58_address
    assert root != ALICE
    assert keypair_from_seed(INDEPENDENT_SEED).ss58_address == INDEPENDENT_SS58
    assert keypair_from_seed("0x" + INDEPENDENT_SEED.hex()).ss58_address == INDEPENDENT_SS58
    assert keypair_from_seed(INDEPENDENT_SEED.hex()).ss58_address == INDEPENDENT_SS58


@pytest.mark.parametrize("bad", ["", "   ", "not a mnemonic at all", "0x1234", b"short"])
def test_keypair_from_seed_rejects_garbage_without_echoing_it(bad: str | bytes) -> None:
    with pytest.raises(ValueError) as info:
        keypair_from_seed(bad)
    if isinstance(bad, str) and bad.strip():
        assert bad not in str(info.value)


def test_sign_verify_round_trip(alice) -> None:  # type: ignore[no-untyped-def]
    signature = sign(alice, AUTH_BLOB)
    assert signature.startswith("0x")
    assert len(signature) == 2 + 128
    assert signature == signature.lower()
    assert verify(ALICE, AUTH_BLOB, signature)
    assert verify(ALICE, AUTH_BLOB.encode(), signature)
    assert verify(ALICE, AUTH_BLOB, bytes.fromhex(signature[2:]))
    # sr25519 is randomized: never compare signatures, only verify them.
    assert sign(alice, AUTH_BLOB) != signature


def test_signature_is_over_the_raw_bytes_not_a_bytes_wrapper(alice) -> None:  # type: ignore[no-untyped-def]
    signature = sign(alice, AUTH_BLOB)
    assert not verify(ALICE, f"<Bytes>{AUTH_BLOB}</Bytes>", signature)


def test_verifies_a_signature_made_by_the_miners_library() -> None:
    assert verify(INDEPENDENT_SS58, AUTH_BLOB, INDEPENDENT_SIG)
    assert not verify(ALICE, AUTH_BLOB, INDEPENDENT_SIG)


def test_tampering_fails(alice) -> None:  # type: ignore[no-untyped-def]
    signature = sign(alice, JOB_STARTED_BLOB)
    assert not verify(ALICE, JOB_STARTED_BLOB.replace('"ttl": 240', '"ttl": 241'), signature)
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert not verify(ALICE, JOB_STARTED_BLOB, flipped)
    assert not verify(keypair_from_seed("//Bob").ss58_address, JOB_STARTED_BLOB, signature)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "0x",
        "0xzz",
        "garbage",
        "0x" + "00" * 64,
        "0x" + "ab" * 63,
        "0x" + "ab" * 65,
        b"",
        b"\x00" * 64,
        None,
        42,
    ],
)
def test_garbage_signature_is_false(signature) -> None:  # type: ignore[no-untyped-def]
    assert verify(ALICE, AUTH_BLOB, signature) is False


@pytest.mark.parametrize("address", ["", "garbage", "5" * 48, None])
def test_garbage_address_is_false(alice, address) -> None:  # type: ignore[no-untyped-def]
    assert verify(address, AUTH_BLOB, sign(alice, AUTH_BLOB)) is False


def test_load_hotkey_prefers_seed(tmp_path: Path) -> None:
    settings = load_settings(HOTKEY_SEED=SecretStr("//Alice"), BITTENSOR_WALLET_DIRECTORY=str(tmp_path))
    assert load_hotkey(settings).ss58_address == ALICE


def test_load_hotkey_bad_seed_is_a_config_error_without_the_secret() -> None:
    settings = load_settings(HOTKEY_SEED=SecretStr("definitely not a seed"))
    with pytest.raises(ConfigError) as info:
        load_hotkey(settings)
    assert "HOTKEY_SEED" in str(info.value)
    assert "definitely" not in str(info.value)


def _wallet_settings(directory: Path, name: str, hotkey: str):  # type: ignore[no-untyped-def]
    return load_settings(
        HOTKEY_SEED=None,
        BITTENSOR_WALLET_DIRECTORY=str(directory),
        BITTENSOR_WALLET_NAME=name,
        BITTENSOR_WALLET_HOTKEY_NAME=hotkey,
    )


def test_load_hotkey_from_wallet_folder(tmp_path: Path) -> None:
    from bittensor.wallet import Wallet

    Wallet(name="vali", hotkey="hk", path=str(tmp_path)).regenerate_hotkey(
        seed=INDEPENDENT_SEED, use_password=False, suppress=True
    )
    keypair = load_hotkey(_wallet_settings(tmp_path, "vali", "hk"))
    assert keypair.ss58_address == INDEPENDENT_SS58
    assert verify(INDEPENDENT_SS58, "x", sign(keypair, "x"))


def test_load_hotkey_missing_file_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_hotkey(_wallet_settings(tmp_path, "nope", "hk"))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nope" / "hotkeys" / "hk") in message


def test_load_hotkey_refuses_an_encrypted_hotkey_instead_of_prompting(tmp_path: Path) -> None:
    from bittensor.wallet import Wallet

    Wallet(name="vali", hotkey="hk", path=str(tmp_path)).regenerate_hotkey(
        seed=INDEPENDENT_SEED, hotkey_password="correct horse", suppress=True
    )
    with pytest.raises(ConfigError, match="encrypted"):
        load_hotkey(_wallet_settings(tmp_path, "vali", "hk"))
