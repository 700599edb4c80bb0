"""Helpers shared by the benchmarks: test data, the output folder, free ports, waiting for peers.

Where benchmarks write
----------------------
By default, data and outputs are cached under ``bench/out`` (ignored by git).
When ``DICOMNODE_BENCH_OUT`` is set they go under that folder instead; with
``--quick`` and no ``DICOMNODE_BENCH_OUT``, under a temporary folder removed
at exit (:func:`use_quick_out`).  Nothing in ``--quick`` mode touches
``bench/out``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dicomnode.testing.synthetic import SeriesSpec, write_series

OUT = Path(__file__).resolve().parent / "out"  # the default output folder (full runs)
OUT_ENV = "DICOMNODE_BENCH_OUT"


def out_dir() -> Path:
    """The folder for cached data and outputs: ``$DICOMNODE_BENCH_OUT`` if set, else ``bench/out``."""
    env = os.environ.get(OUT_ENV)
    return Path(env) if env else OUT


def use_quick_out() -> Path:
    """For ``--quick``: unless ``$DICOMNODE_BENCH_OUT`` is set, point it at a fresh temporary folder.

    The temporary folder is removed when the process exits.  Child processes
    inherit the variable.
    """
    if not os.environ.get(OUT_ENV):
        tmp = tempfile.mkdtemp(prefix="dicomnode-bench-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        os.environ[OUT_ENV] = tmp
    return out_dir()


def ct_series(slices: int = 300, size: int = 512, seed: str = "bench-ct") -> Path:
    """A cached synthetic CT series under ``out_dir()/data``."""
    d = out_dir() / "data" / f"{seed}-{slices}x{size}"
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


def tool(name: str) -> str | None:
    """Path of an external tool (dcmtk's ``storescu``...), or None when it is not installed.

    Python scripts are passed over: pynetdicom installs look-alikes named
    ``storescu``, ``storescp`` and ``echoscu`` next to the interpreter, which
    would otherwise stand in for dcmtk when the virtual environment is active.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(name, path=folder) if folder else None
        if found:
            with open(found, "rb") as f:
                head = f.readline(200)
            if not (head.startswith(b"#!") and b"python" in head):
                return found
    return None


def echo_ok(ae: str, port: int) -> bool:
    env = dict(os.environ, TCP_NODELAY="1")
    echoscu = tool("echoscu") or "echoscu"
    return subprocess.run([echoscu, "-aec", ae, "127.0.0.1", str(port)], capture_output=True, env=env).returncode == 0


def _has_section(toml: str, name: str) -> bool:
    return re.search(rf"^\s*\[{re.escape(name)}\]", toml, re.MULTILINE) is not None


def node_config(workdir: Path, node_toml: str = "", extra_toml: str = "") -> str:
    """The text of a benchmark node's configuration (see :func:`start_node`)."""
    defaults = "" if re.search(r"^\s*min_free_mb\s*=", node_toml, re.MULTILINE) else "min_free_mb = 100\n"
    sections = "".join(f"[{s}]\nenabled = false\n" for s in ("worker", "web") if not _has_section(extra_toml, s))
    series = "" if _has_section(extra_toml, "series") else "[series]\nquiet_seconds = 30\n"
    return (
        "[node]\n"
        "port = 0\n"
        f'storage_dir = "{workdir / "storage"}"\n'
        f'database_url = "sqlite:///{workdir / "storage" / "dicomnode.db"}"\n'
        f"{defaults}{node_toml}\n"
        f"{series}{sections}{extra_toml}\n"
    )


def start_node(workdir: Path, node_toml: str = "", extra_toml: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """Start ``dicomnode serve`` on a free port with its storage under ``workdir``.

    ``node_toml`` is keys of the ``[node]`` section (e.g. ``sqlite_synchronous = "NORMAL"``);
    ``extra_toml`` is whole sections (``[worker]``, ``[[destinations]]``, ...).
    Unless ``extra_toml`` has ``[worker]`` or ``[web]`` sections, the node
    runs no jobs and no web page (the ingest benchmark measures receiving only).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "node.toml"
    cfg.write_text(node_config(workdir, node_toml, extra_toml))
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    log = workdir / "node.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "--config", str(cfg), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 60, "the node to listen")
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise
    if not ready.exists():
        raise RuntimeError(f"the node exited with status {proc.wait()}:\n{log.read_text()[-2000:]}")
    return proc, int(json.loads(ready.read_text())["port"])
