"""Training a segmentation model from NIfTI image/label pairs, and exporting it as a bundle.

The recipe:

- a MONAI 3D UNet;
- Dice + cross-entropy loss;
- AdamW with cosine annealing;
- AMP on CUDA;
- DDP when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs);
- random foreground-biased patches with flips and intensity augmentation,
  drawn by DataLoader workers;
- a validation Dice per epoch, by sliding window over held-out volumes;
- a progress bar, a JSON-lines log, TensorBoard logs, checkpoints with
  resume, and seeds.

The same pipeline trains the nodule present/absent classifier
(``task="classification"``, see :mod:`ai.classify`).  The result is a bundle
(``manifest.json`` plus TorchScript and ONNX weights, and a state_dict for
segmentation) that ``ai.bundle.load_bundle`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ai.errors import AIError
from ai.inference import WindowConfig, sliding_window
from ai.preprocess import prepare, read_pair

logger = logging.getLogger(__name__)

WINDOW = {"kind": "window", "low": -1000, "high": 1000}


@dataclass
class TrainConfig:
    """Everything a training run needs; saved with the checkpoints."""

    data: str
    out: str
    epochs: int = 40
    steps_per_epoch: int = 50
    patch: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    labels: dict[int, str] = field(default_factory=lambda: {1: "lung", 2: "nodule"})
    val_fraction: float = 0.2
    workers: int = 2
    seed: int = 0
    amp: bool = True
    foreground_fraction: float = 0.6
    # "components": a foreground patch centres on a label chosen uniformly, then on one of its connected
    # components chosen uniformly, so a 6 mm nodule is seen as often as a 25 mm one (or a lung);
    # "voxels": on a random foreground voxel, which is nearly always lung.
    sampling: str = "components"
    resume: bool = True
    task: str = "segmentation"  # or "classification" (nodule present/absent, ai.classify)


def find_pairs(data: Path) -> list[tuple[Path, Path]]:
    """``(image, labels)`` NIfTI pairs: ``*_image.nii.gz`` with ``*_labels.nii.gz``."""
    pairs = []
    for img in sorted(data.glob("*_image.nii*")):
        lab = img.with_name(img.name.replace("_image.", "_labels."))
        if lab.exists():
            pairs.append((img, lab))
    if not pairs:
        raise AIError(f"no *_image.nii.gz / *_labels.nii.gz pairs in {data}")
    return pairs


def load_case(image: Path, labels: Path, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An image (normalised, float16) and its labels (uint8), resampled to ``spacing``."""
    hu, lab, sp, direction = read_pair(image, labels)
    x = prepare(hu, tuple(sp), direction, target_spacing_xyz=spacing, normalization=WINDOW)
    y = prepare(lab, tuple(sp), direction, target_spacing_xyz=None)
    size = tuple(x.tensor.shape[1:])
    y_t = torch.nn.functional.interpolate(y.tensor[None], size=size, mode="nearest")[0, 0]
    return x.tensor[0].numpy().astype(np.float16), y_t.numpy().astype(np.uint8)


