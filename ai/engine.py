"""Run a model bundle on a volume: preprocess, infer, invert, post-process, measure.

The input is plain arrays (``[z, y, x]`` intensities, spacing, direction);
the outputs are on the source voxel grid.  No DICOM here.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ai.anatomy import AnatomyVerdict, assess, inside_body
from ai.bundle import MONAI_SOURCE, NNUNET_SOURCE, TOTALSEG_SOURCE, Bundle, Label
from ai.candidates import Kept, judge, with_probabilities
from ai.dot_candidates import judge_dots
from ai.errors import AIError
from ai.findings import Finding, findings
from ai.inference import WindowConfig, optimize_predictor, select_device, sliding_window
from ai.measure import LabelMeasurement, measure
from ai.monai_runner import MonaiRunner
from ai.postprocess import dilate_box, fill_holes, keep_largest, keep_within, min_voxels, remove_small, to_labels
from ai.shape import filter_shapes
from ai.preprocess import prepare, to_roi


if TYPE_CHECKING:
    from ai.nnunet_runner import NnUNetModel
    from ai.totalseg_runner import TotalSegmentatorModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassScores:
    """The class probabilities of one classifier, named by the model that computed them."""

    model: str
    version: str
    probabilities: dict[str, float]
    labels: tuple[Label, ...] = ()  # its classes, with their codes


@dataclass
class Result:
    """What a model produced for one volume, on the source grid."""

    labels: np.ndarray | None = None  # [z, y, x] uint8, segmentation
    probabilities: np.ndarray | None = None  # (K, z, y, x) float32, segmentation (if asked)
    class_probabilities: dict[str, float] = field(default_factory=dict)  # classification
    measurements: list[LabelMeasurement] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    anatomy: AnatomyVerdict | None = None  # the bundle's anatomy gate (None: the bundle has none)
    findings: list[Finding] = field(default_factory=list)  # every lesion, numbered by volume across lesion labels
    classifications: list[ClassScores] = field(default_factory=list)  # other models' classes, each under its own name
    candidates: dict[int, list[float]] = field(default_factory=dict)  # lesion label -> its kept candidates' probabilities


class Engine:
    """A loaded bundle, kept between volumes.

    Parameters
    ----------
    bundle : Bundle
        A validated bundle.
    device : str
        ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.
    compile : bool
        ``torch.compile`` the network on CUDA (slow first call, faster after).
    """

    def __init__(self, bundle: Bundle, device: str = "auto", compile: bool = False) -> None:
        self.bundle = bundle
        self.device = select_device(device)
        self.monai: MonaiRunner | None = None
        self.nnunet: NnUNetModel | None = None
        self.totalseg: TotalSegmentatorModel | None = None
        self.predictor: Callable[[torch.Tensor], torch.Tensor]
        if bundle.source == TOTALSEG_SOURCE:  # a TotalSegmentator task runs through TotalSegmentator's own API
            from ai.totalseg_runner import TotalSegmentatorModel

            self.totalseg = TotalSegmentatorModel(bundle.path, device=str(self.device))
            self.predictor = _no_predictor
            return
        if bundle.source == NNUNET_SOURCE:  # an nnU-Net folder runs through nnU-Net's own predictor
            from ai.nnunet_runner import NnUNetModel

            self.nnunet = NnUNetModel(bundle.path, device=str(self.device))
            self.predictor = _no_predictor
            return
        if bundle.source == MONAI_SOURCE:  # a MONAI bundle runs with its own transforms and inferer
            self.monai = MonaiRunner(bundle.path, self.device)
            self.predictor = self.monai.network
            return
        predictor = optimize_predictor(bundle.predictor(self.device))
        if compile and self.device.type == "cuda" and isinstance(predictor, torch.nn.Module):
            predictor = torch.compile(predictor)
        self.predictor = predictor

    def with_postprocessing(self, pp: dict[str, Any]) -> Engine:
        """This engine, sharing its network, with another ``postprocessing`` (:meth:`Bundle.with_postprocessing`)."""
        other = copy.copy(self)
        other.bundle = self.bundle.with_postprocessing(pp)
        return other

    def _cpu_predictor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.bundle.predictor(torch.device("cpu"))

    def postprocess(
        self,
        source_scores: np.ndarray,
        spacing_xyz: tuple[float, float, float],
        label_thresholds: dict[int, float] | None = None,
        detection_thresholds: dict[int, float] | None = None,
        image: np.ndarray | None = None,
        direction: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[int, list[Kept]]]:
        """Scores on the source grid -> label map, as the bundle's ``postprocessing`` says.

        In order: argmax or thresholds, ``keep_largest``, ``lesion_shape``
        (vessels among the lesion components go to their surroundings),
        ``min_size_mm3`` (a component is kept when its volume reaches the
        floor), ``fill_holes``, ``within`` (with ``within_fraction``, the share of a
        lesion's border that must be its parents), then ``candidates`` (each
        remaining lesion component judged by the bundle's candidate classifier,
        :mod:`ai.candidates`), then ``dot_candidates`` (round spots beyond the network's
        candidates, :mod:`ai.dot_candidates`); both need the source ``image`` and ``direction``.
        ``label_thresholds`` and ``detection_thresholds`` override the bundle's (for tuning them).

        Returns
        -------
        (ndarray, dict)
            The label map, and per lesion label with a candidate classifier its kept candidates.
        """
        pp: dict[str, Any] = self.bundle.postprocessing
        if label_thresholds is None:
            label_thresholds = {int(k): float(v) for k, v in pp.get("label_thresholds", {}).items()}
        if detection_thresholds is None:
            detection_thresholds = {int(k): float(v) for k, v in pp.get("detection_thresholds", {}).items()}
        labels = to_labels(
            torch.from_numpy(source_scores), threshold=pp.get("threshold"), label_thresholds=label_thresholds,
            detection_thresholds=detection_thresholds,
        )
        if pp.get("keep_largest"):
            labels = keep_largest(labels, pp["keep_largest"])
        spacing_zyx = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
        if self.bundle.lesion_shape:
            labels = filter_shapes(labels, self.bundle.lesion_shape, spacing_zyx)
        if pp.get("min_size_mm3"):
            floor = min_voxels(float(pp["min_size_mm3"]), float(np.prod(spacing_xyz)))
            labels = remove_small(labels, floor, values=[lb.value for lb in self.bundle.labels])
        if pp.get("fill_holes"):
            labels = fill_holes(labels, pp["fill_holes"] if isinstance(pp["fill_holes"], list) else None)
        fractions = pp.get("within_fraction", {})
        for child, parent in pp.get("within", {}).items():
            labels = keep_within(labels, int(child), [int(p) for p in parent] if isinstance(parent, list) else int(parent),
                                 min_fraction=float(fractions.get(str(child), fractions.get(child, 0.0))))
        kept: dict[int, list[Kept]] = {}
        if image is None or direction is None:
            return labels, kept
        lesions = [lb.value for lb in self.bundle.labels if lb.lesion]
        network = {value: labels == value for value in self.bundle.dot_candidates}  # before judging: every network candidate
        for value, model in self.bundle.candidates.items():
            labels, kept[value] = judge(labels, value, source_scores[value], image, spacing_zyx, direction, self.organs(value),
                                        model, lesions)
        for value, cfg in self.bundle.dot_candidates.items():  # then spots the network left out, judged by their own classifier
            exclude = dilate_box(network[value], (1, 1, 1))
            labels, more = judge_dots(labels, value, source_scores[value], image, spacing_zyx, direction, self.organs(value),
                                      exclude, cfg)
            kept.setdefault(value, []).extend(more)
        return labels, kept

    def organs(self, value: int) -> list[int]:
        """The labels lesion ``value`` lies in (its ``postprocessing.within`` parents)."""
        parent = self.bundle.postprocessing.get("within", {}).get(str(value), [])
        return [int(p) for p in parent] if isinstance(parent, list) else [int(parent)]

    def tail_thresholds(self) -> dict[int, float]:
        """Per lesion label, the probability from which post-processing calls a voxel that label."""
        pp: dict[str, Any] = self.bundle.postprocessing
        default = float(pp["threshold"]) if pp.get("threshold") is not None else 0.5
        given = {int(k): float(v) for k, v in pp.get("label_thresholds", {}).items()}
        for value, model in self.bundle.candidates.items():  # a kept candidate is its core: its tail starts there
            if model.core_threshold is not None:
                given[value] = max(given.get(value, 0.0), model.core_threshold)
        return {lb.value: min(given.get(lb.value, default), default) for lb in self.bundle.labels if lb.lesion}

    def run(
        self,
        array: np.ndarray,
        spacing_xyz: tuple[float, float, float],
        direction: np.ndarray,
        *,
        keep_probabilities: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Result:
        """Segment or classify one volume.

        Raises
        ------
        AIError
            The volume is empty or the model fails.
        """
        b = self.bundle
        if array.ndim != 3 or min(array.shape) < 1:
            raise AIError(f"expected a 3D volume, got shape {array.shape}")
        res = Result(device=str(self.device))
        if self.monai is not None:
            return self._run_monai(self.monai, res, array, spacing_xyz, direction, keep_probabilities)
        if self.nnunet is not None or self.totalseg is not None:
            t0 = time.perf_counter()
            if self.nnunet is not None:
                labels = self.nnunet.run(array, spacing_xyz, direction=direction).labels
            else:
                assert self.totalseg is not None
                labels = self.totalseg.run(array, spacing_xyz, direction=direction)
            res.timings["infer"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            self._measure(res, labels, None, None, array, spacing_xyz, direction)
            res.timings["postprocess"] = time.perf_counter() - t1
            return res
        t0 = time.perf_counter()
        pp: dict[str, Any] = b.postprocessing
        prepared = prepare(
            array,
            spacing_xyz,
            direction,
            orientation=b.orientation,
            target_spacing_xyz=b.spacing,
            normalization=b.normalization,
            foreground_above=pp.get("crop_foreground_above"),
        )
        res.timings["preprocess"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if b.task == "classification":
            x = to_roi(prepared.tensor, b.roi_size)  # exactly as the classification task trains it
            with torch.inference_mode():
                logits = self.predictor(x.to(self.device)).float().cpu()[0]
            probs = torch.softmax(logits, 0) if logits.numel() > 1 else torch.sigmoid(logits)
            res.class_probabilities = {lb.name: float(p) for lb, p in zip(b.labels, probs)}
            res.timings["infer"] = time.perf_counter() - t1
            return res
        cfg = WindowConfig(
            roi_size=b.roi_size, overlap=b.overlap, batch_size=b.batch_size, background_threshold=b.background_threshold
        )
        scores = sliding_window(
            prepared.tensor, self.predictor, cfg, device=self.device, out_channels=b.out_channels,
            to_cpu=self._cpu_predictor, progress=progress,
        )
        scores = torch.softmax(scores, 0) if pp.get("softmax", True) else scores
        for axes in b.tta_flips:  # test-time augmentation: average with mirrored inputs
            dims = [1 + int(a) for a in axes]
            flipped = sliding_window(
                torch.flip(prepared.tensor, dims), self.predictor, cfg, device=self.device, out_channels=b.out_channels,
                to_cpu=self._cpu_predictor,
            )
            flipped = torch.softmax(flipped, 0) if pp.get("softmax", True) else flipped
            scores.add_(torch.flip(flipped, dims))
        if b.tta_flips:
            scores.div_(len(b.tta_flips) + 1)
        res.timings["infer"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        source_scores = prepared.invert_scores(scores)
        labels, kept = self.postprocess(source_scores, spacing_xyz, image=array, direction=direction)
        res.candidates = {value: [k.probability for k in ks] for value, ks in kept.items()}
        if keep_probabilities:
            res.probabilities = source_scores.astype(np.float32)
        calibrated = source_scores if pp.get("softmax", True) else None  # raw scores are no probabilities
        ss = b.scan_score
        peak = max(res.candidates[ss.label], default=0.0) if ss is not None and ss.label in kept else None
        self._measure(res, labels, source_scores, calibrated, array, spacing_xyz, direction, peak, kept)
        res.timings["postprocess"] = time.perf_counter() - t2
        return res

    def _run_monai(
        self, runner: MonaiRunner, res: Result, array: np.ndarray, spacing_xyz: tuple[float, float, float],
        direction: np.ndarray, keep_probabilities: bool,
    ) -> Result:
        """The bundle's own preprocessing, inferer and postprocessing; then our measurements."""
        t0 = time.perf_counter()
        out = runner.run(array, spacing_xyz, direction)
        res.timings["infer"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if keep_probabilities:
            res.probabilities = out.probabilities
        self._measure(res, out.labels, out.probabilities, out.probabilities, array, spacing_xyz, direction)
        res.timings["postprocess"] = time.perf_counter() - t1
        return res

    def _measure(
        self, res: Result, labels: np.ndarray, scores: np.ndarray | None, probabilities: np.ndarray | None, array: np.ndarray,
        spacing_xyz: tuple[float, float, float], direction: np.ndarray, peak: float | None = None,
        kept: dict[int, list[Kept]] | None = None,
    ) -> None:
        """Measurements, findings, scan score and anatomy gate of a label map on the source grid.

        ``peak``: the scan score's evidence when a candidate classifier judged the lesions (else the network's peak);
        ``kept``: the candidates it kept, whose probabilities the lesions then carry.
        """
        b = self.bundle
        res.labels = labels
        names = {lb.value: lb.name for lb in b.labels}
        res.measurements = measure(
            labels,
            spacing_xyz,
            names,
            image=array,
            lesion_values=[lb.value for lb in b.labels if lb.lesion],
            probabilities=probabilities,
            contains=b.contains,
            lesion_volume=dataclasses.replace(b.lesion_volume, thresholds=self.tail_thresholds()),
        )
        if kept:
            res.measurements = with_probabilities(res.measurements, kept)
        res.findings = findings(res.measurements, b)
        if b.scan_score is not None and scores is not None:
            res.class_probabilities = b.scan_score.classes(labels, scores, peak)
        if b.anatomy is not None:
            volumes = {m.value: m.volume_ml for m in res.measurements}
            inside = None
            body_above = b.postprocessing.get("crop_foreground_above")
            if b.anatomy.min_inside_body > 0 and body_above is not None:
                inside = inside_body(array, labels, b.anatomy.labels, direction, float(body_above), spacing_xyz)
            res.anatomy = assess(labels, spacing_xyz, direction, b.anatomy, names, volumes, inside)


def _no_predictor(x: torch.Tensor) -> torch.Tensor:
    """The predictor of a model that runs through its own library (nnU-Net, TotalSegmentator): never called."""
    raise AIError("this model runs through its own predictor, not a network callable")
