"""The commit hash (docs/weights.md §5): SCALE encoding, preimage layout and vectors.

The hash vectors were computed once with the November 2024 library's own SCALE encoder and
blake2b call (docs/weights.md §5) on the same inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde_common.chain.commit_hash import (
    commit_hash,
    commit_hash_hex,
    commit_preimage,
    scale_compact,
    scale_u16_vec,
)
from horde_common.crypto import keypair_from_seed

ALICE = bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
VERSION_KEY = 2  # the reference's scoring algorithm version, sent as the weights version key


# ------------------------------------------------------------------------------ SCALE and hash


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "04"),
        (42, "a8"),
        (63, "fc"),
        (64, "0101"),
        (69, "1501"),
        (16383, "fdff"),
        (16384, "02000100"),
        (2**30 - 1, "feffffff"),
        (2**30, "0300000040"),
        (2**32, "070000000001"),
    ],
)
def test_scale_compact(value: int, encoded: str) -> None:
    assert scale_compact(value).hex() == encoded


def test_scale_u16_vec_and_preimage_layout() -> None:
    assert scale_u16_vec([1, 65535]).hex() == "080100ffff"
    preimage = commit_preimage(ALICE, 12, [1, 2], [3, 65535], [7], 2)
    assert preimage == (
        ALICE
        + bytes.fromhex("0c00")  # netuid u16
        + bytes.fromhex("0801000200")  # uids
        + bytes.fromhex("080300ffff")  # values
        + bytes.fromhex("040700")  # salt, before the version key
        + bytes.fromhex("0200000000000000")  # version key u64
    )


@pytest.mark.parametrize(
    ("account", "netuid", "uids", "values", "salt", "version_key", "expected"),
    [
        (
            ALICE,
            12,
            [1, 2, 3, 4],
            [16384, 32768, 49151, 65535],
            [1, 2, 3, 4, 5, 6, 7, 8],
            VERSION_KEY,
            "0x0f103e7ec768320c8e3da38bcf1ec68ea0db28878a7fef942e4118b43cd93dc8",
        ),
        (
            ALICE,
            12,
            list(range(70)),
            [i * 900 for i in range(70)],
            [0, 255, 7, 13, 200, 1, 99, 42],
            VERSION_KEY,
            "0xb5ab60fd02d08b53df1423e258c88dff7b1e48a76970ecfc5ff17ebaa8703fd8",
        ),
        (
            bytes(range(32)),
            12,
            [1, 2, 3, 4],
            [16384, 32768, 49151, 65535],
            [1, 2, 3, 4, 5, 6, 7, 8],
            VERSION_KEY,
            "0xae204859b27ce314fc7ea6866214e03079113bb3c6d3e17c31d06956eed38bc0",
        ),
        (bytes(32), 0, [], [], [], 0, "0x71d89eb3a07cafb9da5952046aa3c44953306c3820d1985221f645302bc8a55b"),
    ],
)
def test_commit_hash_vectors(
    account: bytes,
    netuid: int,
    uids: list[int],
    values: list[int],
    salt: list[int],
    version_key: int,
    expected: str,
) -> None:
    assert commit_hash(account, netuid, uids, values, salt, version_key) == expected


def test_alice_public_key_is_the_hotkey_account() -> None:
    assert bytes(keypair_from_seed("//Alice").public_key) == ALICE


def test_commit_hash_rejects_values_the_chain_cannot_encode() -> None:
    ok: dict[str, object] = dict(account=ALICE, netuid=12, uids=[1], values=[1], salt=[0], version_key=2)
    for change in (
        {"account": ALICE[:31]},
        {"netuid": 65536},
        {"uids": [65536]},
        {"values": [-1]},
        {"values": [1, 2]},
        {"version_key": 2**64},
    ):
        with pytest.raises(ValueError):
            commit_hash(**{**ok, **change})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        commit_hash(ALICE, 12, [1], [1.5], [0], 2)  # type: ignore[list-item]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 65535), max_size=200),
    st.lists(st.integers(0, 255), min_size=8, max_size=8),
    st.integers(0, 65535),
)
def test_preimage_length_and_hash_shape(uids: list[int], salt: list[int], netuid: int) -> None:
    values = list(reversed(uids))
    preimage = commit_preimage(ALICE, netuid, uids, values, salt, VERSION_KEY)
    vec = len(scale_compact(len(uids))) + 2 * len(uids)
    assert len(preimage) == 32 + 2 + 2 * vec + (1 + 16) + 8
    digest = commit_hash(ALICE, netuid, uids, values, salt, VERSION_KEY)
    assert len(digest) == 66 and digest.startswith("0x")


def test_commit_hash_hex_accepts_bytes_and_hex() -> None:
    digest = commit_hash(ALICE, 12, [1], [1], [0], 2)
    raw = bytes.fromhex(digest[2:])
    assert commit_hash_hex(raw) == digest
    assert commit_hash_hex(digest.upper().replace("0X", "0x")) == digest
    assert commit_hash_hex(digest[2:]) == digest
    for bad in (raw[:31], digest + "00", "0xzz", ""):
        with pytest.raises(ValueError):
            commit_hash_hex(bad)
