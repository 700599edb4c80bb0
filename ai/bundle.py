"""Model bundles: a directory with ``manifest.json`` and weights, documented in ``docs/models.md``.

Weights come in one of three forms: TorchScript (``torchscript``), a
``state_dict`` of a named MONAI architecture (``state_dict``), or ONNX run by
onnxruntime (``onnx``).  A MONAI Model Zoo bundle (``configs/metadata.json``,
``models/model.ts``) and an nnU-Net v2 folder load as well.  :func:`load_bundle`
checks everything (:mod:`ai.manifest_check`) and raises :class:`BundleError`
listing every problem, in words.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.anatomy import AnatomySpec
from ai.errors import AIError
from ai.monai_import import import_monai
from ai import coding, scan_score
from ai.coding import Concept, Laterality
from ai.manifest_check import (  # noqa: F401  (re-exported: the names a manifest uses)
    ARCHITECTURES,
    FORMATS,
    MONAI_SOURCE,
    NNUNET_SOURCE,
    NORMALIZATIONS,
    SHAPE_KEYS,
    TASKS,
    TOTALSEG_SOURCE,
    problems_in,
)
from ai.lesion_volume import LesionVolume
from ai.candidates import CandidateModel
from ai.candidates import from_manifest as candidate_model
from ai.dot_candidates import DotSettings
from ai.dot_candidates import settings_from_manifest as dot_settings
from ai.scan_score import ScanScore
from ai.shape import ShapeRule

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class BundleError(AIError):
    """A model bundle is missing, malformed or its weights do not load."""


@dataclass(frozen=True)
class Label:
    """One output class of a segmentation model (or one class of a classifier)."""

    value: int
    name: str
    snomed_code: str | None = None
    snomed_meaning: str | None = None
    category_code: str | None = None
    category_meaning: str | None = None
    color: tuple[int, int, int] = (255, 0, 0)
    lesion: bool = False  # measured per connected component
    site: Concept | None = None  # the anatomic site it is (or, for a lesion, where its findings lie); default: snomed
    laterality: Laterality | None = None  # the side of a paired organ
    finding: Concept | None = None  # a lesion label's finding in the report (e.g. Pulmonary nodule); default: snomed


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle."""

    path: Path
    name: str
    version: str
    task: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    spacing: tuple[float, float, float] | None
    orientation: str
    normalization: dict[str, Any]
    roi_size: tuple[int, int, int]
    overlap: float
    batch_size: int
    background_threshold: float | None
    labels: tuple[Label, ...]
    postprocessing: dict[str, Any]
    intended_use: str
    weights_format: str
    weights_file: Path
    architecture: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 1
    gpu_memory_mb: int = 0  # declared peak GPU memory of one run (0: not declared); workers admit jobs by it
    tta_flips: tuple[tuple[int, ...], ...] = ()  # test-time augmentation: array axes (z=0, y=1, x=2) to mirror
    lesion_shape: Mapping[int, ShapeRule] = field(default_factory=dict)  # postprocessing.lesion_shape
    contains: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # measurement.contains: organ -> lesion labels
    lesion_volume: LesionVolume = field(default_factory=LesionVolume)  # measurement.lesion_volume
    anatomy: AnatomySpec | None = None  # the plausibility gate; None: no gate
    scan_score: ScanScore | None = None  # class probabilities derived from the lesions; None: none
    candidates: Mapping[int, CandidateModel] = field(default_factory=dict)  # postprocessing.candidates: lesion label -> classifier
    dot_candidates: Mapping[int, DotSettings] = field(default_factory=dict)  # postprocessing.dot_candidates: a second candidate source
    procedure: Concept | None = None  # the imaging procedure its reports are about (e.g. LN 24627-2 CT Chest)
    preferred_kernels: tuple[str, ...] = ()  # selection.kernels: reconstruction kernels it reads best (regular expressions)
    source: str = "dicomnode"  # "monai-bundle": a MONAI bundle, run with its own transforms (ai.monai_runner)

    def with_postprocessing(self, pp: dict[str, Any]) -> Bundle:
        """This bundle with another ``postprocessing``, and the shape rules and candidate classifiers parsed from it.

        For sweeps and fits over post-processing; ``pp`` is not validated.
        """
        return dataclasses.replace(self, postprocessing=pp, lesion_shape=_shape_rules(pp), candidates=_candidate_models(pp),
                                   dot_candidates=_dot_settings(pp))

    @property
    def out_channels(self) -> int:
        """Network outputs: background plus one per label for segmentation, one per class otherwise."""
        return len(self.labels) + 1 if self.task == "segmentation" else len(self.labels)

    def predictor(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable ``(B, C, D, H, W) -> (B, K, ...)`` on ``device``.

        Raises
        ------
        BundleError
            The weights do not load.
        """
        try:
            if self.source == MONAI_SOURCE:  # the bundle's own network_def (or model.ts)
                from ai.monai_runner import load_network, read_parser

                return load_network(read_parser(self.path, device), self.path, device)
            if self.weights_format == "torchscript":
                module = torch.jit.load(str(self.weights_file), map_location=device).eval()
                return module
            if self.weights_format == "state_dict":
                net = build_network(self.architecture, self.in_channels, self.out_channels)
                state = torch.load(self.weights_file, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "state_dict" in state:
                    state = state["state_dict"]
                net.load_state_dict(state, strict=True)
                return net.to(device).eval()
            return _onnx_predictor(self.weights_file, device)
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"bundle {self.name}: weights {self.weights_file.name} do not load: {exc}") from exc


def build_network(arch: dict[str, Any], in_channels: int, out_channels: int) -> torch.nn.Module:
    """A MONAI network from ``{"name": ..., "params": {...}}``."""
    import_monai()
    from monai.networks import nets

    name = arch.get("name")
    if name not in ARCHITECTURES:
        raise BundleError(f"architecture {name!r} is not one of {', '.join(ARCHITECTURES)}")
    params = dict(arch.get("params", {}))
    try:
        return getattr(nets, name)(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **params)
    except TypeError as exc:
        raise BundleError(f"architecture {name}: bad parameters {params}: {exc}") from exc


def _onnx_predictor(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        y = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(y).to(x.device)

    return run


def _shape_rules(pp: dict[str, Any]) -> dict[int, ShapeRule]:
    default = ShapeRule()
    return {
        int(key): ShapeRule(**{name: rule.get(name, getattr(default, name)) for name in SHAPE_KEYS})
        for key, rule in pp.get("lesion_shape", {}).items()
    }


def _candidate_models(pp: dict[str, Any]) -> dict[int, CandidateModel]:
    return {int(k): candidate_model(v) for k, v in pp.get("candidates", {}).items()}


def _dot_settings(pp: dict[str, Any]) -> dict[int, DotSettings]:
    return {int(k): dot_settings(v) for k, v in pp.get("dot_candidates", {}).items()}


def _lesion_volume(meas: dict[str, Any]) -> LesionVolume:
    lv = meas.get("lesion_volume", {})
    lv = {"method": lv} if isinstance(lv, str) else dict(lv)
    default = LesionVolume()
    core = lv.get("core")
    return LesionVolume(
        method=lv.get("method", default.method),
        shell_mm=float(lv.get("shell_mm", default.shell_mm)),
        tail_mm=float(lv.get("tail_mm", default.tail_mm)),
        core=None if core is None else float(core),
        min_contrast=float(lv.get("min_contrast", default.min_contrast)),
        grow_mm=float(lv.get("grow_mm", default.grow_mm)),
        grow_max_mm=float(lv.get("grow_max_mm", default.grow_max_mm)),
        grow_on_share=float(lv.get("grow_on_share", default.grow_on_share)),
        level=float(lv.get("level", default.level)),
        grow_contrast=float(lv.get("grow_contrast", default.grow_contrast)),
        open_mm=float(lv.get("open_mm", default.open_mm)),
        open_fraction=float(lv.get("open_fraction", default.open_fraction)),
        open_contrast=float(lv.get("open_contrast", default.open_contrast)),
        open_rim=lv.get("open_rim", default.open_rim),
        surface_cut=bool(lv.get("surface_cut", default.surface_cut)),
        shell_edge_only=bool(lv.get("shell_edge_only", default.shell_edge_only)),
        ground_glass_share=float(lv.get("ground_glass_share", default.ground_glass_share)),
        small_core=lv.get("small_core", default.small_core),
        calcium=None if lv.get("calcium") is None else float(lv["calcium"]),
    )


def _anatomy(anat: dict[str, Any] | None) -> AnatomySpec | None:
    if anat is None:
        return None
    paired = anat.get("paired")
    lo, hi = anat.get("volume_ml", [0.0, math.inf])
    return AnatomySpec(
        labels=tuple(int(v) for v in anat.get("labels") or paired or []),
        paired=(int(paired[0]), int(paired[1])) if paired else None,
        volume_ml=(float(lo), float(hi)),
        min_extent_mm=float(anat.get("min_extent_mm", 0.0)),
        min_fill=float(anat.get("min_fill", AnatomySpec(labels=()).min_fill)),
        partial_min_ml=float(anat.get("partial_min_ml", float(lo) / 10)),
        min_inside_body=float(anat.get("min_inside_body", 0.0)),
    )


def _foreign_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a MONAI bundle or an nnU-Net v2 folder, derived from its own files."""
    from ai.monai_bundle import is_monai_bundle, manifest_from_monai

    if is_monai_bundle(path):
        return manifest_from_monai(path)
    from ai.nnunet_bundle import is_nnunet_folder, manifest_from_nnunet
    from ai.totalseg_bundle import is_totalseg_task, manifest_from_totalseg

    try:
        if is_nnunet_folder(path):
            return manifest_from_nnunet(path)
        if is_totalseg_task(path):
            return manifest_from_totalseg(path)
    except AIError as exc:
        raise BundleError(str(exc)) from exc
    raise BundleError(
        f"{path} has neither {MANIFEST}, configs/metadata.json (a MONAI bundle), dataset.json and plans.json (nnU-Net v2) "
        "nor an installed TotalSegmentator task"
    )


def load_bundle(path: Path) -> Bundle:
    """Read and validate a bundle directory (dicomnode manifest, MONAI Model Zoo layout or nnU-Net v2 folder).

    A MONAI bundle or an nnU-Net folder may carry a label-coding file
    (:mod:`ai.label_coding`) whose codes and settings are merged in.

    Raises
    ------
    BundleError
        With every problem found, e.g. ``bundle x: missing 'labels'; weights file 'model.ts' does not exist``.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory")
    if (path / MANIFEST).is_file():
        try:
            m = json.loads((path / MANIFEST).read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path / MANIFEST} is not valid JSON: {exc}") from exc
    else:
        m = _foreign_manifest(path)
    problems: list[str] = []
    if m.get("source") in (MONAI_SOURCE, NNUNET_SOURCE, TOTALSEG_SOURCE):  # codes and settings the model's own files do not give
        from ai.label_coding import apply

        m, problems = apply(m, path)
    problems += problems_in(m, path)
    if problems:
        raise BundleError(f"bundle {m.get('name', path.name)}: " + "; ".join(problems))
    inp, inf, w = m.get("input", {}), m["inference"], m["weights"]
    return Bundle(
        path=path,
        name=m["name"],
        version=str(m["version"]),
        task=m["task"],
        modalities=tuple(m.get("modalities", [])),
        body_parts=tuple(m.get("body_parts", [])),
        spacing=tuple(inp["spacing"]) if inp.get("spacing") else None,
        orientation=inp.get("orientation", "LPS"),
        normalization=inp.get("normalization", {"kind": "none"}),
        roi_size=tuple(inf["roi_size"]),
        overlap=float(inf.get("overlap", 0.25)),
        batch_size=int(inf.get("batch_size", 2)),
        background_threshold=inf.get("background_threshold"),
        labels=tuple(
            Label(
                value=int(lb["value"]),
                name=lb["name"],
                snomed_code=(lb.get("snomed") or {}).get("code"),
                snomed_meaning=(lb.get("snomed") or {}).get("meaning"),
                category_code=(lb.get("category") or {}).get("code"),
                category_meaning=(lb.get("category") or {}).get("meaning"),
                color=tuple(lb.get("color", [255, 0, 0])),
                lesion=bool(lb.get("lesion", False)),
                site=coding.concept(lb.get("site")),
                laterality=Laterality(lb["laterality"]) if lb.get("laterality") else None,
                finding=coding.concept(lb.get("finding")),
            )
            for lb in m["labels"]
        ),
        postprocessing=m.get("postprocessing", {}),
        intended_use=m.get("intended_use", ""),
        weights_format=w["format"],
        weights_file=path / w["file"],
        architecture=w.get("architecture", {}),
        in_channels=int(inp.get("channels", 1)),
        gpu_memory_mb=int(inf.get("gpu_memory_mb", 0) or 0),
        tta_flips=tuple(tuple(int(a) for a in axes) for axes in inf.get("tta_flips", [])),
        lesion_shape=_shape_rules(m.get("postprocessing", {})),
        contains={int(k): tuple(int(v) for v in held) for k, held in m.get("measurement", {}).get("contains", {}).items()},
        lesion_volume=_lesion_volume(m.get("measurement", {})),
        anatomy=_anatomy(m.get("anatomy")),
        scan_score=scan_score.from_manifest(m),
        candidates=_candidate_models(m.get("postprocessing", {})),
        dot_candidates=_dot_settings(m.get("postprocessing", {})),
        procedure=coding.concept(m.get("procedure")),
        preferred_kernels=tuple((m.get("selection") or {}).get("kernels", ())),
        source=str(m.get("source", "dicomnode")),
    )


def check_bundle(path: Path, device: torch.device | None = None) -> Bundle:
    """Validate a bundle and run one window through it.

    Raises
    ------
    BundleError
        The manifest is invalid, the weights do not load, or the network's
        output does not have the channels the labels promise.
    """
    bundle = load_bundle(path)
    device = device or torch.device("cpu")
    predictor = bundle.predictor(device)
    x = torch.zeros((1, bundle.in_channels, *bundle.roi_size), device=device)
    try:
        with torch.inference_mode():
            y = predictor(x)
    except Exception as exc:
        raise BundleError(f"bundle {bundle.name}: a {bundle.roi_size} window does not run: {exc}") from exc
    if y.shape[1] != bundle.out_channels:
        raise BundleError(
            f"bundle {bundle.name}: the network outputs {y.shape[1]} channels, but {len(bundle.labels)} label(s) "
            f"need {bundle.out_channels}"
        )
    return bundle
