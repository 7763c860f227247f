"""The fenced code blocks of README.md and docs/*.md, and how a test claims one.

A block that a test runs is preceded by the line ``<!-- run: NAME -->``; the test fetches it with
``block("docs/quickstart.md", "NAME")`` (the page relative to the repository root, the name as a
literal: tests/docs/test_docs.py finds the claims by reading the tests' source). Any other bash,
sh or python block is preceded by ``<!-- not run: REASON -->``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED_LANGUAGES = ("bash", "sh", "python")
RUN = re.compile(r"<!-- run: ([A-Za-z0-9_.-]+) -->")
NOT_RUN = re.compile(r"<!-- not run: (\S.*?) -->")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
CLAIM = re.compile(r"""\bblock\(\s*["']([^"']+)["']\s*,\s*["']([^"']+)["']\s*\)""")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str  # the line right above the fence

    @property
    def run_name(self) -> str | None:
        match = RUN.fullmatch(self.marker.strip())
        return match.group(1) if match else None

    @property
    def not_run_reason(self) -> str | None:
        match = NOT_RUN.fullmatch(self.marker.strip())
        return match.group(1) if match else None


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks_of(path: Path, root: Path = ROOT) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1] if line > 1 else ""
        if text[: match.start()].endswith("\n\n"):
            above = ""  # a blank line between: the marker is not immediately before
        page = path.relative_to(root).as_posix()
        found.append(Block(page, line, match.group(1), match.group(2), above))
    return found


def block(page: str, name: str) -> str:
    """The code of the block marked ``<!-- run: NAME -->`` on ``page``."""
    named = [b for b in blocks_of(ROOT / page) if b.run_name == name]
    assert len(named) == 1, f"{page}: expected one block marked 'run: {name}', found {len(named)}"
    return named[0].code


def claims(tests: Path = ROOT / "tests") -> set[tuple[str, str]]:
    """(page, name) of every block some test fetches with ``block(...)``."""
    return {
        match.groups()
        for source in tests.rglob("*.py")
        for match in CLAIM.finditer(source.read_text())
        if source.name != "markdown_blocks.py"
    }
