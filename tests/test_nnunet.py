"""nnU-Net v2 model folders run through nnU-Net's own predictor, and match ``nnUNetv2_predict``.

A tiny real nnU-Net v2 model is built at test time with nnunetv2's own tools:
a raw dataset (spheres in noise) is fingerprinted and planned by
``nnUNetv2_plan_and_preprocess``, cases are preprocessed by nnU-Net's
``DefaultPreprocessor``, the network is built from the plans by
``nnUNetTrainer.build_network_architecture``, fitted briefly (random weights give
salt-and-pepper labels, and agreement would then measure floating-point noise)
and saved in nnU-Net's checkpoint format.  The reference ``nnUNetv2_predict`` and
the node's runner then segment the same anisotropic, flipped NIfTI.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ai.nnunet_runner import NnUNetError, NnUNetModel, image_properties, missing_parts
from dicomnode.cli.infer import load_input
from dicomnode.errors import DicomNodeError
from dicomnode.jobs.models import (
    IMPORT_RECORD,
    ModelFormat,
    install_model,
    model_format,
)
from dicomnode.volume.reconstruct import Volume

DATASET = "Dataset999_Tiny"
TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
TRAIN_SPACING = (0.9, 0.9, 2.0)  # (x, y, z) mm, SimpleITK order
SIZE_XYZ = (32, 32, 24)
FIT_STEPS = 25
NARROW = 8  # features of the first stage


def _bin(name: str) -> str:
    """An nnU-Net console script of this venv."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed beside {sys.executable}: run scripts/install.sh --test-tools"
    return str(path)


def _sphere_image(
    rng: np.random.Generator, size_xyz: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A [z, y, x] CT-like image (a bright ball in noisy soft tissue) and its label map."""
    nx, ny, nz = size_xyz
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    centre = [rng.uniform(0.35, 0.65) * n for n in (nx, ny, nz)]
    radius = rng.uniform(7.0, 10.0)  # mm
    dist = np.sqrt(
        ((x - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2 + ((z - centre[2]) * spacing[2]) ** 2
    )
    labels = (dist <= radius).astype(np.uint8)
    image = np.where(labels > 0, 80.0, -60.0) + rng.normal(0.0, 20.0, labels.shape)
    return image.astype(np.float32), labels


def _write(array: np.ndarray, path: Path, spacing: tuple[float, ...], origin: tuple[float, ...] = (0.0, 0.0, 0.0),
           direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path), useCompression=True)


def _run(cmd: list[str], root: Path, timeout: int) -> None:
    """Run an nnU-Net command line tool with the tree under root; its output in the failure message."""
    proc = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{Path(cmd[0]).name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        "nnUNet_n_proc_DA": "1",
        "OMP_NUM_THREADS": "2",
    }


def _fit(network: torch.nn.Module, cases: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, ...]) -> float:
    """Fit the network briefly on random patches of nnU-Net's preprocessed cases; the last loss."""
    rng = np.random.default_rng(1)
    opt = torch.optim.Adam(network.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    network.train()
    loss = torch.zeros(())
    for _ in range(FIT_STEPS):
        data, seg = cases[int(rng.integers(len(cases)))]
        starts = [int(rng.integers(0, max(s - p, 0) + 1)) for s, p in zip(data.shape[1:], patch, strict=True)]
        sl = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
        x = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *sl)]))[None]
        y = torch.from_numpy(np.ascontiguousarray(seg[(0, *sl)])).long().clamp(min=0)[None]
        pad = [max(p - s, 0) for s, p in zip(x.shape[2:], patch, strict=True)]
        if any(pad):  # a case smaller than the patch, padded as nnU-Net's loader does
            widths = [w for p in reversed(pad) for w in (0, p)]
            x, y = torch.nn.functional.pad(x, widths), torch.nn.functional.pad(y, widths)
        opt.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        opt.step()
    network.eval()
    return float(loss.item())


