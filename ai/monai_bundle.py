"""Import a MONAI Model Zoo bundle (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt|ts``).

The manifest built here names the bundle, its labels and its weights; the
bundle itself runs with its own transforms through :mod:`ai.monai_runner`
(``source == "monai-bundle"``), not through the node's preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ai.errors import AIError


def _find(node: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a nested config."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for v in node.values():
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(node, list):
        for v in node:
            found = _find(v, key)
            if found is not None:
                return found
    return None


SOURCE = "monai-bundle"  # the manifest's ``source``: the engine runs it with ai.monai_runner


def is_monai_bundle(path: Path) -> bool:
    """A folder in the MONAI Model Zoo layout (``configs/metadata.json``) without a dicomnode ``manifest.json``."""
    return (path / "configs" / "metadata.json").is_file() and not (path / "manifest.json").is_file()


def _weights(path: Path, inference: dict[str, Any]) -> dict[str, Any]:
    """``models/model.pt`` loaded into ``network_def`` when both exist, else TorchScript ``models/model.ts``."""
    if (path / "models" / "model.pt").is_file() and "network_def" in inference:
        return {"format": "network_def", "file": "models/model.pt"}
    if (path / "models" / "model.ts").is_file():
        return {"format": "torchscript", "file": "models/model.ts"}
    return {"format": "network_def", "file": "models/model.pt"}  # missing: load_bundle says so


def manifest_from_monai(path: Path) -> dict[str, Any]:
    """A dicomnode manifest (as a dict) describing a MONAI bundle.

    Uses the metadata's name, version, task description and output channel
    definitions, the inference config's ``roi_size``, overlap and ``Spacingd``
    pixdim (for display and ``models check``'s test window), and the weights
    (``models/model.pt`` for ``network_def``, else ``models/model.ts``).  The
    spacing, orientation and normalization here are not used to run it: the
    bundle's own ``preprocessing`` is.
    """
    try:
        meta = json.loads((path / "configs" / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AIError(f"{path}/configs/metadata.json cannot be read: {exc}") from exc
    inference: dict[str, Any] = {}
    inf_file = path / "configs" / "inference.json"
    if inf_file.is_file():
        try:
            inference = json.loads(inf_file.read_text())
        except json.JSONDecodeError as exc:
            raise AIError(f"{inf_file} is not valid JSON: {exc}") from exc
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    pred: dict[str, Any] = outputs.get("pred") or next(iter(outputs.values()), {})
    channels = pred.get("channel_def") or {}
    from ai.standard_codes import code_labels

    labels = code_labels([
        {"value": int(k), "name": str(v), "color": [255, 0, 0]}
        for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))
        if int(k) != 0
    ])
    roi = _find(inference, "roi_size")
    pixdim = None
    for t in inference.get("preprocessing", {}).get("transforms", []) if isinstance(inference.get("preprocessing"), dict) else []:
        if isinstance(t, dict) and str(t.get("_target_", "")).endswith("Spacingd"):
            pixdim = t.get("pixdim")
    return {
        "name": meta.get("name") or path.name,
        "version": meta.get("version", "0"),
        "task": "segmentation",
        "modalities": [],
        "body_parts": [],
        "input": {"spacing": pixdim, "orientation": "RAS", "normalization": {"kind": "none"}, "channels": 1},
        "inference": {
            "roi_size": roi if isinstance(roi, list) else None,
            "overlap": _find(inference, "overlap") or 0.25,
            "batch_size": _find(inference, "sw_batch_size") or 2,
        },
        "labels": labels,
        "intended_use": meta.get("intended_use") or meta.get("description", ""),
        "weights": _weights(path, inference),
        "source": SOURCE,
    }
