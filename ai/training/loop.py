"""The generic training loop: any registered task, trained, validated, checkpointed and exported.

The recipe:

- AdamW with cosine annealing over the whole run;
- AMP on CUDA (the CPU trains in fp32);
- DDP when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs);
- samples drawn by DataLoader workers from the task's dataset;
- validation per epoch (rank 0), whose ``task.metric`` selects the best model;
- a progress bar, a JSON-lines log, TensorBoard logs, checkpoints with
  resume, and seeds.

The loop knows nothing about any task: data, network, loss, split,
validation and export all come from the :class:`~ai.training.task.Task`.
The result is a bundle that ``ai.bundle.load_bundle`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ai.errors import AIError
from ai.training.config import TrainConfig
from ai.training.data import find_pairs
from ai.training.task import get_task

logger = logging.getLogger(__name__)


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) ``cfg.task``, validate each epoch, and export the best model as a bundle in ``cfg.out``.

    Each epoch appends a line to ``cfg.out/train_log.jsonl``: ``epoch``, ``loss``
    (mean training loss), ``val`` (the task's validation metrics), ``metric``
    (which of them selects the best model), ``seconds``, ``train_seconds``
    (the steps alone), ``amp``, ``device``, ``world`` and, on CUDA, ``peak_gpu_mb``.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    progress : bool
        Show a progress bar (rank 0).

    Returns
    -------
    dict
        ``steps``: the number of steps run; ``history``: the log entries of all epochs.

    Raises
    ------
    AIError
        Unknown task, no data, or the loss diverged.
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
    task = get_task(cfg.task, cfg)
    train_pairs, val_pairs = task.split(find_pairs(Path(cfg.data)))
    loader = DataLoader(
        task.dataset(train_pairs),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )
    cuda = device.type == "cuda"
    model = task.network().to(device)
    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    loss_fn = task.loss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    use_amp = cfg.amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best, history = 0, -math.inf, []  # any metric's first value beats it (it may be negative)
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
        losses: list[float] = []
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
        validating = bool(val_pairs) and ((epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == cfg.epochs)
        val = task.validate(_unwrap(model), val_pairs, device) if rank == 0 and validating else {}
        metric = val.get(task.metric, float("nan"))
        # The best-model criterion: the task's metric, or minus the loss when there is no validation at all;
        # an epoch that skips validation (val_every) cannot become the best.
        score: float | None = float(metric) if np.isfinite(metric) else (None if val_pairs else -float(np.mean(losses)))
        entry = {
            "epoch": epoch + 1, "loss": float(np.mean(losses)), "val": val, "metric": task.metric,
            "seconds": time.perf_counter() - t0, "train_seconds": train_seconds, "amp": use_amp, "device": device.type,
            "world": world, **gpu,
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
                "scaler": scaler.state_dict(), "epoch": epoch + 1, "best": best if score is None else max(best, score),
                "history": history,
                "config": asdict(cfg),
            }
            torch.save(state, ckpt_dir / "last.tmp")
            os.replace(ckpt_dir / "last.tmp", last)
            if score is not None and score > best:
                best = score
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
    """The network inside a DDP wrapper (the model itself when it is not wrapped)."""
    if isinstance(model, DistributedDataParallel):
        inner = model.module
        assert isinstance(inner, torch.nn.Module)
        return inner
    return model
