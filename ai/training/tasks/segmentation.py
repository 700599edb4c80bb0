"""The segmentation task: lungs and nodules, by a MONAI 3D UNet trained on random patches.

- Dice + cross-entropy loss;
- patches drawn by DataLoader workers from in-memory cases, a share of them
  centred on foreground (component-balanced by default, so small nodules are
  seen as often as large ones), with flips and intensity augmentation;
- validation: mean Dice per label by sliding window over the held-out volumes;
- export: ``manifest.json`` with state_dict, TorchScript and ONNX weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ai.errors import AIError
from ai.inference import WindowConfig, sliding_window
from ai.training.config import TrainConfig
from ai.training.data import WINDOW, hard_negative_path, head_split, load_case, load_mask
from ai.training.sampling import (
    Shape3,
    _components,
    augment,
    component_centre,
    pad_to,
    patch_slices,
    random_voxel,
    worker_rng,
)
from ai.training.task import Pair, register


class PatchStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """An endless stream of augmented random patches from in-memory cases.

    Parameters
    ----------
    cases : list of (image, labels)
        Normalised images and their label maps, on the training grid.
    patch : (int, int, int)
        Patch size ``(z, y, x)``.
    fg : float
        Fraction of patches centred on foreground; the rest are anywhere.
    seed : int
        Seed; each DDP rank and DataLoader worker derives its own stream.
    sampling : {"components", "voxels"}
        How a foreground centre is chosen (see :class:`TrainConfig`).
    hard : list of ndarray or None, optional
        Per case, the voxel coordinates ``[n, 3]`` of its hard negatives (or ``None``).
    hard_fraction : float
        Fraction of patches centred on a hard negative (cases without any draw a random centre).
    flip : bool
        Left-right flip augmentation.

    Raises
    ------
    AIError
        Unknown ``sampling``.
    """

    def __init__(
        self,
        cases: list[tuple[np.ndarray, np.ndarray]],
        patch: Shape3,
        fg: float,
        seed: int,
        sampling: str = "components",
        hard: list[np.ndarray | None] | None = None,
        hard_fraction: float = 0.0,
        flip: bool = True,
    ) -> None:
        if sampling not in ("components", "voxels"):
            raise AIError(f"unknown patch sampling {sampling!r}: use 'components' or 'voxels'")
        self.patch = patch
        self.fg = fg
        self.seed = seed
        self.sampling = sampling
        self.hard = hard or [None] * len(cases)
        self.hard_fraction = hard_fraction
        self.flip = flip
        self.cases = [(pad_to(img, patch, -1.0), pad_to(lab, patch, 0)) for img, lab in cases]
        # Per case: label -> voxel coordinates of each connected component (computed once, not per patch).
        self.components = [_components(lab) if sampling == "components" else {} for _, lab in self.cases]

    def _centre(self, i: int, rng: np.random.Generator) -> np.ndarray:
        lab = self.cases[i][1]
        r = rng.random()
        if r < self.fg and lab.any():
            if self.sampling == "voxels":
                fg = np.argwhere(lab > 0)
                return fg[int(rng.integers(len(fg)))]
            return component_centre(self.components[i], self.patch, rng)
        hard = self.hard[i]
        if hard is not None and len(hard) and r < self.fg + self.hard_fraction:
            return hard[int(rng.integers(len(hard)))].astype(np.int64)
        return random_voxel(lab.shape, rng)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = worker_rng(self.seed)
        while True:
            i = int(rng.integers(len(self.cases)))
            img, lab = self.cases[i]
            sl = patch_slices(self._centre(i, rng), self.patch, lab.shape)
            x, y = augment(img[sl].astype(np.float32), lab[sl].astype(np.int64), rng, self.flip)
            yield torch.from_numpy(x)[None], torch.from_numpy(y)[None]


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """Dice of each label (1.0 when both are empty).

    Parameters
    ----------
    pred, truth : ndarray
        Label maps on the same grid.
    labels : dict of int to str
        Label values and the names to report them under.
    """
    out = {}
    for v, name in labels.items():
        p, t = pred == v, truth == v
        denom = p.sum() + t.sum()
        out[name] = 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)
    return out


def build_unet(cfg: TrainConfig) -> torch.nn.Module:
    """The MONAI 3D UNet of ``cfg`` (one input channel; background plus one output channel per label)."""
    from monai.networks.nets import UNet

    net: torch.nn.Module = UNet(3, 1, len(cfg.labels) + 1, channels=cfg.channels, strides=cfg.strides, num_res_units=cfg.num_res_units)
    return net


def validation_dice(model: torch.nn.Module, pairs: list[Pair], cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Mean Dice per label over the held-out volumes, by sliding window at the training spacing."""
    model.eval()
    scores: dict[str, list[float]] = {name: [] for name in cfg.labels.values()}
    wcfg = WindowConfig(roi_size=cfg.patch, overlap=0.25, batch_size=cfg.batch_size, background_threshold=-0.9)
    for img_path, lab_path in pairs:
        img, lab = load_case(img_path, lab_path, cfg.spacing)
        pred = sliding_window(torch.from_numpy(img.astype(np.float32))[None], model, wcfg, device=device, out_channels=len(cfg.labels) + 1)
        for name, d in dice_per_label(pred.argmax(0).numpy(), lab, cfg.labels).items():
            scores[name].append(d)
    return {name: float(np.mean(v)) for name, v in scores.items()}