def build_model_root(root: Path) -> Path:
    """Under ``root``, an nnU-Net ``nnUNet_*`` tree with a planned, briefly fitted ``Dataset999_Tiny`` model (fold 0).

    Also used by ``bench/models.py``; the model folder is ``root/nnUNet_results/DATASET/TRAINER_FOLDER``.
    """
    raw = root / "nnUNet_raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image, labels = _sphere_image(rng, SIZE_XYZ, TRAIN_SPACING)
        _write(image, raw / "imagesTr" / f"tiny_{i:03d}_0000.nii.gz", TRAIN_SPACING)
        _write(labels, raw / "labelsTr" / f"tiny_{i:03d}.nii.gz", TRAIN_SPACING)
    dataset_json = {
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "sphere": 1},
        "numTraining": 3, "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    # nnU-Net's own fingerprint and planner (preprocessing to disk is not needed: cases are preprocessed below).
    _run([_bin("nnUNetv2_plan_and_preprocess"), "-d", "999", "-c", "3d_fullres", "--no_pp", "-npfp", "1"], root, 120)
    plans = json.loads((root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    # A narrower network than the planner's (as a custom planner would set) keeps the test fast on 2 cores.
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [min(f, NARROW * 2**i) for i, f in enumerate(arch["features_per_stage"])]

    from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
        DefaultPreprocessor,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration("3d_fullres")
    cases = []
    for i in range(3):
        data, seg, _ = DefaultPreprocessor(verbose=False).run_case(
            [str(raw / "imagesTr" / f"tiny_{i:03d}_0000.nii.gz")], str(raw / "labelsTr" / f"tiny_{i:03d}.nii.gz"),
            plans_manager, config, dataset_json,
        )
        cases.append((data.astype(np.float32), seg))
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(plans_manager, config, 1, heads, enable_deep_supervision=False)
    loss = _fit(network, cases, tuple(config.patch_size))
    assert loss < 0.2, f"the tiny model did not fit (loss {loss:.3f})"

    out = root / "nnUNet_results" / DATASET / TRAINER_FOLDER
    (out / "fold_0").mkdir(parents=True)
    (out / "plans.json").write_text(json.dumps(plans))
    (out / "dataset.json").write_text(json.dumps(dataset_json))
    torch.save(
        {  # the keys nnUNetTrainer.save_checkpoint writes and the predictor reads
            "network_weights": network.state_dict(),
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 1,
        },
        out / "fold_0" / "checkpoint_final.pth",
    )
    return root


def test_image_properties_follow_simpleitk_reader(tmp_path: Path) -> None:
    """The properties given to nnU-Net equal those of nnU-Net's own SimpleITKIO for the same file."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(3)
    path = tmp_path / "case_0000.nii.gz"
    direction = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)  # x flipped, y and z swapped
    _write(rng.normal(size=(7, 6, 5)).astype(np.float32), path, (0.7, 0.8, 3.0), (10.0, -20.0, 5.0), direction)
    ref_image, ref_props = SimpleITKIO().read_images([str(path)])
    vol = load_input(path)
    props = image_properties(vol.spacing, vol.origin, vol.direction)
    np.testing.assert_allclose(props["spacing"], ref_props["spacing"], atol=1e-5)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(props["sitk_stuff"][key], ref_props["sitk_stuff"][key], atol=1e-5)
    np.testing.assert_array_equal(vol.array[None], ref_image)


def test_runner_matches_nnunetv2_predict(model_root: Path, tmp_path: Path) -> None:
    """The node's runner gives nnUNetv2_predict's labels, voxel for voxel, on the input's grid."""
    rng = np.random.default_rng(7)
    spacing = (0.85, 0.95, 2.0)  # anisotropic and unlike the training spacing: nnU-Net resamples
    image, truth = _sphere_image(rng, (36, 30, 20), spacing)
    inp, ref_out = tmp_path / "in", tmp_path / "ref"
    inp.mkdir()
    direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # x and z flipped
    _write(image, inp / "case_0000.nii.gz", spacing, (40.0, -12.5, 30.0), direction)
    _run(
        [_bin("nnUNetv2_predict"), "-i", str(inp), "-o", str(ref_out), "-d", "999", "-c", "3d_fullres",
         "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"],
        model_root, 180,
    )
    ref = nib.load(str(ref_out / "case.nii.gz"))
    ref_labels = np.asarray(ref.dataobj).transpose(2, 1, 0)

    vol = load_input(inp / "case_0000.nii.gz")
    model = NnUNetModel(model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER, device="cpu")
    out = model.run(vol.array, vol.spacing, vol.origin, vol.direction)

    assert out.names == {0: "background", 1: "sphere"}
    assert out.labels.shape == vol.array.shape == ref_labels.shape
    assert out.labels.dtype == np.uint8
    agreement = float((out.labels == ref_labels).mean())
    assert agreement >= 0.995, f"agreement with nnUNetv2_predict {agreement:.4%}"
    dice = 2 * ((out.labels == 1) & (truth == 1)).sum() / ((out.labels == 1).sum() + truth.sum())
    assert dice > 0.8, f"the fitted model does not find the sphere (Dice {dice:.3f}): agreement would measure noise"
    ours = tmp_path / "labels.nii.gz"
    Volume(out.labels, vol.spacing, vol.origin, vol.direction).write_nifti(ours)
    np.testing.assert_allclose(nib.load(str(ours)).affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(ref.affine, nib.load(str(inp / "case_0000.nii.gz")).affine, atol=1e-4)


def test_ensemble_of_two_folds(model_root: Path, tmp_path: Path) -> None:
    """Two folds run as nnU-Net's ensemble; a folder without checkpoints is named as incomplete."""
    src = model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER
    folder = tmp_path / TRAINER_FOLDER
    shutil.copytree(src, folder)
    shutil.copytree(folder / "fold_0", folder / "fold_1")
    rng = np.random.default_rng(11)
    image, _ = _sphere_image(rng, SIZE_XYZ, TRAIN_SPACING)
    model = NnUNetModel(folder)
    assert model.folds == ["0", "1"]
    assert len(model.predictor.list_of_parameters) == 2
    out = model.run(image, TRAIN_SPACING)
    single = NnUNetModel(folder, folds=["0"]).run(image, TRAIN_SPACING)
    np.testing.assert_array_equal(out.labels, single.labels)  # identical folds: the mean is the same model

    for fold in ("fold_0", "fold_1"):
        (folder / fold / "checkpoint_final.pth").unlink()
    (folder / "plans.json").unlink()
    assert missing_parts(folder) == ["plans.json", "fold_*/checkpoint_final.pth"]
    with pytest.raises(NnUNetError, match=r"missing plans\.json, fold_\*/checkpoint_final\.pth"):
        NnUNetModel(folder)


def test_install_validates_nnunet_folders(model_root: Path, tmp_path: Path) -> None:
    """``install_model`` installs a complete nnU-Net v2 folder and names what an incomplete one lacks."""
    src = model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER
    models_dir = tmp_path / "models"
    assert model_format(src) is ModelFormat.NNUNET and ModelFormat.NNUNET.runnable
    dest, fmt = install_model(src, "tiny-nnunet", models_dir)
    assert fmt is ModelFormat.NNUNET and dest == models_dir / "tiny-nnunet"
    assert json.loads((dest / IMPORT_RECORD).read_text())["format"] == "nnunet-v2"
    assert (dest / "fold_0" / "checkpoint_final.pth").is_file()
    assert NnUNetModel(dest).names == {0: "background", 1: "sphere"}  # the installed copy loads in nnU-Net

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}, "labels": {"a": [1, 2]}}))
    (bare / "plans.json").write_text(json.dumps({"image_reader_writer": "NibabelIOWithReorient"}))
    (bare / "fold_0").mkdir()  # a fold without its final checkpoint does not count
    with pytest.raises(DicomNodeError) as info:
        install_model(bare, "bare", models_dir)
    said = str(info.value)
    for part in ("does not validate as an nnU-Net v2 model", "missing fold_*/checkpoint_final.pth",
                 "region-based", "2 input channels", "reader NibabelIOWithReorient", "plans.json has no configurations"):
        assert part in said, (part, said)
    (bare / "plans.json").write_text("{not json")
    with pytest.raises(DicomNodeError, match="plans.json is not valid JSON"):
        install_model(bare, "bare", models_dir)
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny-nnunet"]


