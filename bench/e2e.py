"""End to end: a 512x512x300 chest CT goes in, SEG + SR come out at a PACS; time per stage.

A procedural chest phantom (``ai.phantoms``) is written once as a DICOM series
under ``bench/out/data`` (or ``$DICOMNODE_BENCH_OUT/data``).  dcmtk's
``storescu`` sends it to ``dicomnode serve`` (SQLite, the shipped chest
model, outputs sent to a dcmtk ``storescp`` standing in for the PACS).
The series completes when the association is released (the node's evidence
that the whole series came), so there is no quiet period to wait for; the
report also gives the quiet period the node would otherwise wait.  The
stages come from the job's own timings.

Needs dcmtk (``storescu``, ``storescp``); without it the bench says so in
the table and exits 0.

``--quick`` is a smoke run: a 64x64x32 phantom, data under a temporary
folder (or ``$DICOMNODE_BENCH_OUT``), never ``bench/out``; the table has the
same rows.

Usage: ``python bench/e2e.py [--slices 300] [--matrix 512] [--device auto|cpu|cuda] [--quick]``
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import free_port, out_dir, start_node, tool, use_quick_out, wait_for  # noqa: E402

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def phantom_series(matrix: int, slices: int, seed: int = 4242) -> Path:
    """A cached chest phantom series."""
    from ai.phantoms import generate
    from dicomnode.testing.synthetic import write_phantom

    d = out_dir() / "data" / f"phantom-{seed}-{slices}x{matrix}"
    if len(list(d.glob("*.dcm"))) != slices:
        print(f"writing a {matrix}x{matrix}x{slices} chest phantom to {d} ...", file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
        write_phantom(generate(seed, matrix=matrix, slices=slices, slice_mm=(1.0, 1.0)), d)
    return d


def main() -> int:
    from pydicom import dcmread

    from storage.database import open_engine
    from storage.outbox import list_deliveries
    from storage.listings import list_jobs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="smoke run: a 64x64x32 phantom, outputs in a temporary folder")
    args = ap.parse_args()
    if args.quick:
        use_quick_out()
        args.matrix, args.slices = 64, 32
    missing = [name for name in ("storescu", "storescp") if not tool(name)]
    if missing:
        print(f"\n{args.matrix}x{args.matrix}x{args.slices} chest CT phantom: not run, {' and '.join(missing)} not installed (dcmtk)\n")
        print("| stage | seconds |")
        print("|---|---|")
        print("| **last instance acknowledged -> SEG and SR at the PACS** | not measured: dcmtk not installed |")
        return 0
    series = phantom_series(args.matrix, args.slices)
    env = dict(os.environ, TCP_NODELAY="1")
    with tempfile.TemporaryDirectory(prefix="dicomnode-e2e-") as tmp_s:
        tmp = Path(tmp_s)
        pacs_dir = tmp / "pacs"
        pacs_dir.mkdir()
        pacs_port = free_port()
        pacs = subprocess.Popen([tool("storescp") or "storescp", "-aet", "PACS", "+xa", "-od", str(pacs_dir), str(pacs_port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node, port = start_node(tmp / "node", extra_toml=(
            f'[worker]\nenabled = true\ndevice = "{args.device}"\npoll_seconds = 0.1\n'
            "[delivery]\npoll_seconds = 0.1\n[web]\nenabled = false\n"
            f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
        ))
        try:
            files = sorted(series.glob("*.dcm"))
            t0 = time.perf_counter()
            subprocess.run([tool("storescu") or "storescu", "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, files)], env=env, check=True,
                           capture_output=True)
            t_sent = time.perf_counter()

            def arrived() -> bool:
                for name, proc in (("the PACS (storescp)", pacs), ("the node", node)):
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with status {proc.returncode}")
                classes = set()
                for f in pacs_dir.iterdir():
                    try:
                        classes.add(str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID))
                    except Exception:  # still being written
                        pass
                return {SEG, SR} <= classes

            wait_for(arrived, 900, "SEG and SR at the PACS")
            t_done = time.perf_counter()
            engine = open_engine(f"sqlite:///{tmp / 'node' / 'storage' / 'dicomnode.db'}")
            wait_for(lambda: list_jobs(engine)[0].state == "done", 60, "the job to be marked done")
            [job] = list_jobs(engine)
            [delivery] = list_deliveries(engine, job.id)
            engine.dispose()
        finally:
            node.terminate()
            node.wait(30)
            pacs.terminate()
    t = job.timings or {}
    deliver = (delivery.finished_at - job.finished_at).total_seconds() if delivery.finished_at and job.finished_at else float("nan")
    nz = len(files)
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"\n{args.matrix}x{args.matrix}x{nz} chest CT phantom ({mb:.{0 if mb >= 10 else 2}f} MB), model {job.model}\n")
    print("| stage | seconds |")
    print("|---|---|")
    print(f"| send (storescu, {nz} instances) | {t_sent - t0:.2f} |")
    for k in ("complete", "queue", "reconstruct", "infer", "write"):
        print(f"| {k} | {t.get(k, float('nan')):.2f} |")
    for k, v in t.items():
        if k.startswith("model_"):
            print(f"| &nbsp;&nbsp;{k[6:]} (inside infer) | {v:.2f} |")
    print(f"| deliver (SEG, SR, preview to storescp) | {deliver:.2f} |")
    print(f"| **last instance acknowledged -> SEG and SR at the PACS** | **{t_done - t_sent:.2f}** |")
    print(f"\ncompleted by: {job.completion_reason} (no quiet period; otherwise series.quiet_seconds would come first)")
    print(json.dumps({"timings": t, "total_after_last_instance_s": round(t_done - t_sent, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
