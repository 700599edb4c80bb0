"""TotalSegmentator tasks: installed offline from its weights folder, run through its own API, equal to its own CLI.

The weights are the tiny nnU-Net model of ``tests/test_nnunet.py`` copied into
TotalSegmentator's layout for the five parts of its ``total`` task, with the
last layer changed per part (part 1 segments the ball, part 2 everything
else, parts 3 to 5 nothing), so that TotalSegmentator's own combination of
the parts into its 117 classes is exercised, not just one model.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ai.errors import AIError
from dicomnode.errors import DicomNodeError
from dicomnode.jobs.models import ModelFormat, install_model, model_format
from tests.test_nnunet import DATASET, TRAINER_FOLDER, _sphere_image, _write

TS_TRAINER = "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"  # the folder TotalSegmentator's total task loads
FAST_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"  # ... and its fast (3 mm) variant
SPACING = (0.9, 0.9, 2.0)


def _totalseg() -> None:
    from ai.standard_codes import table_path

    if table_path() is None:
        pytest.fail("TotalSegmentator is not installed: scripts/install.sh --test-tools installs it (--no-deps)")


def _part(src: Path, dest: Path, mode: str) -> None:
    """Copy the tiny model to ``dest``, its output layer set to segment the ball, the rest, or nothing."""
    shutil.copytree(src, dest)
    ckpt_path = dest / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    for key, value in ckpt["network_weights"].items():
        if "seg_layers" not in key:
            continue
        if mode == "rest":  # swap background and ball
            ckpt["network_weights"][key] = value.flip(0)
        elif mode == "nothing":
            ckpt["network_weights"][key] = torch.zeros_like(value)
            if key.endswith("bias"):
                ckpt["network_weights"][key] = torch.tensor([10.0, -10.0], dtype=value.dtype)
    torch.save(ckpt, ckpt_path)


@pytest.fixture(scope="module")
def weights(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TotalSegmentator weights folder (``~/.totalsegmentator/nnunet/results``): the ``total`` task, its fast variant, a decoy."""
    _totalseg()
    from ai.totalseg_bundle import weight_folders

    root = tmp_path_factory.mktemp("totalseg") / "nnunet" / "results"
    tiny = model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER
    for folder, mode in zip(weight_folders("total"), ("ball", "rest", "nothing", "nothing", "nothing"), strict=True):
        _part(tiny, root / folder / TS_TRAINER, mode)
    [fast] = weight_folders("total", fast=True)
    _part(tiny, root / fast / FAST_TRAINER, "ball")
    shutil.copytree(tiny, root / "Dataset999_Decoy" / TRAINER_FOLDER)  # not the task's: not copied on import
    return root


def _image() -> np.ndarray:
    image, _ = _sphere_image(np.random.default_rng(7), (40, 36, 22), SPACING)
    return image


