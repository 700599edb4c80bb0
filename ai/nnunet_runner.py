"""Run an nnU-Net v2 trained-model folder through nnU-Net's own predictor.

The folder is what ``nnUNetv2_train`` leaves (``dataset.json``, ``plans.json``,
``fold_*/checkpoint_final.pth``); one fold runs alone, several run as nnU-Net's
ensemble.  The node's in-memory volume is handed to
``nnUNetPredictor.predict_single_npy_array`` with the same array and
``image_properties`` that nnU-Net's own reader would have produced from the same
volume on disk, so nnU-Net's preprocessing, sliding window, mirroring and
resampling back to the input grid are exactly the reference ones.

Axis conventions: the node's arrays are ``[z, y, x]`` with spacing and direction
in ``(x, y, z)`` order (LPS).  SimpleITK's ``GetArrayFromImage`` gives the same
``[z, y, x]`` array, and nnU-Net then reverses the spacing to ``(sz, sy, sx)``.
No DICOM here; nnunetv2 is imported only when a model is loaded, so the node
runs without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai.errors import AIError

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
PLANS_JSON = "plans.json"
CHECKPOINT = "checkpoint_final.pth"
TILE_STEP_SIZE = 0.5  # nnUNetv2_predict's default
# Readers whose arrays are the node's [z, y, x] voxel order without reorientation.
_SAME_ORDER_READERS = ("SimpleITKIO", "NibabelIO")


class NnUNetError(AIError):
    """An nnU-Net model folder is incomplete, unsupported, or cannot run."""


@dataclass
class NnUNetOutput:
    """An nnU-Net model's result on the input grid."""

    labels: np.ndarray  # [z, y, x] uint8
    names: dict[int, str]  # label value -> name from dataset.json (background included)


def fold_names(folder: Path) -> list[str]:
    """The folds of ``folder`` that hold a final checkpoint (``"0"``, ``"1"``, ``"all"`` ...), sorted."""
    return sorted(
        p.name.removeprefix("fold_") for p in folder.glob("fold_*") if (p / CHECKPOINT).is_file()
    )


def missing_parts(folder: Path) -> list[str]:
    """What an nnU-Net v2 model folder lacks to run (empty when complete)."""
    missing = [name for name in (DATASET_JSON, PLANS_JSON) if not (folder / name).is_file()]
    if not fold_names(folder):
        missing.append(f"fold_*/{CHECKPOINT}")
    return missing


def problems(folder: Path) -> list[str]:
    """Everything that keeps ``folder`` from running as an nnU-Net v2 model, in words (empty when none).

    Checks the files and the JSON without importing nnunetv2 or unpickling a
    checkpoint, so a model can be validated where nnunetv2 is not installed.
    """
    missing = missing_parts(folder)
    found: list[str] = [f"missing {', '.join(missing)}"] if missing else []
    docs: dict[str, Any] = {}
    for name in (DATASET_JSON, PLANS_JSON):
        if (folder / name).is_file():
            try:
                docs[name] = json.loads((folder / name).read_text())
            except (OSError, ValueError) as exc:
                found.append(f"{name} is not valid JSON: {exc}")
    dataset_json, plans = docs.get(DATASET_JSON), docs.get(PLANS_JSON)
    if isinstance(dataset_json, dict):
        try:
            label_names(dataset_json)
        except NnUNetError as exc:
            found.append(str(exc))
        channels: dict[str, Any] = dict(dataset_json.get("channel_names") or dataset_json.get("modality") or {})
        if len(channels) != 1:
            found.append(f"the model takes {len(channels)} input channels; the node gives one")
    elif dataset_json is not None:
        found.append(f"{DATASET_JSON} is not a JSON object")
    if isinstance(plans, dict):
        reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
        if reader not in _SAME_ORDER_READERS:
            found.append(f"trained with reader {reader}; supported: {', '.join(_SAME_ORDER_READERS)}")
        if not plans.get("configurations"):
            found.append(f"{PLANS_JSON} has no configurations")
    elif plans is not None:
        found.append(f"{PLANS_JSON} is not a JSON object")
    return found


