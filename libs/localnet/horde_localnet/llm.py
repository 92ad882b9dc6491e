"""The localnet's stand-ins for the two LLM images: a deterministic prompt generator and solver.

Cross-validation only works because the solver is deterministic: the answer to a prompt depends on
the prompt and the seed alone, never on the other prompts of the file (docs/crossval.md §7.5). The
simulated executors answer with `answer(seed, prompt)`, so a trusted miner and an honest miner give
byte-equal answers, and a test (or another simulator) can compute the expected answer without
running a job. Pure functions, no I/O: used by `horde_localnet.miners.llm_jobs` and by tests.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence

__all__ = [
    "answer",
    "answers_json",
    "generated_prompts",
    "series_text",
    "solve",
    "wrong_answer",
]

# Words the generated prompts are built from; any fixed list does, the prompts only need to look
# like questions, be distinct within a series and carry no surrounding whitespace (the validator
# does not strip lines, the solver does: docs/crossval.md §7.4).
_TOPICS = (
    "photosynthesis",
    "the Roman Empire",
    "prime numbers",
    "volcanoes",
    "jazz music",
    "black holes",
    "the printing press",
    "honey bees",
    "glaciers",
    "chess openings",
    "the immune system",
    "tidal energy",
)
_FORMS = (
    "Explain {topic} to a ten-year-old.",
    "Write one sentence about {topic}.",
    "What is the most surprising fact about {topic}?",
    "Give three keywords describing {topic}.",
)


def answer(seed: int, prompt: str) -> str:
    """The localnet solver's answer: a function of the seed and the (stripped) prompt only."""
    digest = hashlib.sha256(f"{seed}\n{prompt.strip()}".encode()).hexdigest()
    return f"localnet answer {digest[:24]}"


def wrong_answer(seed: int, prompt: str) -> str:
    """What a cheating miner (behaviour `wrong_llm_answers`) answers: plausible, never `answer`."""
    return f"{answer(seed, prompt)} (made up)"


def solve(seed: int, text: str, *, wrong: bool = False) -> dict[str, str]:
    """The solver over one input file: every non-empty line, stripped, maps to its answer."""
    pick = wrong_answer if wrong else answer
    prompts = (line.strip() for line in text.splitlines())
    return {p: pick(seed, p) for p in prompts if p}


def answers_json(answers: Mapping[str, str]) -> bytes:
    """The answers file the solver writes: a JSON object prompt -> answer (UTF-8)."""
    return json.dumps(dict(answers), ensure_ascii=False).encode()


def generated_prompts(series_uuid: uuid.UUID | str, count: int) -> list[str]:
    """The `count` prompts of one series: deterministic from its uuid, distinct, no edge whitespace."""
    tag = str(series_uuid)[:8]
    seed = int.from_bytes(hashlib.sha256(str(series_uuid).encode()).digest()[:4], "big")
    out: list[str] = []
    for i in range(count):
        topic = _TOPICS[(seed + i) % len(_TOPICS)]
        form = _FORMS[(seed // len(_TOPICS) + i) % len(_FORMS)]
        out.append(f"[{tag}-{i + 1}] {form.format(topic=topic)}")
    return out


def series_text(prompts: Sequence[str]) -> str:
    """A series file: one prompt per line, no trailing newline (both `splitlines` and
    `split("\\n")` give exactly the prompts)."""
    return "\n".join(prompts)
