"""Volume reconstruction benchmark: ours vs SimpleITK's ImageSeriesReader vs dcm2niix, in one run.

A 300-slice 512x512 CT series, uncompressed and in each compressed transfer
syntax (JPEG lossless, RLE, JPEG 2000), reconstructed by each tool from a
warm page cache; then the peak memory of ours on a 2,000-slice series.

A compressed set whose encoder is missing (dcmtk's ``dcmcjpeg``/``dcmcrle``,
pydicom's JPEG 2000 encoder) and a missing dcm2niix are named in the table
instead of measured.

``--quick`` is a smoke run: 8 slices of 64x64, one run per tool, a 16-slice
memory test, data under a temporary folder (or ``$DICOMNODE_BENCH_OUT``),
never ``bench/out``; the table has the same columns.

Usage: ``python bench/volume.py [--slices 300] [--size 512] [--repeat 3] [--big 2000] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ct_series, out_dir, use_quick_out  # noqa: E402


def compressed_copy(src: Path, label: str) -> Path:
    """A cached compressed copy of ``src`` (dcmtk for JPEG/RLE, pydicom+OpenJPEG for J2K)."""
    dst = out_dir() / "data" / f"{src.name}-{label}"
    files = sorted(src.glob("*.dcm"))
    if len(list(dst.glob("*.dcm"))) == len(files):
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    print(f"compressing {len(files)} slices to {label} ...", file=sys.stderr)
    for f in files:
        out = dst / f.name
        if label == "jpeg-lossless":
            subprocess.run(["dcmcjpeg", str(f), str(out)], check=True)
        elif label == "rle":
            subprocess.run(["dcmcrle", str(f), str(out)], check=True)
        else:
            from pydicom import dcmread
            from pydicom.uid import JPEG2000Lossless

            ds = dcmread(f)
            ds.compress(JPEG2000Lossless)
            ds.save_as(out)
    return dst


def encoder_missing(label: str) -> str | None:
    """What is missing to write the ``label`` set, or None."""
    if label in ("jpeg-lossless", "rle"):
        tool = "dcmcjpeg" if label == "jpeg-lossless" else "dcmcrle"
        return None if shutil.which(tool) else f"{tool} not installed"
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    enc = get_encoder(JPEG2000Lossless)
    return None if enc.is_available else "no JPEG 2000 encoder for pydicom"


def time_ours(d: Path) -> float:
    from dicomnode.volume.reconstruct import reconstruct

    t = time.perf_counter()
    reconstruct(d)
    return time.perf_counter() - t


def time_sitk(d: Path) -> float:
    import SimpleITK as sitk

    t = time.perf_counter()
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(d)))
    r.Execute()
    return time.perf_counter() - t


def time_dcm2niix(d: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-o", out, str(d)], check=True, capture_output=True)
        return time.perf_counter() - t


def peak_memory(d: Path) -> dict[str, float]:
    """Reconstruct in a fresh process and report its peak RSS."""
    code = (
        "import resource, time, json, sys; from pathlib import Path; from dicomnode.volume.reconstruct import reconstruct;"
        "t=time.perf_counter(); v=reconstruct(Path(sys.argv[1])); dt=time.perf_counter()-t;"
        "print(json.dumps({'seconds': dt, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,"
        "'children_peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, 'volume_mb': v.array.nbytes/1e6}))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(d)], check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool; the best is reported")
    ap.add_argument("--big", type=int, default=2000, help="slices of the memory test (0 to skip)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 slices of 64x64, one run, outputs in a temporary folder")
    args = ap.parse_args()
    if args.quick:
        use_quick_out()
        args.slices, args.size, args.repeat, args.big = 8, 64, 1, 16
    plain = ct_series(args.slices, args.size)
    sets = {"uncompressed": plain}
    skipped: dict[str, str] = {}
    for label in ("jpeg-lossless", "rle", "j2k"):
        why = encoder_missing(label)
        if why:
            skipped[label] = why
        else:
            sets[label] = compressed_copy(plain, label)
    tools = {"dicomnode": time_ours, "SimpleITK": time_sitk}
    if shutil.which("dcm2niix"):
        tools["dcm2niix"] = time_dcm2niix
    results: dict[tuple[str, str], float] = {}
    for label, d in sets.items():
        for name, fn in tools.items():
            fn(d)  # warm the page cache and imports
            results[(name, label)] = min(fn(d) for _ in range(args.repeat))
    print(f"\n{args.slices} CT slices of {args.size}x{args.size}, warm cache, best of {args.repeat} (seconds)\n")
    print("| | " + " | ".join([*sets, *skipped]) + " |")
    print("|---|" + "---|" * (len(sets) + len(skipped)))
    gaps = "".join(f" {why} |" for why in skipped.values())
    for name in tools:
        print(f"| {name} | " + " | ".join(f"{results[(name, s)]:.2f}" for s in sets) + " |" + gaps)
    if "dcm2niix" not in tools:
        print("| dcm2niix | " + " | ".join("not installed" for _ in [*sets, *skipped]) + " |")
    for ref in [t for t in tools if t != "dicomnode"]:
        print(f"| dicomnode / {ref} | " + " | ".join(f"{results[('dicomnode', s)] / results[(ref, s)]:.2f}" for s in sets) + " |" + gaps)
    if args.big:
        big = ct_series(args.big, args.size, seed="bench-big")
        m = peak_memory(big)
        print(
            f"\n{args.big} slices of {args.size}x{args.size}: {m['seconds']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB "
            f"for a {m['volume_mb']:.0f} MB volume (workers' peak {m['children_peak_rss_mb']:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
