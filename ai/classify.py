"""The classification task of the training pipeline: nodule present or absent, per volume.

The input is what :class:`ai.engine.Engine` feeds a classification bundle: the
volume cropped to the body (voxels above -500 HU plus a margin), resampled to
the bundle's spacing, windowed, then resized to the ROI (:func:`to_roi`).
The network is built from MONAI residual units and ends in a global max
pool, so a small bright lesion anywhere in the lungs can decide the answer;
it has two outputs (no nodule, nodule present) and is trained with
class-balanced sampling and cross-entropy.  Validation reports the ROC AUC.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from ai.preprocess import prepare

if TYPE_CHECKING:
    from ai.train import TrainConfig

logger = logging.getLogger(__name__)

WINDOW = {"kind": "window", "low": -1000, "high": 1000}
BODY_ABOVE = -500.0  # HU: the crop to the body, as the bundle's crop_foreground_above
CLASSES = ("no nodule", "nodule present")
NODULE_LABEL = 2


def to_roi(tensor: torch.Tensor, roi: tuple[int, int, int]) -> torch.Tensor:
    """``(C, D, H, W)`` -> ``(1, C, *roi)`` by trilinear resizing (the engine does the same)."""
    return F.interpolate(tensor[None], size=roi, mode="trilinear", align_corners=False)


class NoduleNet(torch.nn.Module):
    """Residual conv stages (MONAI), global max pooling, a linear head."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 96), classes: int = 2) -> None:
        super().__init__()
        from monai.networks.blocks import ResidualUnit

        stages: list[torch.nn.Module] = []
        c_in = 1
        for c in channels:
            stages.append(ResidualUnit(3, c_in, c, strides=2, kernel_size=3, subunits=2, norm="INSTANCE", act="PRELU"))
            c_in = c
        self.features = torch.nn.Sequential(*stages)
        self.head = torch.nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.amax(f, dim=(2, 3, 4)))


def load_volume(image: Path, labels: Path, spacing: tuple[float, float, float], roi: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """The classifier's input (float16, ``roi``) and the truth: 1 when the labels hold a nodule."""
    import nibabel as nib

    img = nib.load(str(image))
    aff = img.affine
    sp = np.linalg.norm(aff[:3, :3], axis=0)
    direction = np.diag([-1.0, -1.0, 1.0]) @ (aff[:3, :3] / sp)  # RAS -> LPS
    hu = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.float32)
    present = int((np.asarray(nib.load(str(labels)).dataobj) == NODULE_LABEL).any())
    x = prepare(hu, tuple(sp), direction, target_spacing_xyz=spacing, normalization=WINDOW, foreground_above=BODY_ABOVE)
    return to_roi(x.tensor, roi)[0, 0].numpy().astype(np.float16), present


class VolumeStream(IterableDataset):  # type: ignore[type-arg]
    """Endless class-balanced, augmented whole volumes."""

    def __init__(self, cases: list[tuple[np.ndarray, int]], seed: int) -> None:
        self.cases, self.seed = cases, seed
        self.by_class = {k: [c for c in cases if c[1] == k] for k in (0, 1)}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0, 7])
        pools = [p for p in self.by_class.values() if p] or [self.cases]
        while True:
            pool = pools[int(rng.integers(len(pools)))]
            x, y = pool[int(rng.integers(len(pool)))]
            x = x.astype(np.float32)
            if rng.random() < 0.5:
                x = x[:, :, ::-1]
            shift = [int(rng.integers(-4, 5)) for _ in range(3)]
            x = np.roll(x, shift, axis=(0, 1, 2))
            x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
            x = x + rng.normal(0, 0.01, x.shape).astype(np.float32)
            yield torch.from_numpy(np.ascontiguousarray(x))[None], torch.tensor(y, dtype=torch.int64)


def auc(scores: list[float], truth: list[int]) -> float:
    """ROC AUC: the chance a positive scores above a negative (ties count half)."""
    pos = [s for s, t in zip(scores, truth) if t]
    neg = [s for s, t in zip(scores, truth) if not t]
    if not pos or not neg:
        return float("nan")
    return float(sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)))


class ClassificationTask:
    """What :func:`ai.train.train` needs to train the nodule classifier."""

    metric = "auc"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def dataset(self, pairs: list[tuple[Path, Path]]) -> IterableDataset:  # type: ignore[type-arg]
        cases = [load_volume(i, lab, self.cfg.spacing, self.cfg.patch) for i, lab in pairs]
        logger.info("classifier training set: %d with nodules, %d without", sum(c[1] for c in cases), sum(1 - c[1] for c in cases))
        return VolumeStream(cases, self.cfg.seed)

    def network(self) -> torch.nn.Module:
        return NoduleNet(tuple(self.cfg.channels))

    def loss(self) -> Any:
        return torch.nn.CrossEntropyLoss()

    def validate(self, model: torch.nn.Module, pairs: list[tuple[Path, Path]], device: torch.device) -> dict[str, float]:
        model.eval()
        scores, truth = [], []
        with torch.inference_mode():
            for i, lab in pairs:
                x, y = load_volume(i, lab, self.cfg.spacing, self.cfg.patch)
                logits = model(torch.from_numpy(x.astype(np.float32))[None, None].to(device)).float().cpu()[0]
                scores.append(float(torch.softmax(logits, 0)[1]))
                truth.append(y)
        acc = float(np.mean([(s >= 0.5) == bool(t) for s, t in zip(scores, truth)]))
        return {"auc": auc(scores, truth), "accuracy": acc}

    def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
        net = self.network()
        net.load_state_dict(state)
        net.eval()
        example = torch.zeros(1, 1, *self.cfg.patch)
        torch.jit.trace(net, example).save(str(out / "model.ts"))
        torch.onnx.export(net, example, str(out / "model.onnx"), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17)
        manifest = {
            "name": out.name, "version": "1.0.0", "task": "classification", "modalities": ["CT"], "body_parts": ["CHEST"],
            "input": {"spacing": list(self.cfg.spacing), "orientation": "LPS", "normalization": WINDOW},
            "inference": {"roi_size": list(self.cfg.patch), "overlap": 0.0, "batch_size": 1},
            "labels": [
                {"value": 0, "name": CLASSES[0], "color": [0, 160, 0]},
                {"value": 1, "name": CLASSES[1], "color": [255, 64, 0], "snomed": {"code": "27925004", "meaning": "Nodule"}},
            ],
            "postprocessing": {"crop_foreground_above": BODY_ABOVE},
            "intended_use": "demonstration; not for diagnosis",
            "weights": {"format": "torchscript", "file": "model.ts"},
            "training": {"config": asdict(self.cfg)},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
