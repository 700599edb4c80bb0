"""Training data: image/label pairs on disk, loading them on the training grid, and the hold-out split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.errors import AIError
from ai.preprocess import prepare, read_pair
from ai.training.task import Pair

WINDOW: dict[str, Any] = {"kind": "window", "low": -1000, "high": 1000}
"""The CT intensity normalisation of every task (the bundles' ``input.normalization``)."""


def find_pairs(data: Path) -> list[Pair]:
    """The ``(image, labels)`` NIfTI pairs in a folder: ``*_image.nii.gz`` with ``*_labels.nii.gz``.

    Parameters
    ----------
    data : Path
        The folder.

    Returns
    -------
    list of (Path, Path)
        Sorted by image name.

    Raises
    ------
    AIError
        There is no pair.
    """
    pairs = []
    for img in sorted(data.glob("*_image.nii*")):
        lab = img.with_name(img.name.replace("_image.", "_labels."))
        if lab.exists():
            pairs.append((img, lab))
    if not pairs:
        raise AIError(f"no *_image.nii.gz / *_labels.nii.gz pairs in {data}")
    return pairs


def load_case(image: Path, labels: Path, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An image (normalised by :data:`WINDOW`, float16) and its labels (uint8), resampled to ``spacing``.

    Parameters
    ----------
    image, labels : Path
        The NIfTI pair.
    spacing : (float, float, float)
        Target spacing ``(x, y, z)`` mm.

    Returns
    -------
    (ndarray, ndarray)
        ``[z, y, x]`` arrays on the same grid (labels by nearest neighbour).
    """
    hu, lab, sp, direction = read_pair(image, labels)
    return case_arrays(hu, lab, tuple(float(v) for v in sp), direction, spacing)


def case_arrays(
    hu: np.ndarray, labels: np.ndarray, source_spacing: Sequence[float], direction: np.ndarray,
    spacing: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_case` on in-memory arrays (a phantom generated in the same process, say).

    Parameters
    ----------
    hu, labels : ndarray
        ``[z, y, x]`` HU and label map on one grid.
    source_spacing : sequence of float
        Their spacing ``(x, y, z)`` mm.
    direction : ndarray
        3x3 LPS direction cosines (column i: index axis i).
    spacing : (float, float, float)
        Target spacing ``(x, y, z)`` mm.
    """
    x = prepare(np.asarray(hu, dtype=np.float32), tuple(source_spacing), direction, target_spacing_xyz=spacing, normalization=WINDOW)
    return x.tensor[0].numpy().astype(np.float16), resize_like(labels, source_spacing, direction, tuple(x.tensor.shape[1:]))


def resize_like(mask: np.ndarray, source_spacing: Sequence[float], direction: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A label map or mask reoriented as :func:`case_arrays` does and resized to ``size`` by nearest neighbour (uint8)."""
    y = prepare(np.asarray(mask, dtype=np.float32), tuple(source_spacing), direction, target_spacing_xyz=None)
    y_t = torch.nn.functional.interpolate(y.tensor[None], size=size, mode="nearest")[0, 0]
    return y_t.numpy().astype(np.uint8)


def hard_negative_path(image: Path) -> Path:
    """Where the hard-negative mask of an image lies: ``*_image.nii.gz`` -> ``*_hardneg.nii.gz``."""
    return image.with_name(image.name.replace("_image.", "_hardneg."))


def load_mask(image: Path, mask: Path, size: tuple[int, int, int]) -> np.ndarray:
    """A mask beside ``image`` (same grid), reoriented as :func:`load_case` does and resized to ``size``.

    Parameters
    ----------
    image, mask : Path
        The image and its mask (NIfTI, same grid).
    size : (int, int, int)
        The shape of the image's :func:`load_case` array.

    Returns
    -------
    ndarray
        ``bool [z, y, x]``, nearest neighbour.
    """
    _hu, m, sp, direction = read_pair(image, mask)
    return resize_like(m, tuple(float(v) for v in sp), direction, size) > 0


def validation_count(n_pairs: int, fraction: float) -> int:
    """How many of ``n_pairs`` cases to hold out: ``round(n * fraction)``, at least one, none of a single case."""
    return max(1, int(round(n_pairs * fraction))) if n_pairs > 1 else 0


def head_split(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """``(train, validation)``: the first :func:`validation_count` pairs validate, the rest train.

    With a single pair there is no validation and that pair trains.
    """
    n_val = validation_count(len(pairs), fraction)
    return pairs[n_val:] or pairs, pairs[:n_val]
