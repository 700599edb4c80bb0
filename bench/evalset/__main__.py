"""Write a frozen set: ``python -m bench.evalset OUT --set eval [--matrix 256]``.

One line per case (name, nodules, shape, spacing, position, seconds), and an
``index.json`` listing every case with its checksum and nodules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/evalset/__main__.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "bench.evalset"

from bench.evalset.case import write_case  # noqa: E402
from bench.evalset.frozen import SMOKE_MATRIX, frozen_set  # noqa: E402
from bench.evalset.generate import generate_case  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Generate and write every case of a frozen set.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--set", dest="kind", default="eval", choices=["eval", "smoke"])
    ap.add_argument("--matrix", type=int, help=f"in-plane matrix (default 256; {SMOKE_MATRIX} for smoke)")
    a = ap.parse_args(argv)
    matrix = a.matrix or (SMOKE_MATRIX if a.kind == "smoke" else 256)
    index = []
    for seed, healthy in frozen_set(a.kind):
        name = f"eval-{seed}"
        t = time.perf_counter()
        case = generate_case(seed, healthy=healthy, matrix=matrix)
        secs = time.perf_counter() - t
        write_case(case, a.out, name)
        acq = case.meta["acquisition"]
        assert isinstance(acq, dict)
        print(f"{name} {'healthy' if healthy else 'nodules'} {len(case.nodules)} shape={case.hu.shape} "
              f"spacing={tuple(round(s, 3) for s in case.spacing)} {acq['position']} {acq['kernel']} "
              f"noise={acq['noise_sigma']:.0f} {secs:.1f}s", flush=True)
        index.append({"name": name, "seed": seed, "healthy": healthy, "checksum": case.checksum(),
                      "seconds": round(secs, 2), "nodules": [asdict(n) for n in case.nodules]})
    (a.out / "index.json").write_text(json.dumps({"set": a.kind, "matrix": matrix, "cases": index}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
