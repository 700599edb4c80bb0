"""A model's label-coding file (``dicomnode.json``): codes and settings for a model the node did not write.

A MONAI bundle or an nnU-Net folder names its classes but does not code
them; the node's SEG and SR need SNOMED CT codes for each segment (category,
type, anatomic site, laterality), a colour, and which labels are lesions.
``dicomnode.json`` beside the model's own files supplies them, and may also
set what the node cannot read from the model: ``modalities``,
``body_parts``, ``intended_use``, ``procedure``, ``selection``,
``postprocessing``, ``measurement``, ``anatomy`` and ``version``::

    {"modalities": ["CT"], "body_parts": ["CHEST"],
     "labels": [{"value": 1, "name": "right lung", "snomed": {"code": "3341006", "meaning": "Right lung"},
                 "category": {"code": "123037004", "meaning": "Anatomical Structure"},
                 "site": {"code": "39607008", "meaning": "Lung"}, "laterality": "right", "color": [0, 128, 255]}]}

Each label entry is keyed by ``value`` and must be one of the model's own
labels; its fields are those of a manifest label and replace the ones
derived from the model.  The merged manifest is validated as any bundle's
(``models check`` names every problem).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CODING_FILE = "dicomnode.json"
TOP_KEYS = (
    "labels", "modalities", "body_parts", "intended_use", "procedure", "selection", "postprocessing", "measurement",
    "anatomy", "version",
)


def apply(manifest: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str]]:
    """``manifest`` with the coding file of ``folder`` merged in (unchanged when there is none), and its problems.

    Parameters
    ----------
    manifest : dict
        The manifest derived from the model's own files.
    folder : Path
        The model folder.

    Returns
    -------
    (dict, list of str)
        The merged manifest, and what is wrong with the coding file, in words.
    """
    path = folder / CODING_FILE
    if not path.is_file():
        return manifest, []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return manifest, [f"{CODING_FILE} is not valid JSON: {exc}"]
    if not isinstance(data, dict):
        return manifest, [f"{CODING_FILE} must be an object"]
    problems = [f"{CODING_FILE}: unknown key {k!r} (known: {', '.join(TOP_KEYS)})" for k in data if k not in TOP_KEYS]
    out = {**manifest, **{k: v for k, v in data.items() if k in TOP_KEYS and k != "labels"}}
    labels = data.get("labels", [])
    if not isinstance(labels, list):
        return out, [*problems, f"{CODING_FILE}: labels must be a list of objects with a value"]
    own = {int(lb["value"]): dict(lb) for lb in manifest.get("labels", [])}
    for entry in labels:
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, int):
            problems.append(f"{CODING_FILE}: label entry {entry!r} has no integer value")
        elif value not in own:
            problems.append(f"{CODING_FILE}: label {value} is not one of the model's labels ({', '.join(map(str, sorted(own)))})")
        else:
            own[value].update(entry)
    out["labels"] = [own[v] for v in sorted(own)]
    out["coding_file"] = CODING_FILE
    return out, problems
