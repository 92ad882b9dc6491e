"""The passwords of a hashcat job and their hash list (split from `hashcat.py` to keep it small).

Pure functions, no I/O: a production job draws and hashes 300 passwords, so both loops run in C
(`map`, `zip`, column slicing) rather than per password in Python.
"""

from __future__ import annotations

import itertools
import operator
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import random_chars

__all__ = ["ALPHANUMERIC", "DIGITS", "HashParams", "random_passwords", "salted_hash_list"]

ALPHANUMERIC = string.ascii_letters + string.digits
"""Characters of the "letters" positions: all 62 alphanumerics (hashcat charset `?l?d?u`)."""
DIGITS = string.digits


@dataclass(frozen=True, slots=True)
class HashParams:
    """One hashcat job's size: its time budget, password shape and how many hashes to crack.

    Lives with the password code that reads it (and `hashcat` imports it), so neither module needs
    the other for its types.
    """

    timeout: int
    num_letters: int
    num_digits: int
    num_hashes: int

    @property
    def password_length(self) -> int:
        return self.num_letters + self.num_digits

    @property
    def keyspace(self) -> int:
        return len(ALPHANUMERIC) ** self.num_letters * len(DIGITS) ** self.num_digits


_HEXDIGEST = operator.methodcaller("hexdigest")


def random_passwords(rng: random.Random, params: HashParams) -> list[str]:
    """`num_hashes` distinct passwords (letters then digits), sorted.

    Built column by column (`chars[k::length]` is position k of every password) and zipped back
    together, so the per-password work runs in C: this runs 300 times per production job.
    """
    if params.num_hashes > params.keyspace:
        raise ValueError(f"cannot draw {params.num_hashes} distinct passwords from {params}")
    letters, digits = params.num_letters, params.num_digits
    found: set[str] = set()
    while len(found) < params.num_hashes:
        need = params.num_hashes - len(found)
        letter_chars = random_chars(rng, ALPHANUMERIC, need * letters)
        digit_chars = random_chars(rng, DIGITS, need * digits)
        columns = [letter_chars[k::letters] for k in range(letters)]
        columns += [digit_chars[k::digits] for k in range(digits)]
        found.update(map("".join, zip(*columns, strict=True)))
    return sorted(found)


def salted_hash_list(hasher: Callable[[bytes], Any], salt: bytes, passwords: list[str]) -> str:
    """The hashcat input: one `"{hash_hex}:{salt_hex}"` line per password (`hasher`: a SHA-2
    constructor, see `hashcat_crypto.hashers`).

    `map` over C callables keeps the loop out of the interpreter (300 hashes per production job).
    """
    suffix = ":" + salt.hex()
    salted = map(bytes.__add__, map(str.encode, passwords), itertools.repeat(salt))
    digests = map(_HEXDIGEST, map(hasher, salted))
    return (suffix + "\n").join(digests) + suffix
