"""Run an installed TotalSegmentator task through TotalSegmentator's own Python API, offline.

The node's in-memory volume is handed to ``totalsegmentator.python_api.totalsegmentator``
as a NIfTI image in memory (no detour through files), so TotalSegmentator's own
cropping, resampling, part models, label combination and resampling back are
the reference ones; its label map comes back on the input grid.

Offline and private by construction: the weights folder is the installed
task folder, checked complete before every run (TotalSegmentator would
otherwise try to download what is missing), and TotalSegmentator's home is a
folder of this process whose configuration turns its usage statistics off
(it would otherwise post each run to its authors' server).  TotalSegmentator
reads both from environment variables, which are process-wide: runs are
serialised and the variables restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ai.totalseg_bundle import TotalSegmentatorError, missing_folders, read_record

logger = logging.getLogger(__name__)

_ENV = ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_LOCK = threading.Lock()  # TotalSegmentator's settings are environment variables: one run at a time
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def nifti_affine(spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """The RAS affine of a NIfTI image whose data is the node's ``[z, y, x]`` volume transposed to ``[x, y, z]``."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ (np.asarray(direction, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)[None, :])
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


@contextlib.contextmanager
def _environment(home: Path, weights: Path) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in _ENV}
    os.environ["TOTALSEG_HOME_DIR"], os.environ["TOTALSEG_WEIGHTS_PATH"] = str(home), str(weights)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):  # TotalSegmentator prints its progress
            yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.debug("TotalSegmentator: %s", line)


def private_home() -> Path:
    """A TotalSegmentator home folder whose configuration sends no usage statistics."""
    home = Path(tempfile.mkdtemp(prefix="dicomnode-totalseg-"))
    config = {"totalseg_id": "dicomnode", "send_usage_stats": False, "prediction_counter": 0, "statistics_disclaimer_shown": True}
    (home / "config.json").write_text(json.dumps(config))
    return home


class TotalSegmentatorModel:
    """An installed TotalSegmentator task (see :mod:`ai.totalseg_bundle`).

    Parameters
    ----------
    folder : pathlib.Path
        The installed task folder: its record and the weights folders it needs.
    device : str
        ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).

    Raises
    ------
    TotalSegmentatorError
        TotalSegmentator is not installed, or weights of the task are missing.
    """

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        record = read_record(folder)
        self.folder, self.task, self.fast = folder, str(record["task"]), bool(record.get("fast", False))
        missing = missing_folders(folder, self.task, self.fast)
        if missing:
            raise TotalSegmentatorError(
                f"TotalSegmentator task {self.task}: weights missing in {folder}: {', '.join(missing)} "
                "(install them with TotalSegmentator's own tools, then dicomnode models import)"
            )
        self.device = "gpu" if device == "cuda" else f"gpu:{device.split(':')[1]}" if device.startswith("cuda:") else "cpu"
        self.home = private_home()
        # The home folder lives as long as the model: removed when it is collected or the process exits.
        weakref.finalize(self, shutil.rmtree, self.home, ignore_errors=True)  # the finalizer keeps itself alive
        logger.info("TotalSegmentator task %s ready on %s", self.task, self.device)

    def run(
        self, volume: np.ndarray, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
    ) -> np.ndarray:
        """TotalSegmentator's label map of ``volume`` ([z, y, x], spacing and direction in (x, y, z) LPS order), on its grid.

        Raises
        ------
        TotalSegmentatorError
            The volume is not 3D, weights went missing, or TotalSegmentator fails on it.
        """
        import nibabel as nib
        from totalsegmentator.python_api import totalsegmentator

        if volume.ndim != 3:
            raise TotalSegmentatorError(f"expected a [z, y, x] volume, got shape {volume.shape}")
        missing = missing_folders(self.folder, self.task, self.fast)
        if missing:  # never let TotalSegmentator reach for the network
            raise TotalSegmentatorError(f"TotalSegmentator task {self.task}: weights missing: {', '.join(missing)}")
        affine = nifti_affine(spacing, origin, np.eye(3) if direction is None else direction)
        data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))
        image = nib.Nifti1Image(data.astype(np.int16 if np.issubdtype(data.dtype, np.integer) else np.float32), affine)
        with _LOCK, _environment(self.home, self.folder):
            try:
                out = totalsegmentator(
                    image, None, ml=True, task=self.task, fast=self.fast, device=self.device, quiet=True,
                    nr_thr_resamp=1, nr_thr_saving=1,
                )
            except (RuntimeError, ValueError, OSError, KeyError, SystemExit) as exc:  # it exits on some errors
                raise TotalSegmentatorError(f"TotalSegmentator task {self.task} failed: {exc}") from exc
        labels = np.transpose(np.asanyarray(out.dataobj).astype(np.uint8), (2, 1, 0))
        if labels.shape != volume.shape:
            raise TotalSegmentatorError(f"TotalSegmentator returned shape {labels.shape} for an input of {volume.shape}")
        return np.ascontiguousarray(labels)