class PatchStream(IterableDataset):  # type: ignore[type-arg]
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
    """

    def __init__(
        self,
        cases: list[tuple[np.ndarray, np.ndarray]],
        patch: tuple[int, int, int],
        fg: float,
        seed: int,
        sampling: str = "components",
    ) -> None:
        if sampling not in ("components", "voxels"):
            raise AIError(f"unknown patch sampling {sampling!r}: use 'components' or 'voxels'")
        self.patch = patch
        self.fg = fg
        self.seed = seed
        self.sampling = sampling
        self.cases = [(_pad_to(img, patch), _pad_to(lab, patch)) for img, lab in cases]
        # Per case: label -> voxel coordinates of each connected component (computed once, not per patch).
        self.components = [_components(lab) if sampling == "components" else {} for _, lab in self.cases]

    def _centre(self, i: int, rng: np.random.Generator) -> np.ndarray:
        lab = self.cases[i][1]
        if rng.random() < self.fg and lab.any():
            if self.sampling == "voxels":
                fg = np.argwhere(lab > 0)
                return fg[int(rng.integers(len(fg)))]
            by_label = self.components[i]
            comps = by_label[list(by_label)[int(rng.integers(len(by_label)))]]
            vox = comps[int(rng.integers(len(comps)))]
            centre = vox[int(rng.integers(len(vox)))].astype(np.int64)
            # Jitter so that a small component is not always at the patch centre.
            return centre + np.array([int(rng.integers(-(p // 4), p // 4 + 1)) for p in self.patch])
        return np.array([rng.integers(s) for s in lab.shape])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, info.id if info else 0])
        while True:
            i = int(rng.integers(len(self.cases)))
            img, lab = self.cases[i]
            centre = self._centre(i, rng)
            lo = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, lab.shape)]
            sl = tuple(slice(a, a + p) for a, p in zip(lo, self.patch))
            x = img[sl].astype(np.float32)
            y = lab[sl].astype(np.int64)
            if rng.random() < 0.5:  # left-right flip
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
            x = x + rng.normal(0, 0.01, x.shape).astype(np.float32)
            yield torch.from_numpy(np.ascontiguousarray(x))[None], torch.from_numpy(np.ascontiguousarray(y))[None]


def _components(lab: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Voxel coordinates (int16, ``[n, 3]``) of each 26-connected component, grouped by label."""
    cc = cc3d.connected_components(lab, connectivity=26)
    flat = cc.ravel()
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    by_label: dict[int, list[np.ndarray]] = {}
    for cid, a, b in zip(ids, starts, bounds):
        if cid == 0:
            continue
        idx = order[a:b]
        coords = np.stack(np.unravel_index(idx, lab.shape), axis=1).astype(np.int16)
        by_label.setdefault(int(lab.flat[idx[0]]), []).append(coords)
    return by_label


def _pad_to(a: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    pad = [(0, max(0, p - s)) for p, s in zip(patch, a.shape)]
    if any(p[1] for p in pad):
        return np.pad(a, pad, mode="constant", constant_values=(-1 if a.dtype != np.uint8 else 0))
    return a


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: dict[int, str]) -> dict[str, float]:
    """Dice of each label (1.0 when both are empty)."""
    out = {}
    for v, name in labels.items():
        p, t = pred == v, truth == v
        denom = p.sum() + t.sum()
        out[name] = 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)
    return out


def build_unet(cfg: TrainConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(3, 1, len(cfg.labels) + 1, channels=cfg.channels, strides=cfg.strides, num_res_units=cfg.num_res_units)


class SegmentationTask:
    """What :func:`train` needs to train the lung and nodule segmentation."""

    metric = "dice"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def dataset(self, pairs: list[tuple[Path, Path]]) -> IterableDataset:  # type: ignore[type-arg]
        cases = [load_case(i, lab, self.cfg.spacing) for i, lab in pairs]
        return PatchStream(cases, self.cfg.patch, self.cfg.foreground_fraction, self.cfg.seed, self.cfg.sampling)

    def network(self) -> torch.nn.Module:
        return build_unet(self.cfg)

    def loss(self) -> Any:
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True)

    def validate(self, model: torch.nn.Module, pairs: list[tuple[Path, Path]], device: torch.device) -> dict[str, float]:
        val = validate(model, pairs, self.cfg, device)
        return {**val, "dice": float(np.mean(list(val.values())))} if val else {}

    def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
        export_bundle(self.cfg, state)


