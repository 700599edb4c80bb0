"""Test helpers: polling waits, free-standing node processes, dcmtk tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from storage.instances import InstanceRecord

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def require_tool(name: str) -> str:
    """Path of an external tool; skip locally if missing, but fail in CI (which must install it)."""
    venv = os.path.join(os.path.dirname(sys.executable), name)  # console scripts of PyPI tools (dcmqi)
    path = shutil.which(name) or next((p for p in (venv, f"/usr/sbin/{name}") if os.path.exists(p)), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; scripts/test.sh should have installed it")
        pytest.skip(f"{name} is not installed (run scripts/test.sh, which installs it)")
    return path


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools: TCP_NODELAY on (about 27x faster over loopback)."""
    return dict(os.environ, TCP_NODELAY="1")


def storescu(port: int, files: Sequence[Path], *, called: str = "DICOMNODE", calling: str = "STORESCU",
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's storescu against 127.0.0.1:port."""
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, "-aec", called, "-aet", calling, *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
    )


def write_config(
    tmp: Path, node: str = "", series: str = "quiet_seconds = 30", extra: str = "[worker]\nenabled = false\n", web: str = "enabled = false"
) -> Path:
    """A node configuration on port 0 with storage under ``tmp``.

    ``extra`` is appended (more sections); by default the node runs no jobs.
    """
    cfg = tmp / "node.toml"
    defaults = "" if "min_free_mb" in node else "min_free_mb = 10"
    cfg.write_text(
        f"""
[node]
ae_title = "DICOMNODE"
port = 0
host = "127.0.0.1"
storage_dir = "{tmp / 'storage'}"
database_url = "sqlite:///{tmp / 'storage' / 'dicomnode.db'}"
{defaults}
{node}
[series]
{series}
[web]
{web}
{extra}
"""
    )
    return cfg


class NodeProcess:
    """``dicomnode serve`` in a child process (for crash tests and the CLI)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.ready = config.with_suffix(".ready.json")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.web_port: int | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "--config", str(self.config), "--ready-file", str(self.ready)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
        )
        wait_for(lambda: self.ready.exists() or self.proc.poll() is not None, timeout, what="the node to start")  # type: ignore[union-attr]
        if not self.ready.exists():
            pytest.fail(f"node exited early:\n{self.log.read_text()[-3000:]}")
        ready = json.loads(self.ready.read_text())
        self.port = int(ready["port"])
        self.web_port = ready.get("web_port")
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def rec(sop: str, series: str = "1.2.3", crc: int = 1, **kw: object) -> InstanceRecord:
    return InstanceRecord(
        study_uid="1.2",
        series_uid=series,
        sop_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"1.2/{series}/{sop}.dcm",
        size=100,
        crc32=crc,
        assoc_uid="assoc-1",
        **kw,  # type: ignore[arg-type]
    )


def pynetdicom_echo(
    port: int, calling: str = "ECHOSCU", *, timeout: float = 5.0, tls_args: tuple[Any, str] | None = None
) -> bool:
    """A C-ECHO from pynetdicom to the node on 127.0.0.1 (optionally over TLS): whether it succeeded."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and "Status" in status and int(status.Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def store_files(
    port: int, files: Sequence[Path], syntaxes: Sequence[str] = ("1.2.840.10008.1.2.1",), *,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2", calling: str = "TESTSCU", timeout: float = 20.0, as_encoded: bool = False,
) -> list[tuple[int, str | None]]:
    """C-STORE Part 10 files to the node on one association; ``(status, ErrorComment)`` of each, as the SCU sees them.

    ``as_encoded`` sends each file's bytes exactly as encoded (pydicom never
    parses them: for data a parser would refuse or take long over).
    """
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sop_class, list(syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = as_encoded
    out: list[tuple[int, str | None]] = []
    try:
        for f in files:
            rsp = assoc.send_c_store(f)
            assert rsp and "Status" in rsp, "no C-STORE response"
            out.append((int(rsp.Status), rsp.get("ErrorComment")))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()
    return out
