"""Nothing in the repository cites a file outside it, and every `docs/<file>.md` it cites exists.

The code was written against notes kept next to the repository; a reader of a clone has only the
clone, so a comment pointing at `../shared`, a lettered spec section or a document that is not in
`docs/` sends them nowhere. Checked over every tracked (or new, not ignored) text file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = frozenset({".py", ".md", ".toml", ".yml", ".yaml", ".sh", ".txt"})
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

# Each pattern is a citation of something that lives outside the repository. Case-sensitive on
# purpose: `docs/architecture.md` is the repository's document, `ARCHITECTURE.md` is not.
OUTSIDE_REFERENCES: dict[str, re.Pattern[str]] = {
    "../shared": re.compile(r"\.\./shared"),
    "shared/spec": re.compile(r"shared/spec"),
    "a lettered spec section": re.compile(r"\b(?i:spec) [ABC]\b"),
    "a numbered quirk of the brief": re.compile(r"\[quirk \d+\]"),
    "ARCHITECTURE.md": re.compile(r"ARCHITECTURE\.md"),
    "reference-measurements.md": re.compile(r"reference-measurements\.md"),
}
# `docs/x.md` at the repository's root; not `foo/docs/x.md` or a URL's path.
DOCS_CITATION = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)\b")


def repository_text_files() -> list[str]:
    """Tracked files plus new ones git does not ignore, of the kinds that hold prose or comments."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    files: set[str] = set()
    for name in listed:
        path = Path(name)
        if name.startswith(".venv/") or name == THIS_FILE or not (REPO / path).is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name.startswith("Dockerfile"):
            files.add(name)
    return sorted(files)


def offenders() -> tuple[list[str], list[str]]:
    """(`file:line: what` for outside references, `file:line: docs/x.md` for missing documents)."""
    outside: list[str] = []
    missing: list[str] = []
    for name in repository_text_files():
        text = (REPO / name).read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            outside.extend(
                f"{name}:{number}: {what}"
                for what, pattern in OUTSIDE_REFERENCES.items()
                if pattern.search(line)
            )
            missing.extend(
                f"{name}:{number}: docs/{doc}"
                for doc in DOCS_CITATION.findall(line)
                if not (REPO / "docs" / doc).is_file()
            )
    return outside, missing


def test_the_scan_covers_code_docs_and_config() -> None:
    files = repository_text_files()
    assert "pyproject.toml" in files and "README.md" in files
    assert any(f.startswith("libs/") and f.endswith(".py") for f in files)
    assert not any(f.startswith(".venv/") for f in files)


def test_the_patterns_are_case_sensitive() -> None:
    def hits(line: str) -> list[str]:
        return [what for what, pattern in OUTSIDE_REFERENCES.items() if pattern.search(line)]

    assert hits("see docs/architecture.md") == []
    assert hits("see ARCHITECTURE.md §3") == ["ARCHITECTURE.md"]
    assert hits("as in spec B §4.2, from ../shared/spec") == [
        "../shared",
        "shared/spec",
        "a lettered spec section",
    ]
    assert DOCS_CITATION.findall("docs/scoring.md and services/x/docs/other.md, https://a.b/docs/c.md") == [
        "scoring.md"
    ]


def test_nothing_cites_a_file_outside_the_repository() -> None:
    outside, _ = offenders()
    assert not outside, "cite docs/ instead of:\n" + "\n".join(outside)


def test_every_cited_docs_file_exists() -> None:
    _, missing = offenders()
    assert not missing, "no such document:\n" + "\n".join(missing)
