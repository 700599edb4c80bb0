"""Manifest validation: every problem of a model's ``manifest.json`` (or derived manifest), in words.

:func:`problems_in` checks the keys ``docs/models.md`` documents: task,
weights, inference, input, labels and their codes, procedure, selection,
post-processing (candidate classifiers too), measurement, anatomy and scan score.  ``ai.bundle`` loads a
manifest only when the list is empty.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai import coding, scan_score
from ai.candidates import CandidateError
from ai.candidates import from_manifest as candidate_model
from ai.dot_candidates import settings_from_manifest as dot_settings
from ai.lesion_volume import METHODS, OPEN_RIMS, SMALL_CORES

TASKS = ("segmentation", "classification")
FORMATS = ("torchscript", "state_dict", "onnx")
MONAI_SOURCE = "monai-bundle"  # manifest "source" of a MONAI Model Zoo bundle (ai.monai_bundle.SOURCE)
NNUNET_SOURCE = "nnunet-v2"  # manifest "source" of an nnU-Net v2 folder (ai.nnunet_bundle.SOURCE), run by nnU-Net's predictor
TOTALSEG_SOURCE = "totalsegmentator"  # an installed TotalSegmentator task (ai.totalseg_bundle.SOURCE), run by its own API
ARCHITECTURES = ("UNet", "SegResNet", "SwinUNETR", "DenseNet121")
NORMALIZATIONS = ("window", "zscore", "scale", "none")


def problems_in(m: dict[str, Any], path: Path) -> list[str]:
    """Every problem of manifest ``m`` (of the model folder ``path``), in words; empty when it is valid."""
    problems: list[str] = []
    for key in ("name", "version", "task", "labels", "weights", "inference"):
        if key not in m:
            problems.append(f"missing '{key}'")
    if m.get("task") not in TASKS:
        problems.append(f"task must be one of {', '.join(TASKS)}, not {m.get('task')!r}")
    w = m.get("weights", {})
    formats: tuple[str, ...] = FORMATS + ("network_def",) if m.get("source") == MONAI_SOURCE else FORMATS
    if m.get("source") == NNUNET_SOURCE:
        formats = ("nnunet",)
    if m.get("source") == TOTALSEG_SOURCE:
        formats = ("totalsegmentator",)
    if w.get("format") not in formats:
        problems.append(f"weights.format must be one of {', '.join(formats)}, not {w.get('format')!r}")
    elif not (path / str(w.get("file", ""))).is_file():
        problems.append(f"weights file {w.get('file')!r} does not exist in {path}")
    if w.get("format") == "state_dict" and (w.get("architecture") or {}).get("name") not in ARCHITECTURES:
        problems.append(f"weights.architecture.name must be one of {', '.join(ARCHITECTURES)} for a state_dict")
    inf = m.get("inference", {})
    roi = inf.get("roi_size")
    if not (isinstance(roi, list) and len(roi) == 3 and all(isinstance(v, int) and v > 0 for v in roi)):
        problems.append(f"inference.roi_size must be three positive integers, not {roi!r}")
    flips = inf.get("tta_flips", [])
    if not (isinstance(flips, list) and all(isinstance(f, list) and f and all(a in (0, 1, 2) for a in f) for f in flips)):
        problems.append(f"inference.tta_flips must be a list of axis lists such as [[2]] (axes 0, 1, 2), not {flips!r}")
    if not 0 <= float(inf.get("overlap", 0.25)) < 1:
        problems.append("inference.overlap must be in [0, 1)")
    norm = m.get("input", {}).get("normalization", {"kind": "none"})
    if norm.get("kind") not in NORMALIZATIONS:
        problems.append(f"input.normalization.kind must be one of {', '.join(NORMALIZATIONS)}")
    spacing = m.get("input", {}).get("spacing")
    if spacing is not None and not (isinstance(spacing, list) and len(spacing) == 3 and all(v > 0 for v in spacing)):
        problems.append(f"input.spacing must be three positive numbers, not {spacing!r}")
    labels = m.get("labels", [])
    values = [lb.get("value") for lb in labels if isinstance(lb, dict)]
    if not labels or len(values) != len(labels):
        problems.append("labels must be a non-empty list of objects")
    elif len(set(values)) != len(values):
        problems.append("label values must be unique")
    for lb in labels if isinstance(labels, list) else []:
        if not isinstance(lb, dict) or "name" not in lb:
            problems.append(f"label {lb!r} has no name")
            continue
        color = lb.get("color", [255, 0, 0])
        if not (isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            problems.append(f"label {lb['name']!r}: color must be three integers 0-255")
        problems += coding.label_problems(lb)
    int_values = [v for v in values if isinstance(v, int)]  # JSON may hold anything: sort only integers
    if m.get("task") == "segmentation" and values and (
        len(int_values) != len(values) or sorted(int_values) != list(range(1, len(values) + 1))
    ):
        problems.append("segmentation label values must be 1..N (0 is background)")
    listed = labels if isinstance(labels, list) else []
    lesion_labels = [lb.get("value") for lb in listed if isinstance(lb, dict) and lb.get("lesion")]
    problems += coding.problems("procedure", m.get("procedure"))
    problems += _kernel_problems(m.get("selection"))
    return problems + _problems_in_anatomy_keys(m) + scan_score.problems(m, lesion_labels)


SHAPE_KEYS = {"max_elongation": 1.0, "max_length_mm": 0.0, "min_fill": 0.0, "vessel_radius_mm": 0.0}  # key -> exclusive lower bound
_VOLUME_KEYS = ("method", "shell_mm", "tail_mm", "core", "min_contrast", "grow_mm", "grow_max_mm", "grow_on_share", "level",
                "grow_contrast", "open_mm", "open_fraction", "open_contrast", "open_rim", "surface_cut", "shell_edge_only",
                "ground_glass_share", "small_core", "calcium")
_ANATOMY_KEYS = ("labels", "paired", "volume_ml", "min_extent_mm", "min_fill", "partial_min_ml", "min_inside_body")


def _kernel_problems(sel: Any) -> list[str]:
    """``selection.kernels`` must be a list of regular expressions."""
    if sel is None:
        return []
    kernels = sel.get("kernels", []) if isinstance(sel, dict) else None
    if not isinstance(kernels, list) or not all(isinstance(k, str) for k in kernels):
        return [f"selection.kernels must be a list of regular expressions, not {kernels!r}"]
    out = []
    for k in kernels:
        try:
            re.compile(k)
        except re.error as exc:
            out.append(f"selection.kernels: {k!r} is not a valid regular expression ({exc})")
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label_ref(key: object, known: dict[int, bool]) -> int | None:
    """A label value written as a JSON key or number ("3" or 3), if it is one of the bundle's labels."""
    try:
        value = int(str(key))
    except ValueError:
        return None
    return value if value in known else None


