"""The classification task: nodule present or absent, per volume.

The input is what :class:`ai.engine.Engine` feeds a classification bundle: the
volume cropped to the body (voxels above -500 HU plus a margin), resampled to
the bundle's spacing, windowed, then resized to the ROI
(:func:`ai.preprocess.to_roi`).

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
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from ai.preprocess import prepare, read_pair, to_roi
from ai.training.config import TrainConfig
from ai.training.data import WINDOW, validation_count
from ai.training.sampling import Shape3, augment, pad_to, patch_slices, random_voxel, worker_rng
from ai.training.task import Pair, register

logger = logging.getLogger(__name__)

BODY_ABOVE = -500.0  # HU: the crop to the body, as the bundle's crop_foreground_above
CLASSES = ("no nodule", "nodule present")
NODULE_LABEL = 2  # the nodule label of the default label map (1 lung, 2 nodule); see nodule_label()


def nodule_label(labels: dict[int, str]) -> int:
    """The value of the label named ``nodule`` in ``TrainConfig.labels`` (:data:`NODULE_LABEL` when none is)."""
    return next((v for v, name in labels.items() if name == "nodule"), NODULE_LABEL)
PATCH = (48, 48, 48)  # training patches (voxels at the bundle spacing); the ROI is the whole-volume input
POSITIVE_WEIGHT = 4.0


class NoduleNet(torch.nn.Module):
    """A fully convolutional nodule detector whose maximum answers "is there a nodule?".

    Residual stages (MONAI) reduce the volume by ``2 ** len(strides > 1)``;
    a 1x1x1 convolution scores every cell of that grid.  In training mode
    the network returns the score map (each cell is supervised: does it hold
    a nodule?); in eval mode it returns two logits ``(0, max score)``, so a
    softmax gives P(no nodule), P(nodule present).  Batch normalisation keeps
    patches and whole volumes on the same statistics.

    Parameters
    ----------
    channels : tuple of int
        Output channels of each stage.
    strides : tuple of int
        Stride of each stage.
    """

    offset: torch.Tensor  # a registered buffer, subtracted from the top score

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
        """The score map ``(B, 1, d, h, w)`` in training mode, the logits ``(B, 2)`` in eval mode."""
        scores: torch.Tensor = self.score(self.features(x))  # (B, 1, d, h, w)
        if self.training:
            return scores
        top = torch.amax(scores, dim=(1, 2, 3, 4)) - self.offset
        return torch.stack([torch.zeros_like(top), top], dim=1)


def load_volume(
    image: Path, labels: Path, spacing: tuple[float, float, float], roi: Shape3, nodule: int = NODULE_LABEL
) -> tuple[np.ndarray, int]:
    """The classifier's whole-volume input (float16, ``roi``), and the truth: 1 when the labels hold a nodule."""
    hu, lab, sp, direction = read_pair(image, labels)
    x = prepare(hu, tuple(sp), direction, target_spacing_xyz=spacing, normalization=WINDOW, foreground_above=BODY_ABOVE)
    return to_roi(x.tensor, roi)[0, 0].numpy().astype(np.float16), int((lab == nodule).any())


def load_grid(
    image: Path, labels: Path, spacing: tuple[float, float, float], nodule: int = NODULE_LABEL
) -> tuple[np.ndarray, np.ndarray]:
    """The body-cropped volume at ``spacing`` (float16) and its nodule mask on the same grid, for patches."""
    hu, lab, sp, direction = read_pair(image, labels)
    x = prepare(hu, tuple(sp), direction, target_spacing_xyz=spacing, normalization=WINDOW, foreground_above=BODY_ABOVE)
    # The labels get the same reorientation and crop as the image, then nearest-neighbour resampling.
    y = prepare(lab, tuple(sp), direction, target_spacing_xyz=None).tensor[0][x.crop]
    y_t = F.interpolate(y[None, None], size=tuple(x.tensor.shape[1:]), mode="nearest")[0, 0]
    return x.tensor[0].numpy().astype(np.float16), (y_t.numpy() == nodule)


class PatchStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Endless augmented patches: half holding a nodule, half holding none; the target is the cell grid.

    Parameters
    ----------
    cases : list of (image, mask)
        Body-cropped volumes and their nodule masks (:func:`load_grid`).
    patch : (int, int, int)
        Patch size.
    seed : int
        Seed; each DDP rank and DataLoader worker derives its own stream.
    cell : int
        The network's reduction: each target cell says whether that many voxels per axis hold a nodule.
    """

    def __init__(self, cases: list[tuple[np.ndarray, np.ndarray]], patch: Shape3, seed: int, cell: int) -> None:
        self.cases, self.patch, self.seed, self.cell = cases, patch, seed, cell
        self.with_nodules = [i for i, (_, m) in enumerate(cases) if m.any()]
        # Voxels denser than -450 HU (normalised -0.45): where a nodule detector is tempted to fire.
        self.dense = [np.argwhere(img[::2, ::2, ::2] > -0.45) * 2 for img, _ in cases]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = worker_rng(self.seed, 7)
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
                    centre = random_voxel(mask.shape, rng)
                sl = patch_slices(centre, self.patch, mask.shape)
                if bool(mask[sl].any()) == bool(want):
                    break
            x = pad_to(img[sl].astype(np.float32), self.patch, -1.0)
            m = pad_to(mask[sl].astype(np.float32), self.patch, 0.0)
            x, m = augment(x, m, rng)
            # Each cell of the network's score grid: does it hold a nodule?
            cells = F.max_pool3d(torch.from_numpy(m)[None], self.cell)
            yield torch.from_numpy(x)[None], cells


def auc(scores: list[float], truth: list[int]) -> float:
    """ROC AUC: the chance a positive scores above a negative (ties count half); NaN without both classes."""
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


@register
class ClassificationTask:
    """Nodule present/absent per volume; the best model has the highest validation ROC AUC."""

    name = "classification"
    metric = "auc"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.val_pairs: list[Pair] = []  # the volumes last validated on: the export calibrates on them

    def dataset(self, pairs: list[Pair]) -> PatchStream:
        """Nodule / no-nodule patches of the cases (:class:`PatchStream`)."""
        cases = [load_grid(i, lab, self.cfg.spacing, nodule_label(self.cfg.labels)) for i, lab in pairs]
        n = sum(1 for _, m in cases if m.any())
        logger.info("classifier training set: %d volumes with nodules, %d without", n, len(cases) - n)
        return PatchStream(cases, PATCH, self.cfg.seed, self.network().reduction)

    def network(self) -> NoduleNet:
        """A :class:`NoduleNet` with ``TrainConfig.channels``."""
        return NoduleNet(tuple(self.cfg.channels))

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Binary cross-entropy per cell; the few cells that hold a nodule weigh ``POSITIVE_WEIGHT``."""
        return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(POSITIVE_WEIGHT))

    def split(self, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """Every k-th pair validates (k from ``val_fraction``), so that both classes are in validation."""
        n_val = validation_count(len(pairs), self.cfg.val_fraction)
        if not n_val:
            return pairs, []
        k = max(2, len(pairs) // n_val)
        return [p for i, p in enumerate(pairs) if i % k], pairs[::k]

    def _scores(self, model: torch.nn.Module, pairs: list[Pair], device: torch.device) -> tuple[list[float], list[int]]:
        """Whole-volume logits of "nodule present" (as the engine computes them) and the truth."""
        model.eval()
        scores, truth = [], []
        with torch.inference_mode():
            for i, lab in pairs:
                x, y = load_volume(i, lab, self.cfg.spacing, self.cfg.patch, nodule_label(self.cfg.labels))
                logits = model(torch.from_numpy(x.astype(np.float32))[None, None].to(device)).float().cpu()[0]
                scores.append(float(logits[1] - logits[0]))
                truth.append(y)
        return scores, truth

    def validate(self, model: torch.nn.Module, pairs: list[Pair], device: torch.device) -> dict[str, float]:
        """ROC AUC (``auc``) and accuracy at P = 0.5 on the whole validation volumes."""
        self.val_pairs = pairs
        scores, truth = self._scores(model, pairs, device)
        acc = float(np.mean([(s >= 0.0) == bool(t) for s, t in zip(scores, truth)]))
        return {"auc": auc(scores, truth), "accuracy": acc}

    def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
        """TorchScript and ONNX weights, calibrated on the validation volumes, and ``manifest.json``."""
        net = self.network()
        net.load_state_dict(state)
        net.eval()
        pairs = self.val_pairs
        if pairs:  # calibrate: P(present) = 0.5 where validation separates the classes best
            net.offset.zero_()
            scores, truth = self._scores(net, pairs, torch.device("cpu"))
            net.offset.fill_(calibration_offset(scores, truth))
            logger.info("calibration offset %.3f from %d validation volumes", float(net.offset), len(pairs))
        example = torch.zeros(1, 1, *self.cfg.patch)
        torch.jit.trace(net, example).save(str(out / "model.ts"))
        torch.onnx.export(net, (example,), str(out / "model.onnx"), dynamo=False, input_names=["input"], output_names=["output"],
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
