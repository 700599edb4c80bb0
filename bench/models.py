"""Bring-your-own-model formats: the node's run of a model against the model library's own tool, same model and input.

For each format, a small real model is built with the library's own tools
(the builders of ``tests/test_monai_bundle.py`` and ``tests/test_nnunet.py``)
and both command-line tools run it, cold, on the same NIfTI volume, each in a
fresh process that loads the model, reads the input and writes a label map:

- MONAI bundle: ``dicomnode infer --model BUNDLE`` against ``python -m monai.bundle run``;
- nnU-Net v2: ``dicomnode infer --model FOLDER`` against ``nnUNetv2_predict``;
- TotalSegmentator (its ``total --fast`` task, the tiny nnU-Net model in its
  weights layout): ``dicomnode infer --model TASK`` against ``TotalSegmentator --fast``.

``dicomnode infer`` also measures, and writes ``measurements.json`` and an
overlay PNG, which the reference tools do not.  The table gives the median of
``--repeat`` runs each, their ratio (target <= 1.0), and the share of voxels
on which both label maps agree.

``--quick`` is a smoke run: one run each (the model building is the same).

Usage: ``python bench/models.py [--repeat 3] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of ``repeat`` runs of ``cmd`` (each must exit 0)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return statistics.median(times)


def labels_of(path: Path) -> np.ndarray:
    """A label map written as NIfTI, as an integer array."""
    return np.asarray(nib.load(str(path)).dataobj).squeeze().astype(np.int64)


def monai_row(work: Path, repeat: int) -> tuple[str, float, float, float]:
    """The MONAI bundle row: our seconds, the reference's, and their label agreement."""
    from tests.test_monai_bundle import AFFINE, SHAPE_XYZ, fit, inference_config, write_bundle

    bundle = write_bundle(work / "monai_bundle", fit().state_dict(), inference_config())
    rng = np.random.default_rng(1)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE_XYZ], indexing="ij")
    mm = np.stack([i * 0.8, j * 0.8, k * 2.5], -1)
    hu = np.zeros(SHAPE_XYZ, np.float32)
    hu[np.linalg.norm(mm - (30.0, 34.0, 30.0), axis=-1) <= 8.0] = -900.0
    hu[np.linalg.norm(mm - (46.0, 40.0, 44.0), axis=-1) <= 7.0] = 450.0
    hu += rng.normal(0, 40, SHAPE_XYZ).astype(np.float32)
    data = work / "monai_in"
    data.mkdir()
    nib.save(nib.Nifti1Image(hu, AFFINE), data / "case.nii.gz")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    ref_out, ours_out = work / "monai_ref", work / "monai_ours"
    ref = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
           "--dataset_dir", str(data), "--output_dir", str(ref_out)]
    ours = [sys.executable, "-m", "dicomnode", "infer", str(data / "case.nii.gz"), "--out", str(ours_out), "--model", str(bundle), "-q"]
    t_ref, t_ours = timed(ref, env, repeat), timed(ours, env, repeat)
    agree = float((labels_of(next(ref_out.glob("**/*_seg.nii.gz"))) == labels_of(ours_out / "labels.nii.gz")).mean())
    return "MONAI bundle (`python -m monai.bundle run`)", t_ours, t_ref, agree


