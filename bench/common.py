"""Helpers shared by the benchmarks: test data, free ports, waiting for peers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dicomnode.testing.synthetic import SeriesSpec, write_series

OUT = Path(__file__).resolve().parent / "out"


def ct_series(slices: int = 300, size: int = 512, seed: str = "bench-ct") -> Path:
    """A cached synthetic CT series under ``bench/out/data``."""
    d = OUT / "data" / f"{seed}-{slices}x{size}"
    if len(list(d.glob("*.dcm"))) != slices:
        print(f"writing {slices} slices of {size}x{size} to {d} ...", file=sys.stderr)
        write_series(SeriesSpec(slices=slices, rows=size, columns=size, seed=seed), d)
    return d


def free_port() -> int:
    """A TCP port that was free a moment ago (benchmarks only; tests use port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true, or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def echo_ok(ae: str, port: int) -> bool:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(["echoscu", "-aec", ae, "127.0.0.1", str(port)], capture_output=True, env=env).returncode == 0


def start_node(workdir: Path, extra_toml: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """Start ``dicomnode serve`` on a free port with its storage under ``workdir``.

    Unless ``extra_toml`` has ``[worker]`` or ``[web]`` sections, the node
    runs no jobs and no web page (the ingest benchmark measures receiving only).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for section in ("[worker]", "[web]"):
        if section not in extra_toml:
            extra_toml = f"{section}\nenabled = false\n" + extra_toml
    cfg = workdir / "node.toml"
    cfg.write_text(
        f"""
[node]
port = 0
storage_dir = "{workdir / 'storage'}"
database_url = "sqlite:///{workdir / 'storage' / 'dicomnode.db'}"
min_free_mb = 100
{extra_toml}
[series]
quiet_seconds = 30
"""
    )
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "serve", "--config", str(cfg), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "node.log", "wb"),
    )
    wait_for(ready.exists, 60, "the node to listen")
    return proc, int(json.loads(ready.read_text())["port"])
