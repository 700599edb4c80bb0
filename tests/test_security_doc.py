"""docs/security.md names a test for each control: every test it names exists (the document cannot rot silently)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def named_tests() -> list[tuple[str, str]]:
    """``(file, test)`` for every ``tests/x.py::test_y`` and ``::test_y`` in the document.

    A bare ``::test_y`` belongs to the file named last before it on its line,
    or else to the first file named on the latest line that named one (a
    table's later rows continue its first row's file).
    """
    found: list[tuple[str, str]] = []
    section: str | None = None
    text = re.sub(r"```.*?```", "", (ROOT / "docs" / "security.md").read_text(), flags=re.S)  # no fenced blocks
    for line in text.splitlines():
        current: str | None = None
        first: str | None = None
        for token in re.findall(r"`([^`]+)`", line):
            m = re.fullmatch(r"(tests/test_\w+\.py)?(?:::(test_\w+))?(?:\[.*\])?", token.strip())
            if not m or not (m.group(1) or m.group(2)):
                continue
            if m.group(1):
                current = m.group(1)
                first = first or current
            if m.group(2):
                owner = current or section
                assert owner is not None, f"{token} names no file"
                found.append((owner, m.group(2)))
        section = first or section
    return found


def test_every_test_named_in_the_security_document_exists() -> None:
    tests = named_tests()
    assert len(tests) > 40
    missing = [f"{f}::{t}" for f, t in tests if not re.search(rf"^def {t}\(", (ROOT / f).read_text(), re.M)]
    assert not missing, "docs/security.md names tests that do not exist: " + ", ".join(missing)