def nnunet_row(work: Path, repeat: int) -> tuple[str, float, float, float]:
    """The nnU-Net v2 row: our seconds, ``nnUNetv2_predict``'s, and their label agreement."""
    from tests.test_nnunet import DATASET, TRAINER_FOLDER, _env, _sphere_image, _write

    root = tiny_root(work.parent)
    folder = root / "nnUNet_results" / DATASET / TRAINER_FOLDER
    image, _ = _sphere_image(np.random.default_rng(7), (36, 30, 20), (0.85, 0.95, 2.0))
    inp = work / "nnunet_in"
    inp.mkdir()
    _write(image, inp / "case_0000.nii.gz", (0.85, 0.95, 2.0))
    env = _env(root)
    ref_out, ours_out = work / "nnunet_ref", work / "nnunet_ours"
    ref = [str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(inp), "-o", str(ref_out), "-d", "999",
           "-c", "3d_fullres", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    ours = [sys.executable, "-m", "dicomnode", "infer", str(inp / "case_0000.nii.gz"), "--out", str(ours_out), "--model", str(folder), "-q"]
    t_ref, t_ours = timed(ref, env, repeat), timed(ours, env, repeat)
    agree = float((labels_of(ref_out / "case.nii.gz") == labels_of(ours_out / "labels.nii.gz")).mean())
    return "nnU-Net v2 (`nnUNetv2_predict`)", t_ours, t_ref, agree


def tiny_root(tmp: Path) -> Path:
    """The tiny nnU-Net model tree of ``tests/test_nnunet.py``, built once per run."""
    from tests.test_nnunet import build_model_root

    root = tmp / "nnunet-tree"
    if not root.is_dir():
        root.mkdir()
        build_model_root(root)
    return root


def totalseg_row(work: Path, repeat: int) -> tuple[str, float, float, float]:
    """The TotalSegmentator row (task ``total --fast``): our seconds, the ``TotalSegmentator`` CLI's, and their agreement."""
    import json

    from ai.totalseg_bundle import weight_folders
    from dicomnode.jobs.models import install_model
    from tests.test_nnunet import DATASET, TRAINER_FOLDER, _sphere_image, _write
    from tests.test_totalsegmentator import FAST_TRAINER, _part

    weights = work / "weights"
    [fast] = weight_folders("total", fast=True)
    _part(tiny_root(work.parent) / "nnUNet_results" / DATASET / TRAINER_FOLDER, weights / fast / FAST_TRAINER, "ball")
    task, _ = install_model(weights, "ts-total-fast", work / "models", task="total", fast=True)
    image, _ = _sphere_image(np.random.default_rng(7), (60, 56, 30), (0.85, 0.95, 2.0))
    _write(image, work / "in.nii.gz", (0.85, 0.95, 2.0))
    home = work / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"totalseg_id": "bench", "send_usage_stats": False, "prediction_counter": 0,
                                                  "statistics_disclaimer_shown": True}))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOTALSEG_HOME_DIR": str(home), "TOTALSEG_WEIGHTS_PATH": str(weights)}
    ours_out = work / "ours"
    ref = [str(Path(sys.executable).parent / "TotalSegmentator"), "-i", str(work / "in.nii.gz"), "-o", str(work / "ref.nii.gz"),
           "--ml", "--task", "total", "--fast", "-d", "cpu", "-q"]
    ours = [sys.executable, "-m", "dicomnode", "infer", str(work / "in.nii.gz"), "--out", str(ours_out), "--model", str(task), "-q"]
    t_ref, t_ours = timed(ref, env, repeat), timed(ours, env, repeat)
    agree = float((labels_of(work / "ref.nii.gz") == labels_of(ours_out / "labels.nii.gz")).mean())
    return "TotalSegmentator `total --fast` (`TotalSegmentator`)", t_ours, t_ref, agree


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run each")
    args = p.parse_args()
    repeat = 1 if args.quick else args.repeat
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-models-") as tmp:
        builders: list[Callable[[Path, int], tuple[str, float, float, float]]] = [monai_row, nnunet_row, totalseg_row]
        for build in builders:
            work = Path(tmp) / build.__name__
            work.mkdir()
            rows.append(build(work, repeat))
    print(f"\nmedian of {repeat} cold run(s) each, same model and input, 2 OMP threads\n")
    print("| format (reference tool) | dicomnode infer s | reference s | ratio ours / reference | labels equal |")
    print("|---|---|---|---|---|")
    for name, ours, ref, agree in rows:
        print(f"| {name} | {ours:.2f} | {ref:.2f} | {ours / ref:.2f} | {100 * agree:.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
