"""Pictures of a result: coloured contours, a legend and the intended use, drawn with matplotlib.

Used for the Secondary Capture key images sent to viewers that cannot show
SEG, and for the overlay PNG of ``dicomnode infer``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ai.bundle import Bundle

WINDOW = (-1000.0, 400.0)  # HU shown: lungs and soft tissue both readable
MAX_KEY_IMAGES = 4


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_contours(ax: Any, labels2d: np.ndarray, bundle: Bundle) -> None:
    """Outline every label of ``labels2d`` in its colour."""
    for lb in bundle.labels:
        if (labels2d == lb.value).any():
            ax.contour(labels2d == lb.value, levels=[0.5], colors=[tuple(c / 255 for c in lb.color)], linewidths=1.2)


def add_legend(fig: Any, bundle: Bundle) -> None:
    """Label colours at the bottom, and the model with its intended use at the top."""
    from matplotlib.patches import Patch

    handles = [Patch(color=tuple(c / 255 for c in lb.color), label=lb.name) for lb in bundle.labels]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), facecolor="black", labelcolor="white", frameon=False)
    fig.suptitle(f"AI result: {bundle.name} {bundle.version} - {bundle.intended_use}", color="white", fontsize=10)


@dataclass(frozen=True)
class KeyImage:
    """One rendered key image."""

    slice_index: int
    rgb: np.ndarray  # (rows, columns, 3) uint8
    caption: str


def key_slices(labels: np.ndarray, bundle: Bundle, limit: int = MAX_KEY_IMAGES) -> list[tuple[int, str]]:
    """Slices worth showing: through the largest lesions, then the largest area of each other label."""
    import cc3d

    picks: list[tuple[int, str]] = []
    for lb in sorted(bundle.labels, key=lambda lb: not lb.lesion):
        mask = labels == lb.value
        if not mask.any():
            continue
        if lb.lesion:
            comps, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
            sizes = np.bincount(comps.ravel())[1:]
            for k in np.argsort(sizes)[::-1][:limit]:
                z = int(np.median(np.nonzero(comps == k + 1)[0]))
                picks.append((z, f"{lb.name} {k + 1}"))
        else:
            picks.append((int(np.argmax(mask.sum(axis=(1, 2)))), f"largest {lb.name} area"))
    seen: set[int] = set()
    out = []
    for z, why in picks:
        if z not in seen:
            seen.add(z)
            out.append((z, why))
    return out[:limit] or [(labels.shape[0] // 2, "no findings: middle slice")]


def render_slice(image2d: np.ndarray, labels2d: np.ndarray, bundle: Bundle, caption: str, aspect: float = 1.0, size: int = 512) -> np.ndarray:
    """One axial slice with contours, legend and caption, as an RGB array of ``size`` x ``size``."""
    plt = _pyplot()
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0.02, 0.08, 0.96, 0.84))
    ax.imshow(image2d, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="bilinear")
    draw_contours(ax, labels2d, bundle)
    ax.set_title(caption, color="white", fontsize=9)
    ax.axis("off")
    add_legend(fig, bundle)
    buf = io.BytesIO()
    fig.savefig(buf, format="raw", dpi=100, facecolor="black")
    plt.close(fig)
    rgba = np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(size, size, 4)
    return np.ascontiguousarray(rgba[..., :3])


def key_images(array: np.ndarray, labels: np.ndarray, bundle: Bundle, spacing_xyz: Sequence[float]) -> list[KeyImage]:
    """Render the key slices of a result."""
    aspect = float(spacing_xyz[1]) / float(spacing_xyz[0])
    return [
        KeyImage(z, render_slice(array[z], labels[z], bundle, f"slice {z + 1} of {labels.shape[0]}: {why}", aspect), why)
        for z, why in key_slices(labels, bundle)
    ]


def overlay_png(array: np.ndarray, labels: np.ndarray, bundle: Bundle, spacing_xyz: Sequence[float], out: Any) -> None:
    """Axial, coronal and sagittal views through the main finding, as a PNG file."""
    plt = _pyplot()
    z, _why = key_slices(labels, bundle, limit=1)[0]
    focus = labels[z] > 0
    y, x = (int(np.median(a)) for a in np.nonzero(focus)) if focus.any() else (labels.shape[1] // 2, labels.shape[2] // 2)
    sx, sy, sz = spacing_xyz
    views = [
        ("axial", array[z], labels[z], sy / sx),
        ("coronal", array[:, y, :][::-1], labels[:, y, :][::-1], sz / sx),
        ("sagittal", array[:, :, x][::-1], labels[:, :, x][::-1], sz / sy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, (title, img, lab, aspect) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
        draw_contours(ax, lab, bundle)
        ax.set_title(title, color="white")
        ax.axis("off")
    add_legend(fig, bundle)
    fig.savefig(out, dpi=100, facecolor="black")
    plt.close(fig)