def label_names(dataset_json: dict[str, Any]) -> dict[int, str]:
    """Label value -> name from ``dataset.json``'s ``labels``.

    Raises
    ------
    NnUNetError
        The labels are region-based (lists of values), or do not fit a uint8 label map.
    """
    names: dict[int, str] = {}
    for name, value in dict(dataset_json.get("labels", {})).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise NnUNetError(f"label {name!r} is region-based ({value!r}); region-based models are not supported")
        if not 0 <= value <= 255:
            raise NnUNetError(f"label {name!r} has value {value}, outside a uint8 label map")
        names[value] = str(name)
    if not names:
        raise NnUNetError("dataset.json has no labels")
    return names


def image_properties(
    spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray
) -> dict[str, Any]:
    """The ``image_properties`` nnU-Net's ``SimpleITKIO`` reader gives for a 3D volume.

    ``spacing``, ``origin`` and ``direction`` are the node's (x, y, z) LPS geometry,
    which is SimpleITK's.  ``sitk_stuff`` keeps SimpleITK's own order; ``spacing``
    is nnU-Net's (sz, sy, sx), made positive as the reader does.
    """
    sx, sy, sz = (float(s) for s in spacing)
    return {
        "sitk_stuff": {
            "spacing": (sx, sy, sz),
            "origin": tuple(float(o) for o in origin),
            "direction": tuple(float(d) for d in np.asarray(direction, dtype=np.float64).reshape(9)),
        },
        "spacing": [abs(sz), abs(sy), abs(sx)],
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Route nnU-Net's ``print`` chatter to the debug log instead of the node's stdout."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.debug("nnU-Net: %s", line)


class NnUNetModel:
    """An nnU-Net v2 trained-model folder loaded into ``nnUNetPredictor``.

    Parameters
    ----------
    folder
        The trained-model folder (``<trainer>__<plans>__<configuration>``).
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    folds
        The folds to run; all folds with a ``checkpoint_final.pth`` when None.

    Raises
    ------
    NnUNetError
        nnunetv2 is not installed, the folder is incomplete, or nnU-Net cannot load it.
    """

    def __init__(self, folder: Path, device: str = "cpu", folds: Sequence[str] | None = None) -> None:
        found = problems(folder)
        if found:
            raise NnUNetError(f"nnU-Net v2 model folder {folder.name}: {'; '.join(found)}")
        import torch  # here, so that validating a folder (problems) needs neither torch nor nnunetv2

        try:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        except ImportError as exc:
            raise NnUNetError(f"nnunetv2 is not installed, cannot run {folder.name}: {exc}") from exc
        self.folder = folder
        self.names = label_names(json.loads((folder / DATASET_JSON).read_text()))
        self.folds = list(folds) if folds is not None else fold_names(folder)
        self.device = torch.device(device)
        with _quiet():
            self.predictor = nnUNetPredictor(
                tile_step_size=TILE_STEP_SIZE,
                use_gaussian=True,
                use_mirroring=True,  # along the axes the checkpoint allows (none when it allows none)
                perform_everything_on_device=self.device.type == "cuda",
                device=self.device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            try:
                self.predictor.initialize_from_trained_model_folder(
                    str(folder), use_folds=tuple(self.folds), checkpoint_name=CHECKPOINT
                )
            except (OSError, KeyError, RuntimeError, ValueError) as exc:
                raise NnUNetError(f"{folder.name}: nnU-Net cannot load the model: {exc}") from exc
        logger.info("nnU-Net model %s loaded: folds %s on %s", folder.name, ",".join(self.folds), self.device)

    def run(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
    ) -> NnUNetOutput:
        """Segment ``volume`` ([z, y, x], spacing and direction in (x, y, z) order).

        Returns
        -------
        NnUNetOutput
            The label map on the input grid and the label names.

        Raises
        ------
        NnUNetError
            The volume is not 3D, or nnU-Net fails on it.
        """
        if volume.ndim != 3:
            raise NnUNetError(f"expected a [z, y, x] volume, got shape {volume.shape}")
        props = image_properties(spacing, origin, np.eye(3) if direction is None else direction)
        image = np.ascontiguousarray(volume, dtype=np.float32)[None]  # (c, z, y, x), as SimpleITKIO stacks it
        with _quiet():
            try:
                seg = self.predictor.predict_single_npy_array(image, props)
            except (RuntimeError, ValueError) as exc:
                raise NnUNetError(f"{self.folder.name}: nnU-Net prediction failed: {exc}") from exc
        labels = np.asarray(seg)
        if labels.shape != volume.shape:
            raise NnUNetError(f"nnU-Net returned shape {labels.shape} for an input of {volume.shape}")
        return NnUNetOutput(labels=labels.astype(np.uint8), names=dict(self.names))