def make_task(cfg: TrainConfig) -> SegmentationTask | Any:
    """The task object for ``cfg.task``."""
    if cfg.task == "classification":
        from ai.classify import ClassificationTask

        return ClassificationTask(cfg)
    if cfg.task != "segmentation":
        raise AIError(f"unknown task {cfg.task!r}: use segmentation or classification")
    return SegmentationTask(cfg)


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume), validate each epoch, and export the best model as a bundle in ``cfg.out``.

    Returns
    -------
    dict
        The number of steps run and the per-epoch history (loss, validation metrics).
    """
    from tqdm import tqdm

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() else torch.device("cpu")
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg)
    pairs = find_pairs(Path(cfg.data))
    n_val = max(1, int(round(len(pairs) * cfg.val_fraction))) if len(pairs) > 1 else 0
    if cfg.task == "classification" and n_val:  # every k-th case, so both classes are in validation
        k = max(2, len(pairs) // n_val)
        val_pairs, train_pairs = pairs[::k], [p for i, p in enumerate(pairs) if i % k]
    else:
        val_pairs, train_pairs = pairs[:n_val], pairs[n_val:] or pairs
    loader = DataLoader(
        task.dataset(train_pairs),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )
    cuda = device.type == "cuda"
    model = task.network().to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    loss_fn = task.loss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    use_amp = cfg.amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best, history = 0, -1.0, []
    last = ckpt_dir / "last.pt"
    if cfg.resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        _unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        logger.info("resumed from %s at epoch %d", last, start_epoch)
    batches = iter(loader)
    log = (out / "train_log.jsonl").open("a") if rank == 0 else None
    board = _tensorboard(out / "tensorboard") if rank == 0 else None
    steps_run = 0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0)
        for _ in bar:
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp, dtype=torch.float16):
                loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise AIError(f"the loss became {loss.item()} at epoch {epoch + 1}: lower the learning rate")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            steps_run += 1
            if board is not None:
                step = epoch * cfg.steps_per_epoch + len(losses)
                board.add_scalar("train/loss", losses[-1], step)
                board.add_scalar("train/lr", sched.get_last_lr()[0], step)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if cuda:
            torch.cuda.synchronize(device)  # so that train_seconds counts the queued GPU work
        train_seconds = time.perf_counter() - t0
        gpu = {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20} if cuda else {}
        val = task.validate(_unwrap(model), val_pairs, device) if rank == 0 and val_pairs else {}
        score = val.get(task.metric, float("nan"))
        mean_dice = float(score) if np.isfinite(score) else -float(np.mean(losses))  # the best-model criterion
        key = "val_dice" if cfg.task == "segmentation" else "val"
        entry = {
            "epoch": epoch + 1, "loss": float(np.mean(losses)), key: val, "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds, "amp": use_amp, "device": device.type, "world": world, **gpu,
        }
        if board is not None:
            board.add_scalar("epoch/loss", entry["loss"], epoch + 1)
            for name, value in val.items():
                board.add_scalar(f"val/{name}", value, epoch + 1)
            board.flush()
        history.append(entry)
        if rank == 0:
            assert log is not None
            log.write(json.dumps(entry) + "\n")
            log.flush()
            state = {
                "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "best": max(best, mean_dice), "history": history,
                "config": asdict(cfg),
            }
            torch.save(state, ckpt_dir / "last.tmp")
            os.replace(ckpt_dir / "last.tmp", last)
            if mean_dice > best:
                best = mean_dice
                torch.save(_unwrap(model).state_dict(), ckpt_dir / "best.pt")
    if rank == 0:
        best_state = ckpt_dir / "best.pt"
        task.export(torch.load(best_state, map_location="cpu", weights_only=True) if best_state.exists() else _unwrap(model).state_dict(), out)
        logger.info("exported the bundle to %s", out)
        if log is not None:
            log.close()
        if board is not None:
            board.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": steps_run, "history": history}


def _tensorboard(folder: Path) -> Any:
    """A TensorBoard writer, or ``None`` (with a warning) when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed: no TensorBoard logs (train_log.jsonl has the same numbers)")
        return None
    return SummaryWriter(str(folder))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def validate(model: torch.nn.Module, pairs: list[tuple[Path, Path]], cfg: TrainConfig, device: torch.device) -> dict[str, float]:
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


def export_bundle(cfg: TrainConfig, state: dict[str, torch.Tensor]) -> None:
    """Write ``manifest.json`` and the weights (state_dict, TorchScript, ONNX) into ``cfg.out``."""
    out = Path(cfg.out)
    net = build_unet(cfg)
    net.load_state_dict(state)
    net.eval()
    torch.save(net.state_dict(), out / "model.pt")
    example = torch.zeros(1, 1, *cfg.patch)
    torch.jit.trace(net, example).save(str(out / "model.ts"))
    torch.onnx.export(net, example, str(out / "model.onnx"), dynamo=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17)
    colors = {1: [0, 128, 255], 2: [255, 64, 0]}
    snomed = {"lung": ("39607008", "Lung"), "nodule": ("27925004", "Nodule")}
    manifest = {
        "name": out.name, "version": "1.0.0", "task": "segmentation", "modalities": ["CT"], "body_parts": ["CHEST"],
        "input": {"spacing": list(cfg.spacing), "orientation": "LPS", "normalization": WINDOW},
        "inference": {"roi_size": list(cfg.patch), "overlap": 0.25, "batch_size": cfg.batch_size, "background_threshold": -0.9},
        "labels": [
            {"value": v, "name": n, "color": colors.get(v, [255, 255, 0]), "lesion": n == "nodule",
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
