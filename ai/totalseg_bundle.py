"""A TotalSegmentator task installed as one model: which weights it needs, and the bundle that describes it.

TotalSegmentator's tasks are nnU-Net v2 models, but a task is more than one
model: ``total`` is five models (``Dataset291`` ... ``Dataset295``) whose
labels TotalSegmentator combines into its 117 classes; ``lung_vessels`` and
``lung_nodules`` first crop the scan to the lungs with a coarse ``total``
model.  So a task runs through TotalSegmentator's own Python API
(:mod:`ai.totalseg_runner`), from a folder holding exactly the weights folders
the task needs, laid out as TotalSegmentator's weights folder
(``~/.totalsegmentator/nnunet/results``) is, plus a record
(:data:`RECORD`) naming the task.  The labels are TotalSegmentator's class
map of the task, coded by its own table (:mod:`ai.standard_codes`).

TotalSegmentator is imported only here and in the runner, and only when a
task is installed, described or run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ai.errors import AIError
from ai.standard_codes import code_labels

RECORD = "dicomnode-totalsegmentator.json"  # {"task": ..., "fast": ..., "folders": [...]}
SOURCE = "totalsegmentator"  # the manifest's ``source``: the engine runs it with ai.totalseg_runner
WEIGHTS_FORMAT = "totalsegmentator"
_PALETTE = [(255, 0, 0), (0, 128, 255), (0, 200, 160), (255, 200, 0), (200, 0, 255), (255, 128, 0), (0, 255, 0), (128, 64, 255)]


class TotalSegmentatorError(AIError):
    """A TotalSegmentator task is unknown, incomplete, or TotalSegmentator is not installed."""


def is_totalseg_task(path: Path) -> bool:
    """Whether ``path`` is an installed TotalSegmentator task (it holds :data:`RECORD`)."""
    return (path / RECORD).is_file()


def _api() -> Any:
    try:
        from totalsegmentator import map_tasks_config, map_to_binary, python_api
    except ImportError as exc:
        raise TotalSegmentatorError(
            f"TotalSegmentator is not installed ({exc}): pip install TotalSegmentator (its weights are installed apart)"
        ) from exc
    return map_tasks_config, map_to_binary, python_api


def _config(task: str, fast: bool) -> dict[str, Any]:
    tasks_config, _, api = _api()
    if (tasks_config.TASK_CONFIGS.get(task) or {}).get("commercial"):  # TotalSegmentator would exit without a licence
        raise TotalSegmentatorError(f"TotalSegmentator task {task!r} needs a TotalSegmentator licence; the node runs the open tasks only")
    try:
        return dict(api.get_task_config(task, fast=fast, quiet=True))
    except (ValueError, SystemExit) as exc:
        raise TotalSegmentatorError(f"TotalSegmentator task {task!r}: {exc}") from exc


def _crop_ids(task: str, cfg: dict[str, Any], fast: bool) -> list[int]:
    """The weights TotalSegmentator's crop step needs (the logic of ``python_api.totalsegmentator``)."""
    if cfg.get("crop") is None and not cfg.get("cascade"):
        return []
    crop_model = cfg.get("crop_model")
    if crop_model is not None:
        return task_ids(str(crop_model), fast=False)
    if task.endswith("_mr"):
        return [852]
    if any("body_trunc" in c or "body_extremities" in c for c in cfg.get("crop") or []):
        return [300]
    return [297] if cfg.get("robust_crop") else [298]


def task_ids(task: str, fast: bool = False) -> list[int]:
    """The nnU-Net task ids whose weights ``task`` needs, its own first, then its crop model's.

    Raises
    ------
    TotalSegmentatorError
        TotalSegmentator is not installed, or it has no such task.
    """
    cfg = _config(task, fast)
    own = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
    ids = [int(i) for i in own]
    return ids + [i for i in _crop_ids(task, cfg, fast) if i not in ids]