def test_models_command_lists_shows_and_checks_an_installed_nnunet_model(
    model_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dicomnode models import|list|show|check`` with an nnU-Net v2 folder, by the name it was installed under."""
    from dicomnode.cli.main import main
    from tests.helpers import write_config

    cfg = str(write_config(tmp_path))
    src = model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER
    assert main(["models", "import", str(src), "--name", "spheres", "--config", cfg]) == 0
    assert "installed spheres (nnunet-v2)" in capsys.readouterr().out
    assert main(["models", "list", "--config", cfg]) == 0
    assert "spheres" in (listed := capsys.readouterr().out) and "nnU-Net v2: fold(s) 0; labels 1=sphere installed" in listed
    for action in ("show", "check"):
        assert main(["models", action, "spheres", "--config", cfg]) == 0
        assert "nnU-Net v2 model, run by nnU-Net's own predictor; fold(s) 0; labels 1=sphere" in capsys.readouterr().out
    (tmp_path / "storage" / "models" / "spheres" / "fold_0" / "checkpoint_final.pth").unlink()
    assert main(["models", "check", "spheres", "--config", cfg]) != 0
    assert "missing fold_*/checkpoint_final.pth" in capsys.readouterr().err


CODING = {
    "modalities": ["CT"], "body_parts": ["CHEST"], "intended_use": "test spheres; not for diagnosis",
    "labels": [{"value": 1, "name": "sphere", "lesion": True, "color": [255, 64, 0],
                "snomed": {"code": "27925004", "meaning": "Nodule"},
                "category": {"code": "49755003", "meaning": "Morphologically Altered Structure"},
                "site": {"code": "39607008", "meaning": "Lung"}}],
}


def test_node_runs_an_nnunet_folder_with_its_coding_file(model_root: Path, tmp_path: Path) -> None:
    """An nnU-Net folder is a bundle: the engine and ``dicomnode infer`` run it through nnU-Net's predictor, coded by dicomnode.json."""
    from ai.bundle import NNUNET_SOURCE, load_bundle
    from ai.engine import Engine
    from dicomnode.cli.main import main

    folder = tmp_path / "spheres"
    shutil.copytree(model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER, folder)
    plain = load_bundle(folder)  # without a coding file: named, not coded
    assert plain.source == NNUNET_SOURCE and [lb.name for lb in plain.labels] == ["sphere"]
    assert plain.labels[0].snomed_code is None and plain.modalities == ("CT",)
    (folder / "dicomnode.json").write_text(json.dumps(CODING))
    bundle = load_bundle(folder)
    label = bundle.labels[0]
    assert (label.snomed_code, label.category_code, label.lesion, label.color) == ("27925004", "49755003", True, (255, 64, 0))
    assert bundle.body_parts == ("CHEST",) and bundle.intended_use == "test spheres; not for diagnosis"

    rng = np.random.default_rng(11)
    image, _truth = _sphere_image(rng, (36, 30, 20), (0.85, 0.95, 2.0))
    vol = Volume(image, (0.85, 0.95, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    res = Engine(bundle, device="cpu").run(vol.array, vol.spacing, vol.direction)
    ref = NnUNetModel(folder, device="cpu").run(vol.array, vol.spacing, vol.origin, vol.direction)
    assert res.labels is not None
    np.testing.assert_array_equal(res.labels, ref.labels)
    (sphere,) = res.measurements
    assert len(sphere.lesions) == 1 and len(res.findings) == 1  # measured as a lesion, as the coding file says
    assert res.timings["infer"] > 0

    src = tmp_path / "case.nii.gz"
    _write(image, src, (0.85, 0.95, 2.0))
    out = tmp_path / "infer"
    assert main(["infer", str(src), "--out", str(out), "--model", str(folder), "-q"]) == 0
    written = np.asarray(nib.load(str(out / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(written, ref.labels)


@pytest.mark.parametrize(
    ("coding", "message"),
    [
        ({"labels": [{"value": 7, "name": "x"}]}, "dicomnode.json: label 7 is not one of the model's labels (1)"),
        ({"colour": [1, 2, 3]}, "dicomnode.json: unknown key 'colour'"),
        ({"labels": [{"value": 1, "color": [300, 0, 0]}]}, "color must be three integers 0-255"),
        ({"labels": [{"value": 1, "laterality": "middle"}]}, "laterality"),
    ],
)
def test_a_bad_coding_file_is_refused_in_words(model_root: Path, tmp_path: Path, coding: dict[str, object], message: str) -> None:
    from ai.bundle import BundleError, load_bundle

    folder = tmp_path / "spheres"
    shutil.copytree(model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER, folder)
    (folder / "dicomnode.json").write_text(json.dumps(coding))
    with pytest.raises(BundleError, match=re.escape(message) if message != "laterality" else "laterality"):
        load_bundle(folder)


def test_a_totalsegmentator_task_is_installed_run_and_coded_by_totalsegmentator_s_own_table(model_root: Path, tmp_path: Path) -> None:
    """A TotalSegmentator weights folder (random-ish weights, TotalSegmentator's layout and label names).

    ``models import`` names its task folders; a task installs as the nnU-Net v2 folder it is and runs
    through nnU-Net's predictor; its segments take the codes of TotalSegmentator's own table (from the
    installed package), here upper lobe of lung, left.
    """
    from ai.bundle import load_bundle
    from ai.engine import Engine
    from ai.standard_codes import table_path
    from dicomnode.jobs.models import bundle_path

    if table_path() is None:
        pytest.fail("TotalSegmentator is not installed: scripts/install.sh --test-tools installs it (--no-deps)")
    results = tmp_path / "totalsegmentator" / "nnunet" / "results"
    task = results / "Dataset291_TotalSegmentator_part1_organs_1559subj" / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
    shutil.copytree(model_root / "nnUNet_results" / DATASET / TRAINER_FOLDER, task)
    ds = json.loads((task / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "lung_upper_lobe_left": 1}
    (task / "dataset.json").write_text(json.dumps(ds))
    models = tmp_path / "models"
    assert model_format(results) is ModelFormat.TOTALSEGMENTATOR
    with pytest.raises(DicomNodeError, match="import one task at a time.*Dataset291_TotalSegmentator_part1_organs_1559subj"):
        install_model(results, "ts", models)
    dest, fmt = install_model(task, "ts-lobe", models)
    assert fmt is ModelFormat.NNUNET
    bundle = load_bundle(bundle_path("ts-lobe", models))
    (lobe,) = bundle.labels
    assert (lobe.snomed_code, lobe.snomed_meaning, lobe.category_code) == ("45653009", "Upper lobe of lung", "123037004")
    assert lobe.laterality is not None and lobe.laterality.value == "left" and lobe.color == (71, 232, 244)
    rng = np.random.default_rng(5)
    image, _ = _sphere_image(rng, (36, 30, 20), (0.85, 0.95, 2.0))
    res = Engine(bundle, device="cpu").run(image, (0.85, 0.95, 2.0), np.eye(3))
    ref = NnUNetModel(dest, device="cpu").run(image, (0.85, 0.95, 2.0))
    assert res.labels is not None and res.labels.any()
    np.testing.assert_array_equal(res.labels, ref.labels)
