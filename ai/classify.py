"""The classification task of the training pipeline: nodule present or absent, per volume.

The input is what :class:`ai.engine.Engine` feeds a classification bundle: the
volume cropped to the body (voxels above -500 HU plus a margin), resampled to
the bundle's spacing, windowed, then resized to the ROI (:func:`to_roi`).

The network (:class:`NoduleNet`, MONAI residual units) scores every cell of a
coarse grid for "holds a nodule", and answers "is there a nodule anywhere?"
with the highest score.  That lets it learn from far more examples than
there are volumes: it is trained on random patches whose grid cells are
labelled from the nodule masks, half of the patches holding a nodule and
half drawn where there is none (mostly on tissue, bone and the table: the
hard negatives), with a weighted binary cross-entropy per cell.  Validation
runs it on whole volumes exactly as the engine will and reports the ROC AUC.
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

from ai.preprocess import prepare, read_pair

if TYPE_CHECKING:
    from ai.train import TrainConfig

logger = logging.getLogger(__name__)

WINDOW = {"kind": "window", "low": -1000, "high": 1000}
BODY_ABOVE = -500.0  # HU: the crop to the body, as the bundle's crop_foreground_above
CLASSES = ("no nodule", "nodule present")
NODULE_LABEL = 2
PATCH = (48, 48, 48)  # training patches (voxels at the bundle spacing); the ROI is the whole-volume input
POSITIVE_WEIGHT = 4.0


def to_roi(tensor: torch.Tensor, roi: tuple[int, int, int]) -> torch.Tensor:
    """``(C, D, H, W)`` -> ``(1, C, *roi)`` by trilinear resizing (the engine does the same)."""
    return F.interpolate(tensor[None], size=roi, mode="trilinear", align_corners=False)


class NoduleNet(torch.nn.Module):
    """A fully convolutional nodule detector whose maximum answers "is there a nodule?".

    Residual stages (MONAI) reduce the volume by ``2 ** len(strides > 1)``;
    a 1x1x1 convolution scores every cell of that grid.  In training mode
    the network returns the score map (each cell is supervised: does it hold
    a nodule?); in eval mode it returns two logits ``(0, max score)``, so a
    softmax gives P(no nodule), P(nodule present).  Batch normalisation keeps
    patches and whole volumes on the same statistics.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64), strides: tuple[int, ...] = (2, 2, 2, 1)) -> None:
        super().__init__()
        from monai.networks.blocks import ResidualUnit

        stages: list[torch.nn.Module] = []
        c_in = 1
        for c, st in zip(channels, strides):
            stages.append(ResidualUnit(3, c_in, c, strides=st, kernel_size=3, subunits=2, norm="BATCH", act="PRELU"))
            c_in = c
        self.features = torch.nn.Sequential(*stages)
        self.score = torch.nn.Conv3d(c_in, 1, kernel_size=1)
        self.reduction = int(np.prod(strides[: len(channels)]))
        # Subtracted from the top score: the maximum over a whole volume runs higher
        # than over a patch, so the export calibrates it on the validation volumes.
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(self.features(x))  # (B, 1, d, h, w)
        if self.training:
            return scores
        top = torch.amax(scores, dim=(1, 2, 3, 4)) - self.offset
        return torch.stack([torch.zeros_like(top), top], dim=1)


