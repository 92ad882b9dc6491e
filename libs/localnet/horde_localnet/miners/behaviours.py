"""How a simulated miner behaves: honest, or one of the failure modes the validator must survive."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Behaviour(StrEnum):
    HONEST = "honest"
    """Accept, spin up (fleet `spin_up_delay`), crack the job for real, answer (a job that is not
    hashcat nor LLM is described, not run: `generic`)."""
    INSTANT = "instant"
    """Honest with no simulated delay at all: for benchmarks (cracking localnet jobs takes ~1 ms)."""
    SLOW = "slow"
    """Honest, but the final response is held back `delay` seconds (default 60: past the 53 s limit)."""
    DECLINE = "decline"
    """Declines every initial job request."""
    EXECUTOR_FAIL = "executor_fail"
    """Accepts, then reports `V0ExecutorFailedRequest`."""
    JOB_FAIL = "job_fail"
    """Runs the job but reports `V0JobFailedRequest` (exit status 1)."""
    WRONG_ANSWER = "wrong_answer"
    """Finishes with a plausible but wrong stdout."""
    TIMEOUT = "timeout"
    """Accepts and gets ready, then never answers the job request."""
    GARBAGE = "garbage"
    """Honest, but sends invalid frames (bad JSON, unknown types, missing fields, unknown jobs) around
    every real message."""
    DISCONNECT = "disconnect"
    """Drops the connection (TCP abort) when a job request arrives; the job still runs. Its outcome
    reaches the validator's next connection as `ReconnectMode` says: pushed as soon as the job ends
    (`real`, even before authentication), or after re-authentication (`legacy`, and in both modes
    when the job ended while no connection was open; docs/miner-protocol.md §1.6 step 5)."""
    WRONG_LLM_ANSWERS = "wrong_llm_answers"
    """Honest, except that LLM solver jobs upload answers that differ from `horde_localnet.llm.answer`
    (`llm.wrong_answer`): the job finishes, the answers file is there, cross-validation must fail it."""
    UNKNOWN_VALIDATOR = "unknown_validator"
    """Treats every validator as unknown: `GenericError "Unknown validator: ..."`, close 1000."""


class ReconnectMode(StrEnum):
    """What a new connection of a validator gets for that validator's jobs that are still going on."""

    REAL = "real"
    """As the November 2024 miner (compute-horde 0.0.18) does: as soon as the connection opens,
    before any authentication, it joins the validator's unfinished jobs; from then on their
    executor-ready, machine-specs and final messages are pushed on it as they happen, with no
    authentication check. Only what happened while no connection was listening waits for the
    authentication: outcomes not yet delivered, and the ready of jobs waiting for their payload.
    Accept/decline go on the connection that carried the initial request. The default, so that the
    validator is tested against what real miners do."""
    LEGACY = "legacy"
    """The simulator's earlier behaviour: every job message goes to the validator's latest
    authenticated connection only, so a reconnect hears nothing until it re-authenticates."""


DEFAULT_RECONNECT_MODE = ReconnectMode.REAL

DEFAULT_SLOW_DELAY = 60.0


@dataclass(frozen=True, slots=True)
class BehaviourSpec:
    """A behaviour with its parameter (`delay` for `slow`, seconds)."""

    kind: Behaviour = Behaviour.HONEST
    delay: float | None = None

    @property
    def final_delay(self) -> float:
        if self.kind is Behaviour.SLOW:
            return DEFAULT_SLOW_DELAY if self.delay is None else self.delay
        return 0.0

    @classmethod
    def parse(cls, value: BehaviourSpec | Behaviour | str) -> BehaviourSpec:
        """`"slow"`, `"slow:5"`, a `Behaviour` or a spec."""
        if isinstance(value, BehaviourSpec):
            return value
        if isinstance(value, Behaviour):
            return cls(value)
        name, _, delay = str(value).partition(":")
        try:
            kind = Behaviour(name.strip())
        except ValueError:
            known = ", ".join(b.value for b in Behaviour)
            raise ValueError(f"unknown miner behaviour {name!r} (known: {known})") from None
        try:
            return cls(kind, float(delay) if delay else None)
        except ValueError:
            raise ValueError(f"bad delay in miner behaviour {value!r}") from None

    def __str__(self) -> str:
        return self.kind.value if self.delay is None else f"{self.kind.value}:{self.delay:g}"
