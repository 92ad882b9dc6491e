"""The byte-level pieces of a hashcat job: SHA-2 constructors, Fernet, the answer, the zip.

Split from `hashcat.py` (which re-exports the public ones); pure functions, no I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import zipfile
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["answer_for", "fernet_encrypt", "fernet_key", "hashers", "single_file_zip_b64"]


def hashers() -> dict[str, Callable[[bytes], Any]]:
    """The SHA-2 constructors for the short password hashes: CPython's built-in ones where present.

    For a 16-byte input they cost about half of OpenSSL's (whose per-call context set-up dominates
    such small inputs), and a production job hashes 300 of them. Same algorithms, same digests.
    """
    try:  # CPython 3.12+
        import _sha2  # type: ignore[import-not-found]

        return {"sha256": _sha2.sha256, "sha384": _sha2.sha384, "sha512": _sha2.sha512}
    except ImportError:
        pass
    try:  # CPython 3.11
        import _sha256  # type: ignore[import-not-found]
        import _sha512  # type: ignore[import-not-found]

        return {"sha256": _sha256.sha256, "sha384": _sha512.sha384, "sha512": _sha512.sha512}
    except ImportError:
        return {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def fernet_key(secret: str) -> bytes:
    """The 44-character Fernet key `urlsafe_b64encode(sha256(secret))`."""
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode("utf-8")).digest())


_AES_BLOCK = 16


def fernet_encrypt(key: bytes, data: bytes, *, iv: bytes, timestamp: int) -> bytes:
    """A standard Fernet token (decryptable by `cryptography.fernet.Fernet`) with a caller-chosen IV.

    Taking the IV and timestamp as arguments keeps generation deterministic under a seeded rng.
    """
    raw = base64.urlsafe_b64decode(key)
    signing_key, encryption_key = raw[:16], raw[16:]
    pad = _AES_BLOCK - len(data) % _AES_BLOCK  # PKCS7, as `padding.PKCS7(128)` without its overhead
    padded = data + bytes((pad,)) * pad
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    body = b"\x80" + timestamp.to_bytes(8, "big") + iv + encryptor.update(padded) + encryptor.finalize()
    return base64.urlsafe_b64encode(body + hmac.digest(signing_key, body, "sha256"))


def answer_for(passwords: list[list[str]]) -> str:
    """`urlsafe_b64(sha256(concatenation of every stage's sorted passwords))`: 44 characters."""
    joined = "".join("".join(stage) for stage in passwords).encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.sha256(joined).digest()).decode("ascii")


def single_file_zip_b64(name: str, contents: bytes) -> str:
    """Base64 (standard alphabet) of a stored (uncompressed) zip holding one file.

    The entry's timestamp is fixed so the archive depends only on its contents.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, contents)
    return base64.b64encode(buf.getvalue()).decode("ascii")
