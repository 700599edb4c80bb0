"""MONAI Model Zoo bundles run with their own transforms, and match ``python -m monai.bundle run``.

A small real bundle is built at test time: ``Orientationd``, ``Spacingd`` and
``ScaleIntensityRanged`` in its preprocessing, a ``SlidingWindowInferer``, a
briefly fitted UNet (random weights give salt-and-pepper labels, and agreement
would then measure floating-point noise) and ``Invertd`` back to the input grid.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from ai.bundle import load_bundle
from ai.monai_runner import MonaiRunner, explain

CHANNELS = {"0": "background", "1": "air ball", "2": "bone ball"}
SHAPE_XYZ = (84, 84, 28)  # 34 x 34 x 35 voxels at 2 mm: no window is padded with air
SPACING = (0.8, 0.8, 2.5)
# LPS-ish: x runs to the patient's left and y to the back, so Orientationd("RAS") must flip both
AFFINE = np.array([[-0.8, 0.0, 0.0, 20.0], [0.0, -0.8, 0.0, 15.0], [0.0, 0.0, 2.5, -30.0], [0.0, 0.0, 0.0, 1.0]])

PREPROCESSING: list[dict[str, Any]] = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"},
]
NETWORK: dict[str, Any] = {
    "_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
    "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch",
}


def inference_config() -> dict[str, Any]:
    """``configs/inference.json`` written the way Model Zoo bundles are (an evaluator and a ``run`` section)."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": NETWORK,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": copy.deepcopy(PREPROCESSING)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
            "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def balls(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A scaled-intensity training volume (as the preprocessing makes it): an air and a bone ball in soft tissue."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float32)
    hu = np.full(shape, 0.0, np.float32)
    lab = np.zeros(shape, np.int64)
    for value, intensity in ((1, -900.0), (2, 450.0)):
        r = rng.uniform(3.0, 6.0)
        c = rng.uniform(r, np.array(shape) - r)
        inside = np.linalg.norm(grid - c, axis=-1) <= r
        hu[inside], lab[inside] = intensity, value
    hu += rng.normal(0, 60, shape).astype(np.float32)
    return np.clip((hu + 1000) / 1500, 0, 1), lab


def fit(steps: int = 100) -> torch.nn.Module:
    """The bundle's UNet, fitted briefly on balls in noise so that its labels are smooth."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        pairs = [balls(rng, (32, 32, 32)) for _ in range(2)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return net.eval()


def write_bundle(root: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    torch.save(state, root / "models" / "model.pt")
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0", "name": "Two balls CT segmentation", "description": "test bundle: two balls in noise",
        "monai_version": "1.6.1", "pytorch_version": torch.__version__.split("+")[0], "numpy_version": np.__version__,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1, "spatial_shape": [32, 32, 32],
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3, "spatial_shape": [32, 32, 32],
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": CHANNELS}},
        },
    }, indent=1))
    return root


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return fit().state_dict()


@pytest.fixture
def bundle(tmp_path: Path, weights: dict[str, torch.Tensor]) -> Path:
    return write_bundle(tmp_path / "two_balls", weights, inference_config())


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The input: an air and a bone ball in noisy soft tissue, in HU, on an LPS-ish 0.8 x 0.8 x 2.5 mm grid, as NIfTI."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE_XYZ], indexing="ij")
    mm = np.stack([i * SPACING[0], j * SPACING[1], k * SPACING[2]], -1)
    hu = np.full(SHAPE_XYZ, 0.0, np.float32)
    hu[np.linalg.norm(mm - (30.0, 34.0, 30.0), axis=-1) <= 8.0] = -900.0
    hu[np.linalg.norm(mm - (46.0, 40.0, 44.0), axis=-1) <= 7.0] = 450.0
    hu += np.random.default_rng(1).normal(0, 40, SHAPE_XYZ).astype(np.float32)
    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(hu, AFFINE), data / "case.nii.gz")
    return data / "case.nii.gz"


def reference(bundle: Path, volume: Path, out: Path) -> nib.Nifti1Image:
    """``python -m monai.bundle run`` with the bundle's own evaluator, loader and writer."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"), "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str(volume.parent), "--output_dir", str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted(out.glob("*_seg.nii.gz"))
    assert len(written) == 1, (r.stdout[-2000:], r.stderr[-2000:])
    img = nib.load(str(written[0]))
    assert isinstance(img, nib.Nifti1Image)
    return img


def test_runner_matches_monai_bundle_run(bundle: Path, volume: Path, tmp_path: Path) -> None:
    from dicomnode.cli.infer import infer, load_input

    ref = reference(bundle, volume, tmp_path / "reference")
    ref_labels = np.asarray(ref.dataobj).squeeze().astype(np.uint8)
    assert ref_labels.shape == SHAPE_XYZ and np.allclose(ref.affine, AFFINE, atol=1e-4), "the reference is on the input grid"
    assert {1, 2} <= set(np.unique(ref_labels).tolist()), "the fitted network finds both balls"

    # The runner on the volume as the node holds it: [z, y, x], spacing and LPS direction.
    vol = load_input(volume)
    out = MonaiRunner(bundle, torch.device("cpu")).run(vol.array, vol.spacing, vol.direction, vol.origin)
    ours = out.labels.transpose(2, 1, 0)  # back to the file's x, y, z
    agreement = float((ours == ref_labels).mean())
    assert agreement >= 0.995, f"{agreement:.4%} of voxels agree with monai.bundle run"
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-4)
    assert out.probabilities is None, "AsDiscreted(argmax) keeps no probabilities"

    # `dicomnode infer` runs it through the engine and writes the labels on the input's grid.
    summary = infer(volume, tmp_path / "infer", str(bundle), device="cpu")
    written = nib.load(str(tmp_path / "infer" / "labels.nii.gz"))
    assert isinstance(written, nib.Nifti1Image)
    np.testing.assert_allclose(written.affine, ref.affine, atol=1e-4)
    assert float((np.asarray(written.dataobj).astype(np.uint8) == ref_labels).mean()) >= 0.995
    volumes = {m["name"]: m["volume_ml"] for m in summary["measurements"]}
    assert set(volumes) == {"air ball", "bone ball"}
    # 4/3 pi r^3: 2.14 mL and 1.44 mL
    assert volumes["air ball"] == pytest.approx(2.14, rel=0.35) and volumes["bone ball"] == pytest.approx(1.44, rel=0.35)


