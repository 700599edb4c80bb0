"""The quality bench's case cache: a case is read back only while the generator that made it is unchanged."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import model_quality


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throwaway generator package ``fakegen`` on the path, and the bench's output folder in ``tmp_path``."""
    root = tmp_path / "src" / "fakegen"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setenv("DICOMNODE_BENCH_OUT", str(tmp_path / "out"))
    model_quality._source_digest.cache_clear()
    yield root
    sys.modules.pop("fakegen", None)
    model_quality._source_digest.cache_clear()


def test_a_case_is_made_once_and_read_back(package: Path) -> None:
    made: list[int] = []

    def make() -> dict[str, int]:
        made.append(1)
        return {"seed": 3}

    assert model_quality._cached("train", 3, 64, make, "fakegen") == {"seed": 3}
    assert model_quality._cached("train", 3, 64, make, "fakegen") == {"seed": 3}
    assert len(made) == 1


def test_a_changed_generator_makes_the_case_again(package: Path) -> None:
    """Before, the cache was keyed by seed alone: a bench run after a change of the generator scored the old cases."""
    assert model_quality._cached("train", 3, 64, lambda: "old", "fakegen") == "old"
    (package / "shapes.py").write_text("RADIUS = 2\n")
    model_quality._source_digest.cache_clear()  # a new run of the bench
    assert model_quality._cached("train", 3, 64, lambda: "new", "fakegen") == "new"
    assert len(list((Path(model_quality.out_dir()) / "quality-cache").glob("train-3-64-*.pkl"))) == 2
