"""Shared fixtures: synthetic series, an in-process node on an OS-assigned port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.config import Config, load_config
from dicomnode.node import Node
from dicomnode.synthetic import SeriesSpec, write_series
from storage.models import Job, Series
from tests.helpers import wait_for, write_config


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write a synthetic CT series into ``tmp_path/series-<seed>``."""

    def _make(seed: str = "s1", **kwargs: object) -> list[Path]:
        spec = SeriesSpec(seed=seed, **kwargs)  # type: ignore[arg-type]
        return write_series(spec, tmp_path / f"series-{seed}")

    return _make


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start in-process nodes (port 0); all are stopped at teardown."""
    nodes: list[Node] = []

    def _start(node_toml: str = "", series_toml: str = "quiet_seconds = 30", subdir: str = "node") -> Node:
        d = tmp_path / subdir
        d.mkdir(exist_ok=True)
        cfg: Config = load_config(write_config(d, node_toml, series_toml), environ={})
        n = Node(cfg)
        port = n.start()
        n.cfg = replace(cfg, node=replace(cfg.node, port=port))
        nodes.append(n)
        return n

    yield _start
    for n in nodes:
        n.stop()


def jobs_of(node: Node) -> list[Job]:
    """All jobs in the node's database, oldest first."""
    from sqlalchemy.orm import Session

    with Session(node.engine) as s:
        jobs = list(s.scalars(select(Job).order_by(Job.id)))
        s.expunge_all()
        return jobs


def series_of(node: Node) -> list[Series]:
    """All series rows."""
    from sqlalchemy.orm import Session

    with Session(node.engine) as s:
        rows = list(s.scalars(select(Series).order_by(Series.id)))
        s.expunge_all()
        return rows


def wait_for_jobs(node: Node, n: int, timeout: float = 20.0) -> list[Job]:
    """Wait until the node has queued at least ``n`` jobs."""
    def enough() -> list[Job] | None:
        jobs = jobs_of(node)
        return jobs if len(jobs) >= n else None

    return wait_for(enough, timeout, what=f"{n} job(s)")