def weight_folders(task: str, fast: bool = False) -> list[str]:
    """The folders, relative to a weights folder, that ``task`` needs (TotalSegmentator's own names)."""
    tasks_config, _, _ = _api()
    out = []
    for i in task_ids(task, fast):
        info = tasks_config.TASK_ID_WEIGHTS_CONFIGS.get(i)
        if info is None:
            raise TotalSegmentatorError(f"TotalSegmentator knows no weights for task id {i} (of task {task!r})")
        rel = info.get("rel_path")
        out.append(str(Path(rel) / info["foldername"]) if rel else str(info["foldername"]))
    return out


def missing_folders(weights: Path, task: str, fast: bool = False) -> list[str]:
    """The weights folders of ``task`` that ``weights`` lacks (TotalSegmentator would try to download them)."""
    return [f for f in weight_folders(task, fast) if not (weights / f).is_dir()]


def complete_tasks(weights: Path) -> list[str]:
    """The TotalSegmentator tasks whose weights are all in ``weights`` (empty without TotalSegmentator)."""
    try:
        tasks_config, _, _ = _api()
    except TotalSegmentatorError:
        return []
    out = []
    for task in tasks_config.TASK_CONFIGS:
        try:
            if not missing_folders(weights, task):
                out.append(str(task))
        except (TotalSegmentatorError, KeyError, TypeError):
            continue
    return sorted(out)


def read_record(path: Path) -> dict[str, Any]:
    """The task record of an installed task folder."""
    try:
        record = json.loads((path / RECORD).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TotalSegmentatorError(f"{path / RECORD} cannot be read: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("task"), str):
        raise TotalSegmentatorError(f"{path / RECORD} does not name a task")
    return record


def class_map(task: str) -> dict[int, str]:
    """TotalSegmentator's label value -> class name of ``task``."""
    _, to_binary, _ = _api()
    names = to_binary.class_map.get(task)
    if not names:
        raise TotalSegmentatorError(f"TotalSegmentator has no class map for task {task!r}")
    return {int(k): str(v) for k, v in names.items()}


def manifest_from_totalseg(path: Path) -> dict[str, Any]:
    """A dicomnode manifest (as a dict) describing an installed TotalSegmentator task.

    Raises
    ------
    TotalSegmentatorError
        The record is unreadable, TotalSegmentator is not installed, or it does not know the task.
    """
    record = read_record(path)
    task, fast = record["task"], bool(record.get("fast", False))
    cfg = _config(task, fast)
    resample = cfg.get("resample")
    spacing = [float(resample)] * 3 if isinstance(resample, (int, float)) else [float(v) for v in resample] if resample else None
    roi = [128, 128, 128]  # TotalSegmentator's own plans decide; this is for display and validation only
    for folder in weight_folders(task, fast)[:1]:
        plans = sorted((path / folder).glob("*/plans.json"))
        if plans:
            try:
                cfgs = json.loads(plans[0].read_text()).get("configurations", {})
                patch = (cfgs.get(cfg.get("model", "3d_fullres")) or {}).get("patch_size") or roi
                roi = [int(v) for v in patch] if len(patch) == 3 else roi
            except (OSError, json.JSONDecodeError, TypeError, ValueError):
                pass
    labels = [{"value": v, "name": n, "color": list(_PALETTE[(v - 1) % len(_PALETTE)])} for v, n in sorted(class_map(task).items()) if v]
    return {
        "name": str(record.get("name") or f"totalsegmentator-{task}"),
        "version": f"TotalSegmentator {record.get('totalsegmentator_version') or ''}".strip() + f" {task}{' fast' if fast else ''}",
        "task": "segmentation",
        "modalities": ["MR"] if task.endswith("_mr") or cfg.get("modality") == "mr" else ["CT"],
        "body_parts": [],
        "input": {"spacing": spacing, "orientation": "LPS", "normalization": {"kind": "none"}},
        "inference": {"roi_size": roi, "overlap": 0.5},
        "labels": code_labels(labels),
        "intended_use": str(record.get("intended_use") or f"TotalSegmentator task {task} (research use)"),
        "weights": {"format": WEIGHTS_FORMAT, "file": RECORD},
        "source": SOURCE,
    }