def load_volume(image: Path, labels: Path, spacing: tuple[float, float, float], roi: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """The classifier's whole-volume input (float16, ``roi``), and the truth: 1 when the labels hold a nodule."""
    hu, lab, sp, direction = read_pair(image, labels)
    x = prepare(hu, tuple(sp), direction, target_spacing_xyz=spacing, normalization=WINDOW, foreground_above=BODY_ABOVE)
    return to_roi(x.tensor, roi)[0, 0].numpy().astype(np.float16), int((lab == NODULE_LABEL).any())


def load_grid(image: Path, labels: Path, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The body-cropped volume at ``spacing`` (float16) and its nodule mask on the same grid, for patches."""
    hu, lab, sp, direction = read_pair(image, labels)
    x = prepare(hu, tuple(sp), direction, target_spacing_xyz=spacing, normalization=WINDOW, foreground_above=BODY_ABOVE)
    # The labels get the same reorientation and crop as the image, then nearest-neighbour resampling.
    y = prepare(lab, tuple(sp), direction, target_spacing_xyz=None).tensor[0][x.crop]
    y_t = F.interpolate(y[None, None], size=tuple(x.tensor.shape[1:]), mode="nearest")[0, 0]
    return x.tensor[0].numpy().astype(np.float16), (y_t.numpy() == NODULE_LABEL)


class PatchStream(IterableDataset):  # type: ignore[type-arg]
    """Endless augmented patches: half centred on a nodule (label 1), half holding none (label 0)."""

    def __init__(self, cases: list[tuple[np.ndarray, np.ndarray]], patch: tuple[int, int, int], seed: int, cell: int) -> None:
        self.cases, self.patch, self.seed, self.cell = cases, patch, seed, cell
        self.with_nodules = [i for i, (_, m) in enumerate(cases) if m.any()]
        # Voxels denser than -450 HU (normalised -0.45): where a nodule detector is tempted to fire.
        self.dense = [np.argwhere(img[::2, ::2, ::2] > -0.45) * 2 for img, _ in cases]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0, 7])
        while True:
            want = int(rng.random() < 0.5) if self.with_nodules else 0
            for _attempt in range(20):
                i = self.with_nodules[int(rng.integers(len(self.with_nodules)))] if want else int(rng.integers(len(self.cases)))
                img, mask = self.cases[i]
                if want:  # a nodule anywhere in the patch, not only at its centre
                    points = np.argwhere(mask)
                    centre = points[int(rng.integers(len(points)))] + rng.integers(-12, 13, size=3)
                elif rng.random() < 0.7:  # hard negatives: centred on tissue, bone or the table
                    points = self.dense[i]
                    centre = points[int(rng.integers(len(points)))]
                else:
                    centre = np.array([rng.integers(s) for s in mask.shape])
                lo = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, p, s in zip(centre, self.patch, mask.shape)]
                sl = tuple(slice(a, a + p) for a, p in zip(lo, self.patch))
                if bool(mask[sl].any()) == bool(want):
                    break
            x = _fit(img[sl].astype(np.float32), self.patch)
            m = _fit(mask[sl].astype(np.float32), self.patch, 0.0)
            if rng.random() < 0.5:
                x, m = x[:, :, ::-1], m[:, :, ::-1]
            x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
            x = x + rng.normal(0, 0.01, x.shape).astype(np.float32)
            # Each cell of the network's score grid: does it hold a nodule?
            cells = F.max_pool3d(torch.from_numpy(np.ascontiguousarray(m))[None], self.cell)
            yield torch.from_numpy(np.ascontiguousarray(x))[None], cells


def _fit(a: np.ndarray, patch: tuple[int, int, int], fill: float = -1.0) -> np.ndarray:
    pad = [(0, max(0, p - s)) for p, s in zip(patch, a.shape)]
    return np.pad(a, pad, constant_values=fill) if any(p[1] for p in pad) else a


def auc(scores: list[float], truth: list[int]) -> float:
    """ROC AUC: the chance a positive scores above a negative (ties count half)."""
    pos = [s for s, t in zip(scores, truth) if t]
    neg = [s for s, t in zip(scores, truth) if not t]
    if not pos or not neg:
        return float("nan")
    return float(sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)))


def calibration_offset(scores: list[float], truth: list[int]) -> float:
    """The score threshold with the best balanced accuracy (midway between neighbouring scores)."""
    ordered = sorted(set(scores))
    candidates = [(a + b) / 2 for a, b in zip(ordered, ordered[1:])] or [0.0]
    pos = [s for s, t in zip(scores, truth) if t]
    neg = [s for s, t in zip(scores, truth) if not t]

    def balanced(th: float) -> float:
        sens = np.mean([s >= th for s in pos]) if pos else 0.0
        spec = np.mean([s < th for s in neg]) if neg else 0.0
        return float(sens + spec)

    return float(max(candidates, key=balanced))


class ClassificationTask:
    """What :func:`ai.train.train` needs to train the nodule classifier."""

    metric = "auc"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def dataset(self, pairs: list[tuple[Path, Path]]) -> IterableDataset:  # type: ignore[type-arg]
        cases = [load_grid(i, lab, self.cfg.spacing) for i, lab in pairs]
        n = sum(1 for _, m in cases if m.any())
        logger.info("classifier training set: %d volumes with nodules, %d without", n, len(cases) - n)
        return PatchStream(cases, PATCH, self.cfg.seed, self.network().reduction)

    def network(self) -> NoduleNet:
        return NoduleNet(tuple(self.cfg.channels))

    def loss(self) -> Any:
        # Few cells hold a nodule: weigh them up.
        return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(POSITIVE_WEIGHT))

    def _scores(self, model: torch.nn.Module, pairs: list[tuple[Path, Path]], device: torch.device) -> tuple[list[float], list[int]]:
        """Whole-volume logits of "nodule present" (as the engine computes them) and the truth."""
        model.eval()
        scores, truth = [], []
        with torch.inference_mode():
            for i, lab in pairs:
                x, y = load_volume(i, lab, self.cfg.spacing, self.cfg.patch)
                logits = model(torch.from_numpy(x.astype(np.float32))[None, None].to(device)).float().cpu()[0]
                scores.append(float(logits[1] - logits[0]))
                truth.append(y)
        return scores, truth

    def validate(self, model: torch.nn.Module, pairs: list[tuple[Path, Path]], device: torch.device) -> dict[str, float]:
        self.val_pairs = pairs
        scores, truth = self._scores(model, pairs, device)
        acc = float(np.mean([(s >= 0.0) == bool(t) for s, t in zip(scores, truth)]))
        return {"auc": auc(scores, truth), "accuracy": acc}

    def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
        net = self.network()
        net.load_state_dict(state)
        net.eval()
        pairs = getattr(self, "val_pairs", [])
        if pairs:  # calibrate: P(present) = 0.5 where validation separates the classes best
            net.offset.zero_()
            scores, truth = self._scores(net, pairs, torch.device("cpu"))
            net.offset.fill_(calibration_offset(scores, truth))
            logger.info("calibration offset %.3f from %d validation volumes", float(net.offset), len(pairs))
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