def export_bundle(cfg: TrainConfig, state: dict[str, torch.Tensor], out: Path) -> None:
    """Write ``manifest.json`` and the weights (state_dict, TorchScript, ONNX) into ``out``."""
    net = build_unet(cfg)
    net.load_state_dict(state)
    net.eval()
    torch.save(net.state_dict(), out / "model.pt")
    example = torch.zeros(1, 1, *cfg.patch)
    torch.jit.trace(net, example).save(str(out / "model.ts"))
    torch.onnx.export(net, (example,), str(out / "model.onnx"), dynamo=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17)
    colors = {"lung": [0, 128, 255], "right lung": [0, 128, 255], "left lung": [0, 200, 160], "nodule": [255, 64, 0]}
    snomed = {
        "lung": ("39607008", "Lung"), "right lung": ("3341006", "Right lung"), "left lung": ("44029006", "Left lung"),
        "nodule": ("27925004", "Nodule"),
    }
    manifest = {
        "name": out.name, "version": "1.0.0", "task": "segmentation", "modalities": ["CT"], "body_parts": ["CHEST"],
        "input": {"spacing": list(cfg.spacing), "orientation": "LPS", "normalization": WINDOW},
        "inference": {"roi_size": list(cfg.patch), "overlap": 0.25, "batch_size": cfg.batch_size, "background_threshold": -0.9},
        "labels": [
            {"value": v, "name": n, "color": colors.get(n, [255, 255, 0]), "lesion": n == "nodule",
             **({"snomed": {"code": snomed[n][0], "meaning": snomed[n][1]}} if n in snomed else {})}
            for v, n in sorted(cfg.labels.items())
        ],
        "postprocessing": {"keep_largest": [], "min_size_mm3": 10, "crop_foreground_above": -500},
        "intended_use": "demonstration; not for diagnosis",
        "weights": {"format": "state_dict", "file": "model.pt", "architecture": {
            "name": "UNet", "params": {"channels": list(cfg.channels), "strides": list(cfg.strides), "num_res_units": cfg.num_res_units}}},
        "training": {"config": asdict(cfg)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


@register
class SegmentationTask:
    """Lung and nodule segmentation (``TrainConfig.labels``); the best model has the highest mean Dice."""

    name = "segmentation"
    metric = "dice"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def dataset(self, pairs: list[Pair]) -> PatchStream:
        """Component-balanced (or voxel) foreground patches of the cases, with augmentation."""
        cases = [load_case(i, lab, self.cfg.spacing) for i, lab in pairs]
        hard: list[np.ndarray | None] = []
        for (image, _), (img, _lab) in zip(pairs, cases):
            path = hard_negative_path(image)
            use = self.cfg.hard_negative_fraction > 0 and path.exists()
            hard.append(np.argwhere(load_mask(image, path, img.shape)).astype(np.int16) if use else None)
        return PatchStream(
            cases, self.cfg.patch, self.cfg.foreground_fraction, self.cfg.seed, self.cfg.sampling,
            hard=hard, hard_fraction=self.cfg.hard_negative_fraction, flip=self.cfg.flip,
        )

    def network(self) -> torch.nn.Module:
        """The UNet (:func:`build_unet`)."""
        return build_unet(self.cfg)

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Dice + cross-entropy over the softmax of the logits."""
        from monai.losses import DiceCELoss

        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = DiceCELoss(to_onehot_y=True, softmax=True)
        return loss

    def split(self, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """The first ``val_fraction`` of the pairs validate (:func:`ai.training.data.head_split`)."""
        return head_split(pairs, self.cfg.val_fraction)

    def validate(self, model: torch.nn.Module, pairs: list[Pair], device: torch.device) -> dict[str, float]:
        """Dice per label name, and their mean as ``dice``."""
        val = validation_dice(model, pairs, self.cfg, device)
        return {**val, "dice": float(np.mean(list(val.values())))} if val else {}

    def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
        """:func:`export_bundle`."""
        export_bundle(self.cfg, state, out)
