"""An nnU-Net v2 trained-model folder described as a bundle, so that the node runs it like any other model.

``dataset.json`` gives the label names and the input channel, ``plans.json``
the configuration's patch size and spacing; the engine runs the folder
through nnU-Net's own predictor (:mod:`ai.nnunet_runner`), with nnU-Net's own
preprocessing, sliding window and resampling.  Labels named like
TotalSegmentator's structures take TotalSegmentator's own codes when its
package is installed (:mod:`ai.standard_codes`); codes, colours, body parts and
the intended use come from the folder's label-coding file
(:mod:`ai.label_coding`), without which other segments are named but not coded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ai.errors import AIError
from ai.nnunet_runner import DATASET_JSON, PLANS_JSON, label_names
from ai.standard_codes import code_labels

SOURCE = "nnunet-v2"  # the manifest's ``source``: the engine runs it with ai.nnunet_runner
WEIGHTS_FORMAT = "nnunet"
_PALETTE = [(255, 0, 0), (0, 128, 255), (0, 200, 160), (255, 200, 0), (200, 0, 255), (255, 128, 0), (0, 255, 0), (128, 64, 255)]


def is_nnunet_folder(path: Path) -> bool:
    """Whether ``path`` holds ``dataset.json`` and ``plans.json`` (an nnU-Net v2 trained-model folder)."""
    return (path / DATASET_JSON).is_file() and (path / PLANS_JSON).is_file()


def _configuration(path: Path, plans: dict[str, Any]) -> dict[str, Any]:
    """The plans' configuration this folder was trained with (its name ends the folder's name), else the first 3D one."""
    configs = plans.get("configurations") or {}
    name = path.name.rsplit("__", 1)[-1]
    if name in configs:
        return dict(configs[name])
    for cfg in configs.values():
        if len(cfg.get("patch_size", [])) == 3:
            return dict(cfg)
    return dict(next(iter(configs.values()), {}))


def manifest_from_nnunet(path: Path) -> dict[str, Any]:
    """A dicomnode manifest (as a dict) describing an nnU-Net v2 folder.

    The spacing and patch size are for display and ``models check``; nnU-Net's
    own plans run the model.

    Raises
    ------
    AIError
        ``dataset.json`` or ``plans.json`` cannot be read.
    """
    try:
        ds = json.loads((path / DATASET_JSON).read_text())
        plans = json.loads((path / PLANS_JSON).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AIError(f"{path}: dataset.json or plans.json cannot be read: {exc}") from exc
    cfg = _configuration(path, plans)
    patch = [int(v) for v in cfg.get("patch_size", [])]
    if len(patch) == 2:  # a 2D configuration: one slice at a time
        patch = [1, *patch]
    spacing = [float(v) for v in cfg.get("spacing", [])]
    channels = ds.get("channel_names") or ds.get("modality") or {}
    modalities = sorted({str(v).upper() for v in channels.values() if str(v).upper() in ("CT", "MR", "PT")})
    names = label_names(ds)
    return {
        "name": str(ds.get("name") or path.name),
        "version": "nnU-Net v2",
        "task": "segmentation",
        "modalities": modalities,
        "body_parts": [],
        "input": {
            "spacing": spacing[::-1] if len(spacing) == 3 else None, "orientation": "LPS",
            "normalization": {"kind": "none"}, "channels": max(1, len(channels)),
        },
        "inference": {"roi_size": patch if len(patch) == 3 else None, "overlap": 0.5},
        "labels": code_labels([
            {"value": v, "name": n, "color": list(_PALETTE[(v - 1) % len(_PALETTE)])} for v, n in sorted(names.items()) if v != 0
        ]),
        "intended_use": str(ds.get("description") or ""),
        "weights": {"format": WEIGHTS_FORMAT, "file": PLANS_JSON},
        "source": SOURCE,
    }