def test_a_task_installs_only_its_weights_and_is_coded_by_totalsegmentator_s_table(weights: Path, tmp_path: Path) -> None:
    from ai.bundle import load_bundle
    from ai.placement import lobe_labels
    from ai.totalseg_bundle import RECORD, weight_folders

    assert model_format(weights) is ModelFormat.TOTALSEGMENTATOR
    with pytest.raises(DicomNodeError, match=r"with --task \(total\)"):  # the tasks whose weights are all there
        install_model(weights, "ts", tmp_path / "models")
    with pytest.raises(DicomNodeError, match=r"task lung_nodules needs weights that .* lacks: Dataset913_.*Dataset298_"):
        install_model(weights, "ts", tmp_path / "models", task="lung_nodules")  # its own model and its crop model
    with pytest.raises(DicomNodeError, match="Unknown task"):
        install_model(weights, "ts", tmp_path / "models", task="no_such_task")
    dest, fmt = install_model(weights, "ts-total", tmp_path / "models", task="total")
    assert fmt is ModelFormat.TOTALSEGMENTATOR and model_format(dest) is ModelFormat.TOTALSEGMENTATOR_TASK
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == sorted(weight_folders("total"))  # no decoy
    assert json.loads((dest / RECORD).read_text())["task"] == "total"
    bundle = load_bundle(dest)
    assert (bundle.name, bundle.source, len(bundle.labels)) == ("ts-total", "totalsegmentator", 117)
    by_name = {lb.name: lb for lb in bundle.labels}
    lobe = by_name["lung_upper_lobe_left"]
    assert (lobe.snomed_code, lobe.laterality and lobe.laterality.value) == ("45653009", "left")
    assert len(lobe_labels(bundle)) == 5  # its lobes can place a nodule model's findings
    assert bundle.spacing == (1.5, 1.5, 1.5)
    r = subprocess.run([sys.executable, "-m", "dicomnode", "models", "check", str(dest)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "TotalSegmentator task total" in r.stdout and "117 classes, 117 with standard codes" in r.stdout, r.stdout + r.stderr
    shutil.rmtree(dest / weight_folders("total")[2])  # a part goes missing: check and load say which
    r = subprocess.run([sys.executable, "-m", "dicomnode", "models", "check", str(dest)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and weight_folders("total")[2] in r.stderr, r.stdout + r.stderr
    from ai.totalseg_runner import TotalSegmentatorModel

    with pytest.raises(AIError, match="weights missing"):
        TotalSegmentatorModel(dest)


def test_the_node_s_labels_equal_totalsegmentator_s_own_cli(weights: Path, tmp_path: Path) -> None:
    """In memory through the engine vs ``TotalSegmentator -i in.nii.gz -o out.nii.gz --ml --task total --fast``: the same labels.

    The fast variant is one model; the five-part task is run once below (TotalSegmentator reloads each part's
    model for each run, about 20 s here, so the suite runs it once).
    """
    from ai.bundle import load_bundle
    from ai.engine import Engine

    dest, _ = install_model(weights, "ts-fast", tmp_path / "models", task="total", fast=True)
    image = _image()
    # A feet-first, flipped-x acquisition: the volume's axes are not NIfTI's canonical ones.
    direction = np.diag([-1.0, 1.0, -1.0])
    origin = (120.0, -80.0, 300.0)
    ours = Engine(load_bundle(dest), device="cpu").run(image, SPACING, direction).labels
    assert ours is not None and ours.shape == image.shape and ours.any()
    # The reference: TotalSegmentator's own command line on the same volume written by SimpleITK.
    _write(image, tmp_path / "in.nii.gz", SPACING, origin=origin, direction=tuple(direction.reshape(9)))
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"totalseg_id": "test", "send_usage_stats": False, "prediction_counter": 0,
                                                  "statistics_disclaimer_shown": True}))
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home), "TOTALSEG_WEIGHTS_PATH": str(weights), "OMP_NUM_THREADS": "2"}
    exe = str(Path(sys.executable).parent / "TotalSegmentator")
    r = subprocess.run([exe, "-i", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--ml", "--task", "total",
                        "--fast", "-d", "cpu", "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ref_img = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    ref = sitk.GetArrayFromImage(ref_img)
    np.testing.assert_allclose(ref_img.GetDirection(), direction.reshape(9), atol=1e-6)
    np.testing.assert_allclose(ref_img.GetOrigin(), origin, atol=1e-4)
    assert ref.shape == ours.shape
    agree = float((ref == ours).mean())
    assert agree >= 0.995, f"{agree:.4f} of voxels agree"


def test_the_five_part_total_task_is_combined_by_totalsegmentator(weights: Path, tmp_path: Path) -> None:
    """The ball is part 1's first class (spleen), the rest part 2's; parts 3 to 5 found nothing."""
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts

    from ai.bundle import load_bundle
    from ai.engine import Engine

    dest, _ = install_model(weights, "ts-total", tmp_path / "models", task="total")
    image = _image()
    res = Engine(load_bundle(dest), device="cpu").run(image, SPACING, np.diag([1.0, -1.0, 1.0]))
    assert res.labels is not None
    inv = {v: k for k, v in class_map["total"].items()}
    rest = class_map_5_parts["class_map_part_vertebrae"][1]
    values = set(np.unique(res.labels).tolist())
    assert values == {inv["spleen"], inv[rest]}, values
    ball = image > 40  # the bright ball (80 HU) in soft tissue (-60 HU), noise 20 HU
    # The tiny model finds 91 % of the ball at its own spacing; through TotalSegmentator's 1.5 mm grid, about 77 %.
    assert float((res.labels[ball] == inv["spleen"]).mean()) > 0.6
    assert float((res.labels[~ball] == inv[rest]).mean()) > 0.95
    assert {m.name for m in res.measurements if m.voxels} == {"spleen", rest}


def test_the_private_home_folder_goes_with_the_model(weights: Path, tmp_path: Path) -> None:
    """Each loaded task has a home folder in the temporary directory; it must not outlive the model (one per load)."""
    from ai.totalseg_runner import TotalSegmentatorModel

    dest, _ = install_model(weights, "ts-fast", tmp_path / "models", task="total", fast=True)
    model = TotalSegmentatorModel(dest)
    home = model.home
    assert json.loads((home / "config.json").read_text())["send_usage_stats"] is False
    del model
    gc.collect()
    assert not home.exists()