def _candidate_problems(
    entries: object, within: dict[str, Any], ref: Callable[..., int | None], key_name: str = "candidates",
    parse: Callable[[Any], object] = candidate_model,
) -> list[str]:
    """Problems of ``postprocessing.candidates`` (or ``dot_candidates``): lesion labels with a valid classifier and organs to look in."""
    if not isinstance(entries, dict):
        return [f"postprocessing.{key_name} must map lesion labels to classifiers"]
    out: list[str] = []
    for key, entry in entries.items():
        ref(f"postprocessing.{key_name}", key, lesion=True)
        if str(key) not in {str(k) for k in within}:
            out.append(f"postprocessing.{key_name}[{key!r}]: the label needs a postprocessing.within entry (the organs its candidates lie in)")
        if not isinstance(entry, dict):
            out.append(f"postprocessing.{key_name}[{key!r}] must be an object")
            continue
        try:
            parse(entry)
        except CandidateError as exc:
            out.append(f"postprocessing.{key_name}[{key!r}]: {exc}")
    return out


def _problems_in_anatomy_keys(m: dict[str, Any]) -> list[str]:
    """Problems of ``postprocessing.within`` (and ``within_fraction``), ``postprocessing.lesion_shape``, ``min_size_mm3``, ``measurement`` and ``anatomy``."""
    problems: list[str] = []
    labels = m.get("labels")
    labels = labels if isinstance(labels, list) else []
    known = {lb["value"]: bool(lb.get("lesion", False)) for lb in labels if isinstance(lb, dict) and isinstance(lb.get("value"), int)}
    listed = ", ".join(str(v) for v in sorted(known))

    def ref(where: str, key: object, lesion: bool | None = None) -> int | None:
        value = _label_ref(key, known)
        if value is None:
            problems.append(f"{where}: {key!r} is not a label of this bundle (labels {listed})")
        elif lesion is not None and known[value] != lesion:
            problems.append(f"{where}: label {value} {'is not' if lesion else 'is'} a lesion label")
        return value

    pp = m.get("postprocessing", {})
    if not isinstance(pp, dict):
        return ["postprocessing must be an object"]
    new_keys = [k for k in ("lesion_shape",) if k in pp] + [k for k in ("measurement", "anatomy", "scan_score") if k in m]
    if new_keys and m.get("task") != "segmentation":
        problems.append(f"{', '.join(new_keys)} apply to segmentation bundles only")
    floor = pp.get("min_size_mm3")
    if floor is not None and not (_is_number(floor) and floor >= 0):
        problems.append(f"postprocessing.min_size_mm3 must be a number >= 0, not {floor!r}")
    within = pp.get("within", {})
    if not isinstance(within, dict):
        problems.append("postprocessing.within must map a label to its parent label(s), e.g. {\"3\": [1, 2]}")
    else:
        for child, parents in within.items():
            ref("postprocessing.within", child)
            if not (isinstance(parents, int) or (isinstance(parents, list) and parents)):
                problems.append(f"postprocessing.within[{child!r}] must be a label or a non-empty list of labels, not {parents!r}")
                continue
            for parent in parents if isinstance(parents, list) else [parents]:
                ref(f"postprocessing.within[{child!r}]", parent)
    fractions = pp.get("within_fraction", {})
    if not isinstance(fractions, dict):
        problems.append("postprocessing.within_fraction must map a label of postprocessing.within to a share, e.g. {\"3\": 0.5}")
    else:
        for child, share in fractions.items():
            if not (isinstance(within, dict) and str(child) in {str(k) for k in within}):
                problems.append(f"postprocessing.within_fraction[{child!r}]: the label has no postprocessing.within entry")
            if not (_is_number(share) and 0 <= share <= 1):
                problems.append(f"postprocessing.within_fraction[{child!r}] must be a number from 0 to 1, not {share!r}")
    problems += _candidate_problems(pp.get("candidates", {}), within if isinstance(within, dict) else {}, ref)
    problems += _candidate_problems(pp.get("dot_candidates", {}), within if isinstance(within, dict) else {}, ref, "dot_candidates", dot_settings)
    shapes = pp.get("lesion_shape", {})
    if not isinstance(shapes, dict):
        problems.append("postprocessing.lesion_shape must map lesion labels to rules")
    else:
        for key, rule in shapes.items():
            where = f"postprocessing.lesion_shape[{key!r}]"
            ref("postprocessing.lesion_shape", key, lesion=True)
            if not isinstance(rule, dict):
                problems.append(f"{where} must be an object")
                continue
            for name, value in rule.items():
                if name not in SHAPE_KEYS:
                    problems.append(f"{where}: unknown key {name!r} (known: {', '.join(SHAPE_KEYS)})")
                elif value is not None and not (_is_number(value) and (value >= 0 if name == "vessel_radius_mm" else value > SHAPE_KEYS[name])):
                    bound = ">= 0" if name == "vessel_radius_mm" else f"> {SHAPE_KEYS[name]:g}"
                    problems.append(f"{where}.{name} must be a number {bound}{'' if name == 'vessel_radius_mm' else ' or null'}, not {value!r}")
            if _is_number(rule.get("min_fill")) and rule["min_fill"] > 1:
                problems.append(f"{where}.min_fill must be at most 1")
            if rule.get("vessel_radius_mm", 0) is None:
                problems.append(f"{where}.vessel_radius_mm must be a number >= 0 (0: no opening)")
    meas = m.get("measurement", {})
    if not isinstance(meas, dict):
        problems.append("measurement must be an object")
        meas = {}
    for key in meas:
        if key not in ("contains", "lesion_volume"):
            problems.append(f"measurement: unknown key {key!r} (known: contains, lesion_volume)")
    contains = meas.get("contains", {})
    if not isinstance(contains, dict):
        problems.append("measurement.contains must map organ labels to lists of lesion labels")
    else:
        for organ, held in contains.items():
            ref("measurement.contains", organ, lesion=False)
            if not (isinstance(held, list) and held):
                problems.append(f"measurement.contains[{organ!r}] must be a non-empty list of lesion labels, not {held!r}")
                continue
            for v in held:
                ref(f"measurement.contains[{organ!r}]", v, lesion=True)
    lv = meas.get("lesion_volume", {})
    if isinstance(lv, str):
        lv = {"method": lv}
    if not isinstance(lv, dict):
        problems.append("measurement.lesion_volume must be a method name or an object")
        lv = {}
    for key, value in lv.items():
        if key not in _VOLUME_KEYS:
            problems.append(f"measurement.lesion_volume: unknown key {key!r} (known: {', '.join(_VOLUME_KEYS)})")
        elif key == "method" and value not in METHODS:
            problems.append(f"measurement.lesion_volume.method must be one of {', '.join(METHODS)}, not {value!r}")
        elif key == "core" and not (value is None or _is_number(value)):
            problems.append(f"measurement.lesion_volume.core must be a number (the lesion's own intensity) or null, not {value!r}")
        elif key == "calcium" and not (value is None or _is_number(value)):
            problems.append("measurement.lesion_volume.calcium must be a number (the intensity above which a lesion's voxels are "
                            f"calcification, e.g. 150 HU) or null, not {value!r}")
        elif key in ("shell_mm", "tail_mm", "min_contrast", "grow_mm", "grow_contrast") and not (_is_number(value) and value > 0):
            problems.append(f"measurement.lesion_volume.{key} must be a number > 0, not {value!r}")
        elif key == "grow_max_mm" and not (_is_number(value) and value >= 0):
            problems.append(f"measurement.lesion_volume.grow_max_mm must be a number >= 0 (0: no further than grow_mm), not {value!r}")
        elif key == "grow_on_share" and not (_is_number(value) and 0 < value <= 1):
            problems.append(f"measurement.lesion_volume.grow_on_share must be a share within 0..1, not {value!r}")
        elif key == "open_contrast" and not (_is_number(value) and value >= 0):
            problems.append(f"measurement.lesion_volume.open_contrast must be a number >= 0 (noise SDs; 0: always open), not {value!r}")
        elif key == "open_mm" and not (_is_number(value) and value >= 0):
            problems.append(f"measurement.lesion_volume.open_mm must be a number >= 0 (0: no opening), not {value!r}")
        elif key == "ground_glass_share" and not (_is_number(value) and 0 <= value <= 1):
            problems.append(f"measurement.lesion_volume.ground_glass_share must be a share within 0..1 (0: off), not {value!r}")
        elif key == "open_fraction" and not (_is_number(value) and 0 < value <= 1):
            problems.append(f"measurement.lesion_volume.open_fraction must be a number within 0..1, not {value!r}")
        elif key == "small_core" and value not in SMALL_CORES:
            problems.append(f"measurement.lesion_volume.small_core must be one of {', '.join(SMALL_CORES)}, not {value!r}")
        elif key == "open_rim" and value not in OPEN_RIMS:
            problems.append(f"measurement.lesion_volume.open_rim must be one of {', '.join(OPEN_RIMS)}, not {value!r}")
        elif key in ("surface_cut", "shell_edge_only") and not isinstance(value, bool):
            problems.append(f"measurement.lesion_volume.{key} must be true or false, not {value!r}")
        elif key == "level" and not (_is_number(value) and 50 <= value <= 100):
            problems.append(f"measurement.lesion_volume.level must be a percentile from 50 to 100, not {value!r}")
    anat = m.get("anatomy")
    if anat is None:
        return problems
    if not isinstance(anat, dict):
        return [*problems, "anatomy must be an object"]
    for key in anat:
        if key not in _ANATOMY_KEYS:
            problems.append(f"anatomy: unknown key {key!r} (known: {', '.join(_ANATOMY_KEYS)})")
    paired = anat.get("paired")
    if paired is not None:
        if not (isinstance(paired, list) and len(paired) == 2 and paired[0] != paired[1]):
            problems.append(f"anatomy.paired must be two different labels [right, left], not {paired!r}")
        else:
            for v in paired:
                ref("anatomy.paired", v, lesion=False)
    organs = anat.get("labels", paired)
    if isinstance(organs, list) and organs:
        for v in organs:
            ref("anatomy.labels", v, lesion=False)
        if isinstance(paired, list) and not set(map(str, paired)) <= set(map(str, organs)):
            problems.append("anatomy.paired must be among anatomy.labels")
    else:
        problems.append("anatomy needs the organ labels: 'labels' (a non-empty list) or 'paired' ([right, left])")
    vol = anat.get("volume_ml")
    if vol is not None and not (isinstance(vol, list) and len(vol) == 2 and all(_is_number(v) for v in vol) and 0 <= vol[0] < vol[1]):
        problems.append(f"anatomy.volume_ml must be [min, max] mL with 0 <= min < max, not {vol!r}")
    for key in ("min_extent_mm", "partial_min_ml"):
        if key in anat and not (_is_number(anat[key]) and anat[key] >= 0):
            problems.append(f"anatomy.{key} must be a number >= 0, not {anat[key]!r}")
    for key in ("min_fill", "min_inside_body"):
        if key in anat and not (_is_number(anat[key]) and 0 <= anat[key] <= 1):
            problems.append(f"anatomy.{key} must be a fraction 0-1, not {anat[key]!r}")
    return problems
