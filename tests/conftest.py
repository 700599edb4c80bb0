"""Shared fixtures: synthetic series, an in-process node on an OS-assigned port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from dicomnode.config import Config, load_config
from dicomnode.node import Node
from dicomnode.testing.synthetic import SeriesSpec, write_series
from storage.database import migrate, open_engine
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

    def _start(
        node_toml: str = "", series_toml: str = "quiet_seconds = 30", subdir: str = "node",
        extra_toml: str = "[worker]\nenabled = false\n", web_toml: str = "enabled = false",
    ) -> Node:
        d = tmp_path / subdir
        d.mkdir(exist_ok=True)
        cfg: Config = load_config(write_config(d, node_toml, series_toml, extra_toml, web_toml), environ={})
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


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = open_engine(f"sqlite:///{tmp_path / 'db' / 'test.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        eng = open_engine(url)
        with eng.begin() as conn:  # a clean schema for each test
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away PostgreSQL server (Debian's package) on a private Unix socket."""
    import glob
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; scripts/test.sh should have installed it")
        pytest.skip("PostgreSQL is not installed (scripts/test.sh installs it)")
    pg = Path(bins[-1])
    # Not under pytest's tmp dir: that is private to root and postgres runs as its own user.
    base = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"], check=True, capture_output=True)
    subprocess.run(
        [*run_as, str(pg / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
         f"-k {sock} -c listen_addresses='' -c fsync=off", "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run([*run_as, str(pg / "createdb"), "-h", str(sock), "-U", "postgres", "dicomnode"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@/dicomnode?host={sock}"
    finally:
        subprocess.run([*run_as, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nnU-Net ``nnUNet_*`` tree with a planned, briefly fitted ``Dataset999_Tiny`` model (fold 0), built once.

    Shared by the nnU-Net and TotalSegmentator tests (see ``tests/test_nnunet.py::build_model_root``).
    """
    from tests.test_nnunet import build_model_root

    return build_model_root(tmp_path_factory.mktemp("nnunet"))
