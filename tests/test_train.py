"""Training: two steps single-process and with DDP on 2 CPU processes (gloo); checkpoints resume.

Both tasks: lung/nodule segmentation and the nodule present/absent classifier.
TensorBoard event files are written beside the JSON-lines log.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai.bundle import check_bundle

TRAIN = ["--epochs", "1", "--steps-per-epoch", "2", "--patch", "16", "16", "16", "--spacing", "8", "8", "8", "--workers", "0", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("phantoms")
    for extra in (["--count", "3"], ["--count", "2", "--seed", "500", "--max-nodules", "0"]):  # some without nodules
        r = subprocess.run([sys.executable, "-m", "dicomnode", "phantom", str(d), "--matrix", "48", "--slices", "20", "--format", "nifti", *extra],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return d


def log_of(bundle: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (bundle / "train_log.jsonl").read_text().splitlines()]


def test_two_steps_then_resume(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-m", "dicomnode", "train", "--data", str(data), "--out", str(out), *TRAIN], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    [epoch] = log_of(out)
    assert math.isfinite(float(epoch["loss"]))  # type: ignore[arg-type]
    # The step time is logged apart from validation (bench/train_epoch.py compares AMP with fp32 by it).
    assert 0 < float(epoch["train_seconds"]) <= float(epoch["seconds"])  # type: ignore[arg-type]
    assert epoch["amp"] is (epoch["device"] == "cuda")  # AMP only on CUDA; the CPU trains in fp32
    assert (out / "checkpoints" / "last.pt").exists()
    bundle = check_bundle(out)  # the export is a valid bundle, in all three formats
    assert [lb.name for lb in bundle.labels] == ["right lung", "left lung", "nodule"] and (out / "model.ts").exists() and (out / "model.onnx").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # Resume: a second run with more epochs continues from the checkpoint.
    more = [a if a != "1" or i != 1 else "2" for i, a in enumerate(TRAIN)]
    r = subprocess.run([sys.executable, "-m", "dicomnode", "train", "--data", str(data), "--out", str(out), *more], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [e["epoch"] for e in log_of(out)] == [1, 2]
    assert "trained 2 step(s)" in r.stdout  # only the new epoch ran


def test_ddp_on_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))  # torchrun's agent leaves a torchelastic_* folder there
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dicomnode", "train",
         "--data", str(data), "--out", str(out), *TRAIN],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [epoch] = log_of(out)
    assert epoch["world"] == 2 and math.isfinite(float(epoch["loss"]))  # type: ignore[arg-type]


CLASSIFY = ["--task", "classification", "--epochs", "1", "--steps-per-epoch", "2", "--patch", "16", "16", "16", "--spacing", "8", "8", "8",
            "--channels", "4", "8", "--batch-size", "2", "--workers", "0", "-q"]


def test_classifier_two_steps_then_resume_and_ddp(data: Path, tmp_path: Path) -> None:
    from ai.bundle import load_bundle
    from ai.engine import Engine
    from ai.phantoms import generate

    out = tmp_path / "classifier"
    r = subprocess.run([sys.executable, "-m", "dicomnode", "train", "--data", str(data), "--out", str(out), *CLASSIFY], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    [epoch] = log_of(out)
    assert math.isfinite(float(epoch["loss"])) and set(epoch["val"]) == {"auc", "accuracy"}  # type: ignore[arg-type]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    bundle = check_bundle(out)
    assert bundle.task == "classification" and [lb.name for lb in bundle.labels] == ["no nodule", "nodule present"]
    ph = generate(7, matrix=48, slices=20)
    probs = Engine(load_bundle(out), device="cpu").run(ph.hu.astype("float32"), ph.spacing, np.eye(3)).class_probabilities
    assert set(probs) == {"no nodule", "nodule present"} and math.isclose(sum(probs.values()), 1.0, rel_tol=1e-5)
    more = [a if a != "1" or i != 3 else "2" for i, a in enumerate(CLASSIFY)]
    r = subprocess.run([sys.executable, "-m", "dicomnode", "train", "--data", str(data), "--out", str(out), *more], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [e["epoch"] for e in log_of(out)] == [1, 2]
    ddp = tmp_path / "classifier-ddp"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dicomnode", "train",
         "--data", str(data), "--out", str(ddp), *CLASSIFY],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)), timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert log_of(ddp)[0]["world"] == 2


def _lesion_share(sampling: str) -> float:
    """Share of patches that contain a tiny (8-voxel) lesion beside a large one and two large organs."""
    from ai.training.tasks.segmentation import PatchStream

    lab = np.zeros((96, 96, 96), np.uint8)
    lab[8:88, 8:44, 8:44] = 1
    lab[8:88, 52:88, 52:88] = 1
    lab[20:22, 20:22, 20:22] = 2  # the small lesion, inside the first organ
    lab[60:75, 60:75, 60:75] = 2  # a large one
    stream = iter(PatchStream([(np.zeros(lab.shape, np.float16), lab)], (24, 24, 24), 1.0, seed=3, sampling=sampling))
    hits = 0
    for _ in range(300):
        _, y = next(stream)
        hits += int(0 < int((y == 2).sum()) <= 8)
    return hits / 300


def test_component_sampling_shows_small_lesions_as_often_as_large_ones() -> None:
    from ai.training.sampling import _components

    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1:3, 1:3, 1:3] = 2
    lab[6:9, 6:9, 6:9] = 2
    lab[0, 9, 9] = 1
    comps = _components(lab)
    assert sorted(len(c) for c in comps[2]) == [8, 27] and [len(c) for c in comps[1]] == [1]
    # Voxel sampling sees the 8-voxel lesion only when a patch centred on the organ around it happens to
    # include it; component sampling centres near it about a quarter of the time (label 2 half the time,
    # then that component half of that), plus those incidental hits.
    by_component, by_voxel = _lesion_share("components"), _lesion_share("voxels")
    assert by_component > 0.2
    assert by_component > 2.5 * by_voxel


def test_unknown_sampling_is_refused() -> None:
    from ai.errors import AIError
    from ai.training.tasks.segmentation import PatchStream

    with pytest.raises(AIError, match="unknown patch sampling"):
        PatchStream([], (8, 8, 8), 0.5, 0, sampling="lesions")


def test_hard_negative_patches_and_no_flip() -> None:
    """A share of patches centres on hard negatives (vessels...), and with flips off no patch is mirrored."""
    from ai.training.tasks.segmentation import PatchStream

    img = np.tile(np.arange(32, dtype=np.float16), (32, 32, 1))  # an x-ramp: a mirrored patch would run backwards
    lab = np.zeros((32, 32, 32), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    hard = np.array([[25, 25, x] for x in range(32)], dtype=np.int16)  # a "vessel" along x
    stream = PatchStream([(img, lab)], (4, 4, 4), 0.2, seed=3, hard=[hard], hard_fraction=0.5, flip=False)
    patches = iter(stream)
    for _ in range(100):
        x, _y = next(patches)
        assert np.all(np.diff(x[0, 0, 0].numpy()) > 0), "flip is off: the ramp keeps its direction"
    rng = np.random.default_rng(0)
    centres = [stream._centre(0, rng) for _ in range(400)]
    on_hard = np.mean([c[0] == 25 and c[1] == 25 for c in centres])
    assert 0.4 < on_hard < 0.6  # r < 0.2: foreground; 0.2 <= r < 0.7: a hard negative; else anywhere


def test_in_memory_case_is_the_nifti_case(tmp_path: Path) -> None:
    """``case_arrays`` on a phantom in memory gives exactly what ``load_case`` gives from its NIfTI files (any position)."""
    from ai.phantoms import generate
    from ai.training.data import case_arrays, load_case

    positions = set()
    for seed in (3, 17):  # head-first prone and feet-first supine
        ph = generate(seed, matrix=48, slices=20)
        positions.add(ph.position)
        ph.write_nifti(tmp_path / f"{seed}_image.nii.gz", tmp_path / f"{seed}_labels.nii.gz")
        img_f, lab_f = load_case(tmp_path / f"{seed}_image.nii.gz", tmp_path / f"{seed}_labels.nii.gz", (4.0, 4.0, 4.0))
        img_m, lab_m = case_arrays(ph.hu, ph.labels, ph.spacing, ph.direction, (4.0, 4.0, 4.0))
        assert img_f.shape == img_m.shape and lab_f.any()
        np.testing.assert_array_equal(img_f, img_m)
        np.testing.assert_array_equal(lab_f, lab_m)
    assert len(positions) == 2


def _training_script() -> Any:
    """scripts/train_default_model.py as a module (it is a script, not part of a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_default_model", Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_gpu_training_script_runs_on_the_cpu(tmp_path: Path) -> None:
    """scripts/train_default_model.py (the GPU recipe of the default bundle) end to end with tiny numbers.

    Phantoms straight onto the grid, one variant's weights that build_unet loads, the step rate
    planned, validation Dice in the log; the training time is what generation leaves of the budget.
    """
    import torch

    from ai.training.config import TrainConfig
    from ai.training.tasks.segmentation import build_unet

    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "scripts/train_default_model.py", "--out", str(out), "--scratch", str(tmp_path / "cases"),
         "--seeds", "0:2", "--val-seeds", "6000:6001", "--matrix", "48", "--spacing", "6", "--patch", "16", "16", "16",
         "--variant", "tiny:4,8,16", "--budget-minutes", "0.05", "--warmup", "5", "--batch", "2", "--workers", "0", "--procs", "2", "--device", "cpu"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0.01 of the 0.05 minutes left for training" in r.stderr  # generation took the budget: the floor
    log = [json.loads(line) for line in (out / "tiny.jsonl").read_text().splitlines()]
    assert log[0]["channels"] == [4, 8, 16] and log[0]["cases"] == 2
    assert any("planned_steps" in e for e in log)
    done = log[-1]
    assert done["done"] and done["steps"] >= 6 and set(done["val_dice"]) == {"right lung", "left lung", "nodule"}
    cfg = TrainConfig(data="", out="", channels=(4, 8, 16), strides=(2, 2))
    build_unet(cfg).load_state_dict(torch.load(out / "tiny.pt", map_location="cpu", weights_only=True))
    assert len(json.loads((out / "cases.json").read_text())["cases"]) == 3

    # A warm start from those weights, with small nodules sampled more; weights of another shape are refused in words.
    base = [sys.executable, "scripts/train_default_model.py", "--scratch", str(tmp_path / "cases"), "--seeds", "2:4",  # with nodules
            "--val-seeds", "6000:6001", "--matrix", "48", "--spacing", "6", "--patch", "16", "16", "16", "--minutes", "0.01",
            "--warmup", "5", "--batch", "2", "--workers", "0", "--procs", "2", "--device", "cpu", "--small", "0.1", "--small-mm", "20",
            "--hilar", "0.5"]
    root = Path(__file__).resolve().parents[1]
    # The variant sets its own share of small-nodule patches (0.5 over the command's 0.1).
    r = subprocess.run([*base, "--out", str(tmp_path / "warm"), "--variant", "tiny:4,8,16:small=0.5", "--init", str(out / "tiny.pt")],
                       capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((tmp_path / "warm" / "tiny.jsonl").read_text().splitlines()[0])
    assert first["init"] == str(out / "tiny.pt") and first["small"] == 0.5 and first["small_voxels"] == int(math.pi / 6 * 20**3 / 6**3)
    assert first["small_nodules"] >= 1 and first["hilar"] == 0.5 and first["hilar_voxels"] >= 1
    r = subprocess.run([*base, "--out", str(tmp_path / "wrong"), "--variant", "wide:8,16,32", "--init", str(out / "tiny.pt")],
                       capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode != 0 and "does not fit variant wide (channels 8,16,32)" in r.stderr
    r = subprocess.run([*base, "--out", str(tmp_path / "typo"), "--variant", "tiny:4,8,16:smal=0.5"], capture_output=True, text=True,
                       cwd=root, timeout=600)
    assert r.returncode == 2 and "'smal=0.5' is not KEY=VALUE with KEY one of small, hilar" in r.stderr  # before any phantom
    assert not (tmp_path / "typo").exists()

    # With --small 1 every structure-centred patch of a case with a small nodule holds one.
    script = _training_script()
    cases = script.Cases(tmp_path / "cases", [2, 3])
    small20 = script.small_nodules(cases, 20)
    assert any(small20) and all(len(v) <= 20 for per_case in small20 for v in per_case)
    assert all(script.small_nodules(cases, 50))  # every case has one: every patch is centred on one
    stream = iter(script.patch_stream(cases, (16, 16, 16), 1.0, 0.0, 0, small=1.0, smalls=script.small_nodules(cases, 50)))
    for _ in range(10):
        _, y = next(stream)
        assert (y == 3).any()
    # The lung root's hard negatives are hard negatives, and fewer than all of them.
    for hard, hilar in zip(cases.hard, cases.hilar):
        assert 0 < len(hilar) < len(hard) and {tuple(v) for v in hilar} <= {tuple(v) for v in hard}


def test_the_lung_roots_hard_negatives_lie_near_the_hila() -> None:
    """``hilar_mask``: the hard negatives within HILAR_MM of a hilum, on the phantom's own grid (scripts/train_default_model.py)."""
    from ai.phantoms import generate

    script = _training_script()
    ph = generate(6005, matrix=96, slice_mm=(3.0, 3.0), hard_negatives=True, noise=False)
    near = script.hilar_mask(ph)
    assert near.any() and not (near & ~ph.hard_negatives).any()
    hila = np.asarray(list(ph.meta["hila_lps"].values()))

    def dist(mask: np.ndarray) -> np.ndarray:
        lps = ph.index_to_lps(np.argwhere(mask)[:, ::-1])
        return np.min(np.linalg.norm(lps[:, None, :] - hila[None], axis=2), axis=1)

    assert dist(near).max() <= script.HILAR_MM
    assert dist(ph.hard_negatives & ~near).min() > script.HILAR_MM  # every hard negative that near leaves out is farther
    assert 0.02 < near.sum() / ph.hard_negatives.sum() < 0.5  # the lung root, not the lungs


def test_the_device_run_is_a_command_the_training_script_accepts() -> None:
    """scripts/device_retrain.sh (the next GPU lease's one command) plans a run the training script takes.

    Its defaults: a warm start from the shipped weights, small nodules and the lung root sampled more, on the GPU,
    within the device's 10-minute command limit; each number can be overridden from the environment.
    """
    root = Path(__file__).resolve().parents[1]
    script = _training_script()

    def plan(**env: str) -> Any:
        r = subprocess.run(["bash", "scripts/device_retrain.sh", "plan"], capture_output=True, text=True, cwd=root, timeout=60,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        words = r.stdout.split()
        assert words[:2] == ["python3", "scripts/train_default_model.py"]
        return script.parser().parse_args(words[2:])

    args = plan()
    assert args.init == "ai/bundles/chest-ct-lungs-nodules/model.pt" and (root / args.init).is_file()
    assert args.device == "cuda" and args.small == 0.3 and args.hilar == 0.5
    # Two warm starts side by side: with and without more small-nodule patches.
    assert [script.variant_spec(v) for v in args.variant] == [("base", (16, 32, 64, 128), {}),
                                                             ("nosmall", (16, 32, 64, 128), {"small": 0.0})]
    assert args.budget_minutes * 60 < 600  # the device's command limit
    assert plan(BUDGET_MINUTES="2", DEVICE="cpu").budget_minutes == 2.0
    assert plan(VARIANTS="wide:24,48,96,192").variant == ["wide:24,48,96,192"]
    with pytest.raises(ValueError, match="widths must be whole numbers"):
        script.variant_spec("base:16,x")
    # The training gets what generation leaves, less the validation's reserve, and never nothing.
    assert script.training_minutes(9.2, 120.0) == pytest.approx(9.2 - (120.0 + script.VALIDATION_RESERVE_S) / 60)
    assert script.training_minutes(1.0, 600.0) == script.MIN_TRAINING_MINUTES
    r = subprocess.run(["bash", "scripts/device_retrain.sh"], capture_output=True, text=True, cwd=root, timeout=60)
    assert r.returncode == 2 and "carry=[\".whl\"]" in r.stdout  # without a step it explains itself
    assert "Rehearsed with the packages the device has" in r.stdout and "set -euo" not in r.stdout  # the whole header, no code
    r = subprocess.run(["bash", "scripts/device_retrain.sh", "after"], capture_output=True, text=True, cwd=root, timeout=60)
    assert r.returncode == 0 and "train_candidate_classifier.py fit" in r.stdout and "model_quality.py" in r.stdout