def test_the_bundle_intensity_scaling_is_applied(bundle: Path, volume: Path, tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Without its ScaleIntensityRanged the same network sees raw HU and labels something else."""
    from dicomnode.cli.infer import load_input

    config = inference_config()
    config["preprocessing"]["transforms"] = [t for t in PREPROCESSING if t["_target_"] != "ScaleIntensityRanged"]
    raw = write_bundle(tmp_path / "raw_hu", weights, config)
    vol = load_input(volume)
    scaled = MonaiRunner(bundle, torch.device("cpu")).run(vol.array, vol.spacing, vol.direction).labels
    unscaled = MonaiRunner(raw, torch.device("cpu")).run(vol.array, vol.spacing, vol.direction).labels
    assert float((scaled != unscaled).mean()) > 0.05
    assert load_bundle(bundle).source == "monai-bundle"


def test_check_names_what_monai_cannot_build(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicomnode.cli.main import main

    assert explain(bundle) == []
    config = inference_config()
    config["preprocessing"]["transforms"].insert(3, {"_target_": "monai.transforms.NoSuchTransformd", "keys": "image"})
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "configs" / "inference.json").write_text(json.dumps(config))
    problems = explain(broken)
    assert len(problems) == 1 and "preprocessing transform #3 'monai.transforms.NoSuchTransformd' cannot be built" in problems[0]

    assert main(["models", "check", str(broken)]) == 1
    assert "NoSuchTransformd' cannot be built" in capsys.readouterr().err
    assert main(["models", "check", str(bundle)]) == 0
    assert "Two balls CT segmentation 0.1.0: OK" in capsys.readouterr().out
    assert main(["models", "show", str(bundle)]) == 0
    shown = capsys.readouterr().out
    assert "preprocessing Orientationd, Spacingd, ScaleIntensityRanged, EnsureTyped" in shown and "normalization" not in shown

    (broken / "configs" / "inference.json").write_text(json.dumps(inference_config()))
    (broken / "models" / "model.pt").unlink()
    assert explain(broken) == ["neither models/model.pt nor models/model.ts exists"]


def test_probabilities_kept_by_the_postprocessing_reach_the_engine(bundle: Path, volume: Path, tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """A postprocessing without AsDiscreted leaves probabilities on the input grid: their argmax is the label map."""
    from ai.engine import Engine
    from dicomnode.cli.infer import load_input

    config = inference_config()
    post = config["postprocessing"]["transforms"]
    config["postprocessing"]["transforms"] = [t for t in post if t["_target_"] not in ("AsDiscreted", "SaveImaged")]
    soft = write_bundle(tmp_path / "soft", weights, config)
    vol = load_input(volume)
    res = Engine(load_bundle(soft), device="cpu").run(vol.array, vol.spacing, vol.direction, keep_probabilities=True)
    assert res.labels is not None and res.probabilities is not None
    assert res.probabilities.shape == (3, *vol.array.shape)
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-4)
    hard = MonaiRunner(bundle, torch.device("cpu")).run(vol.array, vol.spacing, vol.direction).labels
    assert float((res.labels == hard).mean()) >= 0.999  # the same Invertd; our argmax instead of AsDiscreted
    assert {m.name for m in res.measurements} == {"air ball", "bone ball"}


def test_the_node_runs_a_bundle_without_loading_ignite(bundle: Path, volume: Path, tmp_path: Path) -> None:
    """MONAI imported by the node skips PyTorch-Ignite (1 s and torch.distributed.optim), and still runs the bundle.

    A fresh process, since this test session may have imported MONAI already.
    """
    script = f"""
import json, sys
from pathlib import Path
import numpy as np, torch
from ai.monai_runner import MonaiRunner
from dicomnode.cli.infer import load_input
vol = load_input(Path({str(volume)!r}))
out = MonaiRunner(Path({str(bundle)!r}), torch.device("cpu")).run(vol.array, vol.spacing, vol.direction, vol.origin)
np.save({str(tmp_path / "labels.npy")!r}, out.labels)
loaded = sorted(m for m in ("ignite", "torch.distributed.optim") if m in sys.modules)
import ignite.engine  # hidden only while MONAI itself was imported
print(json.dumps({{"loaded": loaded, "ignite_after": "ignite.engine" in sys.modules}}))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"loaded": [], "ignite_after": True}

    from dicomnode.cli.infer import load_input

    vol = load_input(volume)
    here = MonaiRunner(bundle, torch.device("cpu")).run(vol.array, vol.spacing, vol.direction, vol.origin)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), here.labels)
