"""Preprocessing for a model, and its exact inverse back onto the source grid.

Forward: reorient the ``[z, y, x]`` array to the bundle's orientation (axis
permutation and flips only, never interpolation), crop to the foreground
(body) bounding box, resample to the bundle's spacing, and normalise the
intensities.  :class:`Prepared` remembers every step, so that scores are
brought back (resampled, un-cropped, un-flipped, un-permuted) onto exactly
the voxels of the source volume, and label maps by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ai.errors import AIError

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

_T = TypeVar("_T")
_LPS = ("L", "P", "S")
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}
_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def axis_codes(direction: np.ndarray) -> str:
    """Where each index axis (x, y, z) points, in patient terms, e.g. ``"LPS"`` for a plain axial CT."""
    codes = []
    for i in range(3):
        j = int(np.argmax(np.abs(direction[:, i])))
        codes.append(_LPS[j] if direction[j, i] > 0 else _OPPOSITE[_LPS[j]])
    if len({_WORLD_AXIS[c] for c in codes}) != 3:
        raise AIError(f"the volume's direction matrix is degenerate: {direction.tolist()}")
    return "".join(codes)


@dataclass
class Prepared:
    """A preprocessed image and how to undo each step."""

    tensor: torch.Tensor  # (1, D, H, W) model input, float32
    source_shape: tuple[int, int, int]  # [z, y, x] of the source volume
    perm: tuple[int, int, int]  # array axes of the source in the order of the reoriented array
    flips: tuple[int, ...]  # reoriented array axes that were flipped
    crop: tuple[slice, slice, slice]  # in the reoriented array
    reoriented_shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]  # of the model input

    def _unresample(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        size = tuple(s.stop - s.start for s in self.crop)
        if tuple(x.shape[-3:]) == size:
            return x
        kw: dict[str, Any] = {"mode": mode} if mode == "nearest" else {"mode": mode, "align_corners": False}
        return F.interpolate(x[None].float(), size=size, **kw)[0]

    def _unframe(self, x: torch.Tensor, fill: torch.Tensor) -> np.ndarray:
        full = fill.expand(x.shape[0], *self.reoriented_shape).clone()
        full[(slice(None), *self.crop)] = x
        if self.flips:
            full = torch.flip(full, [a + 1 for a in self.flips])
        inverse = np.argsort(self.perm)
        return full.permute(0, *[int(a) + 1 for a in inverse]).numpy()

    def invert_scores(self, scores: torch.Tensor) -> np.ndarray:
        """``(K, d, h, w)`` scores on the model grid to ``(K, z, y, x)`` on the source grid.

        Outside the cropped region the background (channel 0) scores 1.
        """
        x = self._unresample(scores, "trilinear")
        fill = torch.zeros((x.shape[0], 1, 1, 1), dtype=x.dtype)
        fill[0] = 1.0
        return self._unframe(x, fill)

    def invert_labels(self, labels: np.ndarray) -> np.ndarray:
        """A label map on the model grid back to the source grid (nearest neighbour)."""
        x = self._unresample(torch.from_numpy(labels.astype(np.int16))[None], "nearest").to(torch.int16)
        return self._unframe(x, torch.zeros((1, 1, 1, 1), dtype=torch.int16))[0].astype(labels.dtype)


def normalize(x: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Intensity normalisation: ``window`` (clip to low..high, scale to -1..1), ``zscore``, ``scale`` or ``none``."""
    kind = spec.get("kind", "none")
    if kind == "window":
        lo, hi = float(spec["low"]), float(spec["high"])
        return (x.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1
    if kind == "zscore":
        mask = x > float(spec["foreground_above"]) if "foreground_above" in spec else torch.ones_like(x, dtype=torch.bool)
        vals = x[mask] if bool(mask.any()) else x.flatten()
        return (x - vals.mean()) / vals.std().clamp_min(1e-6)
    if kind == "scale":
        return x * float(spec.get("multiply", 1.0)) + float(spec.get("add", 0.0))
    if kind == "none":
        return x
    raise AIError(f"unknown normalization {kind!r}")


def prepare(
    array: np.ndarray,
    spacing_xyz: Sequence[float],
    direction: np.ndarray,
    *,
    orientation: str = "LPS",
    target_spacing_xyz: Sequence[float] | None = None,
    normalization: dict[str, Any] | None = None,
    foreground_above: float | None = None,
    margin_mm: float = 10.0,
) -> Prepared:
    """Reorient, crop to the foreground, resample and normalise a ``[z, y, x]`` volume.

    Parameters
    ----------
    array : ndarray
        The source volume, ``[z, y, x]``, in physical units.
    spacing_xyz : sequence of float
        Its spacing, ``(x, y, z)`` mm.
    direction : ndarray
        3x3, column i the LPS direction of index axis i (x, y, z).
    orientation : str
        Target orientation code of the index axes (x, y, z), e.g. ``"RAS"`` or ``"LPS"``.
    target_spacing_xyz : sequence of float, optional
        Spacing the model expects; ``None`` keeps the source spacing.
    normalization : dict, optional
        See :func:`normalize`.
    foreground_above : float, optional
        Crop to the bounding box of voxels above this value (plus ``margin_mm``).
    """
    orientation = orientation.upper()
    if sorted(_WORLD_AXIS[c] for c in orientation) != [0, 1, 2]:
        raise AIError(f"orientation {orientation!r} is not a valid code such as RAS or LPS")
    codes = axis_codes(direction)
    # Index axis order (x, y, z) <-> array axes (2, 1, 0).
    src_axis_of_world = {_WORLD_AXIS[c]: i for i, c in enumerate(codes)}
    new_index_axes = [src_axis_of_world[_WORLD_AXIS[c]] for c in orientation]  # source index axis for each target index axis
    flip_index = [k for k, c in enumerate(orientation) if codes[new_index_axes[k]] != c]
    perm = _triple([2 - new_index_axes[2 - a] for a in range(3)])  # array axes
    flips = tuple(2 - k for k in flip_index)
    x = torch.from_numpy(np.ascontiguousarray(array)).float().permute(*perm)
    if flips:
        x = torch.flip(x, list(flips))
    reoriented_shape = _triple([int(s) for s in x.shape])
    src_spacing_zyx = _triple([float(spacing_xyz[2 - perm[a]]) for a in range(3)])
    crop = _triple([slice(0, n) for n in reoriented_shape])
    if foreground_above is not None:
        fg = x > foreground_above
        if bool(fg.any()):
            box = []
            for a in range(3):
                other = tuple(b for b in range(3) if b != a)
                idx = torch.nonzero(fg.any(dim=other)).flatten()
                m = int(np.ceil(margin_mm / src_spacing_zyx[a]))
                box.append(slice(max(0, int(idx[0]) - m), min(reoriented_shape[a], int(idx[-1]) + 1 + m)))
            crop = _triple(box)
    x = x[crop]
    spacing_zyx = src_spacing_zyx
    if target_spacing_xyz is not None:
        target_zyx = tuple(float(v) for v in reversed(list(target_spacing_xyz)))
        size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(x.shape, src_spacing_zyx, target_zyx))
        if size != tuple(x.shape):
            x = F.interpolate(x[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
        spacing_zyx = _triple([n * s / m for n, s, m in zip((c.stop - c.start for c in crop), src_spacing_zyx, size)])
    x = normalize(x, normalization or {"kind": "none"})
    return Prepared(
        tensor=x[None].contiguous(),
        source_shape=_triple([int(n) for n in array.shape]),
        perm=perm,
        flips=flips,
        crop=crop,
        reoriented_shape=reoriented_shape,
        spacing_zyx=spacing_zyx,
    )


def _triple(values: Sequence[_T]) -> tuple[_T, _T, _T]:
    """The three values of a per-axis sequence, as a typed triple."""
    a, b, c = values
    return a, b, c


def to_roi(tensor: torch.Tensor, roi: tuple[int, int, int]) -> torch.Tensor:
    """``(C, D, H, W)`` -> ``(1, C, *roi)`` by trilinear resizing.

    The input of a classification bundle: the engine resizes the prepared
    volume with it, and training (:mod:`ai.training`) does exactly the same.
    """
    return F.interpolate(tensor[None], size=roi, mode="trilinear", align_corners=False)


def read_pair(image: Path, labels: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A NIfTI image and label map as ``[z, y, x]`` float32 arrays, with spacing ``(x, y, z)`` and LPS direction."""
    img, lab_img = _load_spatial(image), _load_spatial(labels)
    aff = img.affine
    if aff is None:
        raise AIError(f"{image} has no affine")
    sp = np.linalg.norm(aff[:3, :3], axis=0)
    direction = np.diag([-1.0, -1.0, 1.0]) @ (aff[:3, :3] / sp)  # RAS -> LPS
    hu = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.float32)
    lab = np.asarray(lab_img.dataobj).transpose(2, 1, 0).astype(np.float32)
    return hu, lab, sp, direction


def _load_spatial(path: Path) -> SpatialImage:
    """A NIfTI (or other spatial) image, as nibabel loads it."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    img = nib.load(str(path))
    if not isinstance(img, SpatialImage):
        raise AIError(f"{path} is not a spatial image (NIfTI)")
    return img
