"""Pulling studies into the node: by C-MOVE and by WADO-RS, against Orthanc's own transfer to dcmtk's storescp.

Orthanc (with its DICOMweb plugin) holds ``--studies`` synthetic CT studies.
Three transfers of all of them are timed in one run:

- reference: Orthanc sends them by C-STORE to a dcmtk ``storescp`` (Orthanc's
  ``/modalities/{name}/store``, synchronous), what any PACS-to-PACS transfer costs;
- ``dicomnode fetch`` by C-MOVE: Orthanc sends them to a running node, which
  stores each instance durably (fsync, rename, database commit) before it
  acknowledges it;
- ``dicomnode fetch`` by WADO-RS: the fetch downloads them from Orthanc's
  DICOMweb plugin, then stores them through the node's listener.

Each fetch runs the real command line (``python -m dicomnode fetch``) against a
fresh node.  The table gives studies per minute and the ratio to the
reference (higher is faster).

Usage: ``python bench/fetch.py [--studies 4] [--slices 80] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TCP_NODELAY", "1")  # dcmtk and Orthanc over loopback (see environment notes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=4)
    p.add_argument("--slices", type=int, default=80, help="images per study (512 x 512)")
    p.add_argument("--quick", action="store_true", help="2 studies of 6 small images: a smoke run")
    args = p.parse_args()
    n, slices, size = (2, 6, 64) if args.quick else (args.studies, args.slices, 512)

    from dicomnode.config import load_config
    from dicomnode.node import Node
    from dicomnode.testing.synthetic import SeriesSpec, write_series
    from storage.study import study_series
    from tests.helpers import storescu, wait_for, write_config
    from tests.peers import Orthanc, StoreSCP

    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-fetch-") as tmp_name:
        tmp = Path(tmp_name)
        orthanc = Orthanc(tmp / "orthanc", dicomweb=True).start()
        scp = StoreSCP(tmp / "storescp").start()
        nodes: list[Node] = []
        try:
            studies = []
            for i in range(n):
                spec = SeriesSpec(slices=slices, rows=size, columns=size, seed=f"bench-fetch-{i}", patient_id=f"BF-{i}")
                files = write_series(spec, tmp / f"s{i}")
                assert storescu(orthanc.port, files, called=orthanc.ae).returncode == 0
                studies.append(str(spec.study_uid))
            images = n * slices
            ids = orthanc.get("/studies")
            orthanc.put("/modalities/storescp", {"AET": "PACS", "Host": "127.0.0.1", "Port": scp.port})
            t0 = time.perf_counter()
            orthanc.post("/modalities/storescp/store", {"Resources": ids, "Synchronous": True})
            wait_for(lambda: len(scp.files()) >= images, 600, what="storescp to hold every image")
            reference = time.perf_counter() - t0

            def run(kind: str) -> float:
                d = tmp / kind
                d.mkdir()
                source = (f'[[sources]]\nname = "orthanc"\nae_title = "{orthanc.ae}"\nhost = "127.0.0.1"\nport = {orthanc.port}\n'
                          if kind == "c-move" else
                          f'[[sources]]\nname = "orthanc"\nkind = "dicomweb"\nurl = "{orthanc.dicomweb_url}"\n')
                path = write_config(d, series="quiet_seconds = 60", extra="[worker]\nenabled = false\n" + source)
                cfg = load_config(path, environ={})
                node = Node(cfg)
                port = node.start()
                nodes.append(node)
                node.cfg = replace(cfg, node=replace(cfg.node, port=port))
                path.write_text(path.read_text().replace("\nport = 0\n", f"\nport = {port}\n", 1))
                if kind == "c-move":
                    orthanc.put("/modalities/dicomnode", {"AET": cfg.node.ae_title, "Host": "127.0.0.1", "Port": port})
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "dicomnode", "fetch", "--config", str(path), "--from", "orthanc",
                                    "--since", "2000-01-01", "-q"], capture_output=True, text=True, timeout=1800)
                took = time.perf_counter() - t
                if r.returncode != 0:
                    raise SystemExit(f"fetch by {kind} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
                held = sum(s.instances for u in studies for s in study_series(node.engine, u))
                if held != images:
                    raise SystemExit(f"fetch by {kind}: the node holds {held} of {images} images")
                return took

            moved, web = run("c-move"), run("wado-rs")
        finally:
            for node in nodes:
                node.stop()
            scp.stop()
            orthanc.stop()

    def rate(seconds: float) -> float:
        return 60.0 * n / seconds

    print(f"\n{n} studies of {slices} images ({size} x {size}, uncompressed) from Orthanc, 2-core machine, one run\n")
    print("| transfer | seconds | studies per minute | images/s | speed / reference |")
    print("|---|---|---|---|---|")
    print(f"| Orthanc -> dcmtk storescp (C-STORE, reference) | {reference:.2f} | {rate(reference):.1f} | {images / reference:.0f} | 1.00 |")
    print(f"| dicomnode fetch, C-MOVE (durable ingest) | {moved:.2f} | {rate(moved):.1f} | {images / moved:.0f} | {reference / moved:.2f} |")
    print(f"| dicomnode fetch, WADO-RS (download, then C-STORE) | {web:.2f} | {rate(web):.1f} | {images / web:.0f} | {reference / web:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
