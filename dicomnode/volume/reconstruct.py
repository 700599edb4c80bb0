"""Reconstruct a stored series into a 3D volume in physical units.

The result has voxels in physical units (HU for CT), spacing, origin and a
3x3 direction in patient coordinates (LPS), and converts to SimpleITK and
NIfTI.  Pixels are decoded slice by slice into one preallocated array, so
memory is the volume plus one slice per worker, never the datasets.
Compressed slices are decoded by worker processes on all cores.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.errors import VolumeError
from dicomnode.redaction import describe_exception
from dicomnode.volume.grid import Volume as Volume  # re-exported: a volume needs no DICOM reader
from dicomnode.volume.slices import SliceInfo, instance_label, scan, series_files
from dicomnode.volume.stacks import Excluded, Stack, choose_stack

logger = logging.getLogger(__name__)

PARALLEL_MIN_SLICES = 16


@dataclass(frozen=True)
class VolumePolicy:
    """How strict reconstruction is.  The defaults refuse anything doubtful."""

    gap_factor: float = 1.5
    resample_nonuniform: bool = False
    workers: int = 0  # processes for compressed data; 0 = all cores
    # Which stack to keep when positions repeat, e.g. {"echo": 2}; default: the largest.
    prefer: Mapping[str, object] = field(default_factory=dict)


# --------------------------------------------------------------- decoding

_SHARED: tuple[Any, tuple[int, ...], np.dtype] | None = None  # set before forking workers


def _stored_dtype(s: SliceInfo) -> np.dtype:
    if s.bits_allocated not in (8, 16, 32):
        raise VolumeError(f"{s.label}: BitsAllocated {s.bits_allocated} is not supported")
    kind = "i" if s.signed else "u"
    return np.dtype(f"{'<' if s.little_endian else '>'}{kind}{s.bits_allocated // 8}")


def _fix_bits(px: np.ndarray, s: SliceInfo) -> np.ndarray:
    """Mask bits above BitsStored and sign-extend (PS3.5 8.1.1)."""
    if s.bits_stored >= s.bits_allocated:
        return px
    shift = s.bits_allocated - s.bits_stored
    if s.signed:
        return (px << shift) >> shift  # arithmetic shift sign-extends
    return px & ((1 << s.bits_stored) - 1)


def _read_native(s: SliceInfo) -> np.ndarray:
    dtype = _stored_dtype(s)
    count = s.rows * s.columns
    px = np.fromfile(s.path, dtype=dtype, count=count, offset=s.pixel_offset or 0)
    if px.size != count:
        raise VolumeError(f"{s.label}: pixel data is truncated ({px.size} of {count} pixels)")
    return _fix_bits(px.reshape(s.rows, s.columns), s)


def _decode_file(s: SliceInfo) -> np.ndarray:
    # pydicom.pixels.pixel_array(path) reads only what decoding needs: 25% faster
    # than dcmread(...).pixel_array.
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(str(s.path))
    except Exception as exc:  # no codec, corrupt stream...
        raise VolumeError(f"{instance_label(s.index, s.count)}: pixel data cannot be decoded: {describe_exception(exc)}") from exc
    return arr


def _write_slices(out: np.ndarray, items: Sequence[tuple[int, SliceInfo]]) -> list[tuple[int, float, float]]:
    """Decode ``items`` (output index, slice) into ``out``; return (index, min, max) of stored values."""
    stats: list[tuple[int, float, float]] = []
    by_file: dict[Path, list[tuple[int, SliceInfo]]] = defaultdict(list)
    for k, s in items:
        by_file[s.path].append((k, s))
    for path, group in by_file.items():
        decoded: np.ndarray | None = None
        for k, s in group:
            if s.pixel_offset is not None:
                px = _read_native(s)
            else:
                if decoded is None:
                    decoded = _decode_file(s)
                px = decoded[s.frame] if s.frame is not None and decoded.ndim == 3 else decoded
                if px.shape != (s.rows, s.columns):
                    raise VolumeError(f"{s.label}: decoded shape {px.shape} is not {s.rows}x{s.columns}")
            lo, hi = float(px.min()), float(px.max())
            if s.slope == 1.0 and s.intercept == 0.0:
                out[k] = px
            elif out.dtype.kind == "f":
                np.multiply(px, s.slope, out=out[k], casting="unsafe")
                out[k] += s.intercept
            else:  # int16 output: the range check in _output_dtype guarantees no overflow
                out[k] = px
                out[k] += int(s.intercept)
            stats.append((k, lo, hi))
    return stats


def _worker(items: list[tuple[int, SliceInfo]]) -> list[tuple[int, float, float]]:
    assert _SHARED is not None
    buf, shape, dtype = _SHARED
    out = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return _write_slices(out, items)


def _output_dtype(slices: Sequence[SliceInfo]) -> np.dtype:
    """int16 when every slice rescales by an integer offset that fits; float32 otherwise."""
    ok = True
    for s in slices:
        if s.slope != 1.0 or s.intercept != int(s.intercept):
            ok = False
            break
        lo = -(1 << (s.bits_stored - 1)) if s.signed else 0
        hi = (1 << (s.bits_stored - 1)) - 1 if s.signed else (1 << s.bits_stored) - 1
        if lo + s.intercept < -32768 or hi + s.intercept > 32767:
            ok = False
            break
    return np.dtype(np.int16) if ok else np.dtype(np.float32)


def decode_stack(slices: Sequence[SliceInfo], workers: int = 0) -> np.ndarray:
    """Decode and rescale ``slices`` (in order) into one ``[z, y, x]`` array.

    Raises
    ------
    VolumeError
        A slice cannot be decoded, or a compressed slice decodes to a constant
        image while the slices on each side do not (see :func:`_check_constant_slices`).
    """
    global _SHARED
    shape = (len(slices), slices[0].rows, slices[0].columns)
    dtype = _output_dtype(slices)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    items = list(enumerate(slices))
    compressed = sum(1 for s in slices if s.pixel_offset is None)
    n_workers = workers or os.cpu_count() or 1
    if compressed >= PARALLEL_MIN_SLICES and n_workers > 1:
        # An anonymous shared mapping: forked workers write their slices into it directly.
        buf = mmap.mmap(-1, max(nbytes, 1))
        out = np.frombuffer(buf, dtype=dtype).reshape(shape)
        chunks = [items[i::n_workers] for i in range(n_workers)]
        _SHARED = (buf, shape, dtype)
        try:
            with multiprocessing.get_context("fork").Pool(n_workers) as pool:
                stats = [st for part in pool.map(_worker, chunks) for st in part]
        finally:
            _SHARED = None
    else:
        out = np.empty(shape, dtype=dtype)
        stats = _write_slices(out, items)
    _check_constant_slices(slices, {k: lo for k, lo, hi in stats if lo == hi})
    return out


def _check_constant_slices(slices: Sequence[SliceInfo], constant: dict[int, float]) -> None:
    """Refuse a volume only where a decoder could have failed.

    A decoder that fails silently zero-fills one slice among good ones: a
    compressed slice that decodes to a constant image while the slices on
    each side do not.  Uniform slices are otherwise normal: the masked ends
    of an MPR or atlas, runs of air above a head, a blank series.  An
    uncompressed slice was never decoded by a codec, so it is never blamed.
    """
    n = len(slices)
    for k in sorted(constant):
        if slices[k].pixel_offset is not None:  # uncompressed: the bytes are the image
            continue
        sides = [j for j in (k - 1, k + 1) if 0 <= j < n]
        if sides and all(j not in constant for j in sides):
            raise VolumeError(
                f"{slices[k].label} is compressed and decoded to a constant image (all {constant[k]:g}) while the "
                "slices on each side did not: its pixel data or the decoder is broken"
            )


def _resample_uniform(array: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, float]:
    """Linear interpolation along z onto a uniform grid with the median spacing."""
    spacing = float(np.median(np.diff(positions)))
    n = int(round((positions[-1] - positions[0]) / spacing)) + 1
    targets = positions[0] + spacing * np.arange(n)
    out = np.empty((n, *array.shape[1:]), dtype=np.float32)
    idx = np.clip(np.searchsorted(positions, targets, side="right") - 1, 0, len(positions) - 2)
    for t, (i, z) in enumerate(zip(idx, targets)):
        w = (z - positions[i]) / (positions[i + 1] - positions[i])
        out[t] = (1 - w) * array[i] + w * array[i + 1]
    return out, spacing


def reconstruct(
    paths: Sequence[Path] | Path,
    policy: VolumePolicy | None = None,
    progress: Callable[[str], None] | None = None,
) -> Volume:
    """Build the volume of a series.

    Parameters
    ----------
    paths : path or sequence of paths
        A series folder, or its files.
    policy : VolumePolicy, optional
        Gap factor, non-uniform spacing policy, worker count.
    progress : callable, optional
        Called with a short message at each stage.

    Raises
    ------
    VolumeError
        The series cannot become a trustworthy volume; the message says why
        and names the instances involved.
    """
    policy = policy or VolumePolicy()
    files = series_files(paths) if isinstance(paths, Path) else list(paths)
    if progress:
        progress(f"reading headers of {len(files)} file(s)")
    infos = list(scan(files))
    if not infos:
        raise VolumeError("no DICOM image found")
    stack: Stack = choose_stack(
        infos, gap_factor=policy.gap_factor, allow_nonuniform=policy.resample_nonuniform, prefer=policy.prefer
    )
    for ex in stack.excluded:
        logger.info("left out %d image(s): %s", ex.count, ex.reason)
    if progress:
        progress(f"decoding {len(stack.slices)} slice(s)")
    array = decode_stack(stack.slices, policy.workers)
    spacing = stack.spacing
    if not stack.uniform:
        array, dz = _resample_uniform(array, stack.positions)
        spacing = (spacing[0], spacing[1], dz)
        stack.excluded.append(Excluded(0, f"non-uniform slice spacing resampled to {dz:.3f} mm"))
    direction = np.column_stack([stack.row_dir, stack.col_dir, stack.normal])
    first = stack.slices[0].position
    assert first is not None  # choose_stack keeps only slices with a position
    return Volume(
        array=array,
        spacing=spacing,
        origin=(float(first[0]), float(first[1]), float(first[2])),
        direction=direction,
        sop_uids=[s.sop_uid for s in stack.slices],
        excluded=stack.excluded,
    )
