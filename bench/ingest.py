"""Ingest benchmark: one 300-slice 512x512 CT series sent with dcmtk's storescu to three receivers.

Receivers, one after another in the same run:

* dcmtk ``storescp`` (writes files, no fsync, no database): the reference;
* Orthanc from Debian's package (when installed);
* dicomnode, durable: every file fsynced, every row committed with
  SQLite ``synchronous=FULL`` (and, for comparison, ``NORMAL``).

Each is measured with and without ``TCP_NODELAY=1`` in storescu's
environment (dcmtk's sender is slowed by Nagle's algorithm without it).

``--quick`` is a smoke run: 4 slices of 64x64, one run per receiver, with
``TCP_NODELAY`` only (as ``--no-nagle-runs``), data and outputs under a
temporary folder (or ``$DICOMNODE_BENCH_OUT``), never ``bench/out``; the
table has the same columns.

Usage: ``python bench/ingest.py [--slices 300] [--size 512] [--repeat 2] [--no-nagle-runs] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ct_series, echo_ok, free_port, start_node, tool, use_quick_out, wait_for  # noqa: E402


def dcmtk_env(nodelay: bool) -> dict[str, str]:
    """dcmtk (and Orthanc, built on it) read TCP_NODELAY from the environment, on both sides."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def send(series: Path, ae: str, port: int, nodelay: bool) -> float:
    env = dcmtk_env(nodelay)
    files = sorted(str(p) for p in series.glob("*.dcm"))
    t0 = time.perf_counter()
    r = subprocess.run([tool("storescu") or "storescu", "-aec", ae, "127.0.0.1", str(port), *files], capture_output=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"storescu to {ae} failed: {r.stderr.decode()[-500:]}")
    return dt


def bench_storescp(series: Path, nodelay: bool, tmp: Path) -> float:
    out = tmp / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [tool("storescp") or "storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dcmtk_env(nodelay),
    )
    try:
        wait_for(lambda: echo_ok("STORESCP", port), 10, "storescp")
        return send(series, "STORESCP", port, nodelay)
    finally:
        proc.terminate()
        proc.wait()


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc") or None


def bench_orthanc(series: Path, nodelay: bool, tmp: Path) -> float:
    binary = orthanc_binary()
    assert binary
    d = tmp / "orthanc"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    port, http = free_port(), free_port()
    (d / "orthanc.json").write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(d / "db"),
                "IndexDirectory": str(d / "db"),
                "DicomAet": "ORTHANC",
                "DicomPort": port,
                "HttpPort": http,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                "Plugins": [],
            }
        )
    )
    proc = subprocess.Popen(
        [binary, str(d / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env(nodelay)
    )
    try:
        wait_for(lambda: echo_ok("ORTHANC", port), 30, "Orthanc")
        return send(series, "ORTHANC", port, nodelay)
    finally:
        proc.terminate()
        proc.wait()


def bench_node(series: Path, nodelay: bool, tmp: Path, sync: str) -> float:
    d = tmp / f"node-{sync}"
    shutil.rmtree(d, ignore_errors=True)
    proc, port = start_node(d, node_toml=f'sqlite_synchronous = "{sync}"')
    try:
        return send(series, "DICOMNODE", port, nodelay)
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    ap.add_argument("--repeat", type=int, default=2, help="runs per receiver; the best is reported")
    ap.add_argument("--no-nagle-runs", action="store_true", help="skip the runs without TCP_NODELAY")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 slices of 64x64, one run, outputs in a temporary folder")
    args = ap.parse_args()
    if args.quick:
        use_quick_out()
        args.slices, args.size, args.repeat, args.no_nagle_runs = 4, 64, 1, True
    if not tool("storescu") or not tool("echoscu"):
        print("\ndcmtk's storescu or echoscu is not installed: nothing to send with (apt-get install dcmtk)\n")
        print("| receiver | TCP_NODELAY | seconds | images/s | dicomnode (FULL) speed / receiver speed |")
        print("|---|---|---|---|---|")
        print("| dcmtk storescp | - | not measured: dcmtk not installed | - | - |")
        return 0
    series = ct_series(args.slices, args.size)
    mb = sum(p.stat().st_size for p in series.glob("*.dcm")) / 1e6
    receivers: list[tuple[str, object]] = []
    missing: list[str] = []
    if tool("storescp"):
        receivers.append(("dcmtk storescp", bench_storescp))
    else:
        missing.append("dcmtk storescp")
    if orthanc_binary():
        receivers.append(("Orthanc", bench_orthanc))
    else:
        missing.append("Orthanc")
        print("Orthanc not installed: skipped", file=sys.stderr)
    receivers.append(("dicomnode (fsync, SQLite FULL)", lambda s, n, t: bench_node(s, n, t, "FULL")))
    receivers.append(("dicomnode (fsync, SQLite NORMAL)", lambda s, n, t: bench_node(s, n, t, "NORMAL")))
    modes = [True] if args.no_nagle_runs else [True, False]
    results: dict[tuple[str, bool], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        for nodelay in modes:
            for name, fn in receivers:
                best = min(fn(series, nodelay, tmp) for _ in range(args.repeat))  # type: ignore[operator]
                results[(name, nodelay)] = best
    print(f"\n{args.slices} CT slices of {args.size}x{args.size} ({mb:.{0 if mb >= 10 else 2}f} MB), dcmtk storescu over loopback, best of {args.repeat}\n")
    print("TCP_NODELAY=1 is set for dcmtk's sender and for the dcmtk-based receivers (storescp, Orthanc);")
    print("dicomnode sets TCP_NODELAY on its own sockets either way.\n")
    print("| receiver | TCP_NODELAY | seconds | images/s | dicomnode (FULL) speed / receiver speed |")
    print("|---|---|---|---|---|")
    for nodelay in modes:
        node = results[("dicomnode (fsync, SQLite FULL)", nodelay)]
        for name, _ in receivers:
            t = results[(name, nodelay)]
            print(f"| {name} | {'on' if nodelay else 'off'} | {t:.2f} | {args.slices / t:.0f} | {t / node:.2f} |")
        for name in missing:
            print(f"| {name} | {'on' if nodelay else 'off'} | not installed | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
