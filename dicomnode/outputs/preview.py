"""Pictures of a result: key images a radiologist can act on, and the overlay PNG of ``dicomnode infer``.

A key image shows one finding on the source slice where its long axis was
measured, as the viewer stores that slice (no flips): the finding outlined
thickly in its label's colour with its long (solid) and short (dashed) axis
and a box around it, everything else dimmed, the patient direction at each
edge, the caption (number, where, axes, volume, which image), the intended
use as a warning banner, the legend and any notes about the source.  They
become Secondary Capture images (:func:`dicomnode.outputs.key_image.build_key_image`)
for viewers that cannot show SEG.
"""

from __future__ import annotations

import io
import logging
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.errors import OutputError

if TYPE_CHECKING:

    from ai.bundle import Bundle, Label
    from ai.findings import Finding
    from ai.measure import Lesion

logger = logging.getLogger(__name__)

WINDOW = (-1000.0, 400.0)  # HU shown: lungs and soft tissue both readable
MAX_KEY_IMAGES = 6
SIZE = 512  # pixels of a key image (square)
LPS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z
DIM_ALPHA = 0.35  # what is not the captioned finding
BANNER = ("#ffeb3b", "#8b0000")  # text and background of the intended-use warning
MIN_MARKER = 0.08  # the marker box spans at least this part of the image, so a small nodule is findable


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def draw_contours(ax: Any, labels2d: np.ndarray, bundle: Bundle, *, alpha: float = 1.0, linewidth: float = 1.2) -> None:
    """Outline every label of ``labels2d`` in its colour."""
    for lb in bundle.labels:
        if (labels2d == lb.value).any():
            ax.contour(labels2d == lb.value, levels=[0.5], colors=[_rgb(lb.color)], linewidths=linewidth, alpha=alpha)


def intended_use_line(bundle: Bundle) -> str:
    """What every picture of a result says about itself: AI, which model, and what for."""
    return f"AI result: {bundle.name} {bundle.version} - {bundle.intended_use}"


def _legend(fig: Any, bundle: Bundle, y: float = 0.0, fontsize: float = 10.0) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_rgb(lb.color), label=lb.name) for lb in bundle.labels]
    fig.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, y), ncol=len(handles), facecolor="black",
        labelcolor="white", frameon=False, fontsize=fontsize,
    )


def add_legend(fig: Any, bundle: Bundle) -> None:
    """Label colours at the bottom, and the model with its intended use at the top."""
    _legend(fig, bundle)
    width = fig.get_figwidth() * fig.dpi
    fig.suptitle(textwrap.fill(intended_use_line(bundle), max(40, int(width / 6.5))), color="white", fontsize=9, y=0.99)


@dataclass(frozen=True)
class KeyImage:
    """One rendered key image."""

    slice_index: int  # the volume slice shown
    rgb: np.ndarray  # (rows, columns, 3) uint8
    caption: str  # what it shows, as burnt in under the banner
    finding: int | None = None  # the number of the finding it shows; None for an overview


@dataclass(frozen=True)
class EdgeLetters:
    """The patient directions at the edges of an axial picture (LPS letters, e.g. ``R`` left, ``L`` right)."""

    left: str
    right: str
    top: str
    bottom: str


def direction_letters(v: np.ndarray | Sequence[float]) -> str:
    """The patient direction of the LPS vector ``v`` in letters, main direction first (``"L"``, ``"LA"``)."""
    a = np.asarray(v, dtype=np.float64)
    order = np.argsort(-np.abs(a), kind="stable")
    out = "".join(LPS_LETTERS[i][0 if a[i] > 0 else 1] for i in order if abs(a[i]) > 0.1)
    return out or "L"


def patient_orientation(direction: np.ndarray) -> tuple[str, str]:
    """PatientOrientation of an axial rendering: the directions of its rows and columns (LPS letters).

    Column ``i`` of ``direction`` is the patient direction of voxel axis ``i``;
    the picture's columns run along axis x and its rows along axis y.
    """
    d = np.asarray(direction, dtype=np.float64)
    return direction_letters(d[:, 0]), direction_letters(d[:, 1])


def edge_letters(direction: np.ndarray) -> EdgeLetters:
    """The letters at the edges of an axial picture of a volume shown as stored.

    Column ``i`` of ``direction`` is the LPS direction of array axis x, y, z;
    the picture's columns run along x and its rows along y.  The right edge
    shows +x, the left -x, the bottom +y, the top -y: a head-first supine
    scan gives R on the left, L on the right, A on top and P at the bottom.
    """
    d = np.asarray(direction, dtype=np.float64)
    return EdgeLetters(
        left=direction_letters(-d[:, 0]), right=direction_letters(d[:, 0]),
        top=direction_letters(-d[:, 1]), bottom=direction_letters(d[:, 1]),
    )


def _main_slice(labels: np.ndarray, bundle: Bundle) -> int:
    """The overlay's slice: through the largest lesion, else the largest area of an organ, else the middle."""
    import cc3d

    for lb in sorted(bundle.labels, key=lambda lb: not lb.lesion):
        mask = labels == lb.value
        if not mask.any():
            continue
        if not lb.lesion:
            return int(np.argmax(mask.sum(axis=(1, 2))))
        comps = cc3d.connected_components(mask, connectivity=26)
        largest = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
        return int(np.median(np.nonzero(comps == largest)[0]))
    return labels.shape[0] // 2


@dataclass(frozen=True)
class _Focus:
    """The captioned finding on its slice."""

    number: int
    mask: np.ndarray  # (rows, columns) bool
    color: tuple[int, int, int]
    long_yx: np.ndarray | None  # (2, 2): the ends, (y, x) each
    short_yx: np.ndarray | None


def _lesion_slice(lesion: Lesion, label: Label, labels2d: np.ndarray, z: int) -> np.ndarray:
    """The lesion's own pixels on slice ``z`` (its label's pixels when it does not keep its voxels)."""
    if lesion.box is None or lesion.mask is None:
        return labels2d == label.value
    bz, by, bx = lesion.box
    out = np.zeros(labels2d.shape, dtype=bool)
    k = z - (bz.start or 0)
    if 0 <= k < lesion.mask.shape[0]:
        out[by, bx] = lesion.mask[k]
    return out


def _outline(ax: Any, artist_list: Any) -> None:
    """A black stroke around text, so that it reads on any background."""
    import matplotlib.patheffects as pe

    for a in artist_list:
        a.set_path_effects([pe.withStroke(linewidth=2.5, foreground="black")])


def _draw_focus(ax: Any, f: _Focus, shape: tuple[int, int], aspect: float) -> None:
    from matplotlib.patches import Rectangle

    color = _rgb(f.color)
    if f.mask.any():
        ax.contour(f.mask, levels=[0.5], colors=[color], linewidths=2.2)
        ys, xs = np.nonzero(f.mask)
        y0, y1, x0, x1 = ys.min() - 0.5, ys.max() + 0.5, xs.min() - 0.5, xs.max() + 0.5
    else:  # measured elsewhere: mark where its axes are
        pts = np.concatenate([p for p in (f.long_yx, f.short_yx) if p is not None] or [np.zeros((1, 2))])
        y0, y1, x0, x1 = pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()
    for ends, style in ((f.long_yx, "-"), (f.short_yx, "--")):
        if ends is not None:
            ax.plot(ends[:, 1], ends[:, 0], style, color="white", linewidth=1.3, solid_capstyle="butt")
    # A box at least MIN_MARKER of the picture across (on screen: rows are ``aspect`` times taller).
    rows, cols = shape
    span = MIN_MARKER * max(cols, rows * aspect)
    margin = 0.25 * span
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max(x1 - x0 + 2 * margin, span)
    h = max(y1 - y0 + 2 * margin / aspect, span / aspect)
    ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, edgecolor=color, linewidth=1.6))
    tag = ax.text(cx - w / 2, cy - h / 2, str(f.number), color=color, fontsize=11, fontweight="bold", ha="right", va="bottom")
    _outline(ax, [tag])


def _draw_letters(ax: Any, letters: EdgeLetters, shape: tuple[int, int]) -> None:
    rows, cols = shape
    pad = 0.015 * max(rows, cols)
    style: dict[str, Any] = {"color": "white", "fontsize": 12, "fontweight": "bold"}
    texts = [
        ax.text(-0.5 + pad, (rows - 1) / 2, letters.left, ha="left", va="center", **style),
        ax.text(cols - 0.5 - pad, (rows - 1) / 2, letters.right, ha="right", va="center", **style),
        ax.text((cols - 1) / 2, -0.5 + pad, letters.top, ha="center", va="top", **style),
        ax.text((cols - 1) / 2, rows - 0.5 - pad, letters.bottom, ha="center", va="bottom", **style),
    ]
    _outline(ax, texts)


def _render(
    image2d: np.ndarray, labels2d: np.ndarray, bundle: Bundle, caption: str, *, aspect: float = 1.0,
    letters: EdgeLetters | None = None, focus: _Focus | None = None, notes: Sequence[str] = (), size: int = SIZE,
) -> np.ndarray:
    """One slice as stored with banner, caption, contours (``focus`` highlighted), letters, legend and notes: RGB."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100, facecolor="black")
    try:
        # Fixed bands (fractions of the height): banner, caption, picture, legend, notes.
        wrap = max(40, int(size / 6.2))
        banner = textwrap.wrap(intended_use_line(bundle), wrap)[:3]
        cap = wrap_at_separators(caption, max(40, int(size / 7.2)))[:3]
        note_lines = [ln for n in notes for ln in textwrap.wrap(n, int(size / 5.2))][:4]
        banner_h = 0.012 + 0.026 * len(banner)
        cap_h = 0.012 + 0.032 * len(cap)
        notes_h = 0.008 + 0.024 * len(note_lines) if note_lines else 0.0
        legend_h = 0.05
        top = 1.0 - banner_h - cap_h
        bottom = notes_h + legend_h
        fig.add_artist(Rectangle((0, 1 - banner_h), 1, banner_h, transform=fig.transFigure, color=BANNER[1], zorder=0))
        fig.text(0.5, 1 - banner_h / 2, "\n".join(banner), color=BANNER[0], fontsize=8, fontweight="bold", ha="center", va="center")
        fig.text(0.5, top + cap_h / 2, "\n".join(cap), color="white", fontsize=9.5, fontweight="bold", ha="center", va="center")
        if note_lines:
            fig.text(0.5, 0.006, "\n".join(note_lines), color="#cccccc", fontsize=7, ha="center", va="bottom")
        _legend(fig, bundle, y=notes_h - 0.012, fontsize=8)

        ax = fig.add_axes((0.0, bottom, 1.0, top - bottom))
        ax.imshow(image2d, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="bilinear")
        if focus is None:
            draw_contours(ax, labels2d, bundle)
        else:
            draw_contours(ax, labels2d, bundle, alpha=DIM_ALPHA, linewidth=0.8)
            _draw_focus(ax, focus, labels2d.shape, aspect)
        if letters is not None:
            _draw_letters(ax, letters, labels2d.shape)
        ax.set_xlim(-0.5, labels2d.shape[1] - 0.5)
        ax.set_ylim(labels2d.shape[0] - 0.5, -0.5)
        ax.axis("off")
        buf = io.BytesIO()
        fig.savefig(buf, format="raw", dpi=100, facecolor="black")
    finally:
        plt.close(fig)
    rgba = np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(size, size, 4)
    return np.ascontiguousarray(rgba[..., :3])


def _slice_names(instance_numbers: Sequence[str]) -> list[str]:
    """How the viewer numbers each slice: ``"image 81 of 120"``, ``"frame 3 of 40"``.

    "of N" only when the numbers run 1..N, so that it cannot mislead.
    """
    n = len(instance_numbers)
    tails = [re.search(r"(\d+)\s*$", s.strip()) for s in instance_numbers]
    numbered = all(tails) and sorted(int(t.group(1)) for t in tails if t) == list(range(1, n + 1))
    out = []
    for z, s in enumerate(instance_numbers):
        s = s.strip()
        name = f"image {s}" if s.isdigit() else s or f"slice {z + 1}"
        out.append(f"{name} of {n}" if numbered or not s else name)
    return out


def wrap_at_separators(text: str, width: int, sep: str = " · ") -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken between its ``sep``-separated parts where it can.

    A caption reads better as "... 5.84 mL · probability 0.96" over "image 45 of 112" than broken inside a part;
    a part longer than a line is wrapped on its own.
    """
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines += textwrap.wrap(part, width) or [""]
    return lines


def _volume(ml: float) -> str:
    return f"{ml:.2f} mL" if ml >= 0.1 else f"{ml * 1000:.0f} mm³"


def caption_of(f: Finding, slice_name: str) -> str:
    """``"nodule 1 · right lung · 14.2 × 9.8 mm · 1.02 mL · probability 0.91 · image 81 of 120"`` (and any truncation).

    The probability is the candidate classifier's (:mod:`ai.candidates`), where the model has one: the same
    figure as the SR's and the Key Object Selection's, so that the reader sees on the image how sure the model was.
    """
    les = f.lesion
    parts = [f.name]
    if f.where:
        parts.append(f.where)
    if les.axes is not None:
        parts.append(f"{les.axes.long_mm:.1f} × {les.axes.short_mm:.1f} mm")
    parts.append(_volume(les.volume_ml))
    if les.probability is not None:
        parts.append(f"probability {les.probability:.2f}")
    parts.append(slice_name)
    if les.edges:
        parts.append(f"possibly truncated (touches the {' and the '.join(e.value for e in les.edges)})")
    return " · ".join(parts)


def _overview_slice(labels: np.ndarray, bundle: Bundle) -> int:
    """The slice with the largest area of the labels that are not lesions (the middle one when there is none)."""
    organs = [lb.value for lb in bundle.labels if not lb.lesion]
    area = np.isin(labels, organs).sum(axis=(1, 2)) if organs else np.zeros(labels.shape[0])
    return int(np.argmax(area)) if area.any() else labels.shape[0] // 2


def key_images(
    array: np.ndarray,
    labels: np.ndarray,
    bundle: Bundle,
    spacing_xyz: Sequence[float],
    direction: np.ndarray,
    findings: Sequence[Finding],
    *,
    instance_numbers: Sequence[str],
    limit: int = MAX_KEY_IMAGES,
    notes: Sequence[str] = (),
) -> list[KeyImage]:
    """One key image per finding (at most ``limit``, in the given order), or an overview when there is none.

    Parameters
    ----------
    array, labels : ndarray ``[z, y, x]``
        The source volume (HU) and the label map on its grid.
    bundle : Bundle
        The model: label names and colours, intended use.
    spacing_xyz : (float, float, float)
        Voxel size in mm.
    direction : ndarray ``(3, 3)``
        Column ``i`` is the LPS direction of array axis x, y, z (for the edge letters).
    findings : sequence of Finding
        Numbered findings, largest first.
    instance_numbers : sequence of str
        How the viewer names each slice: its InstanceNumber, or ``"frame N"``
        for a multi-frame source.
    limit : int
        Most images.
    notes : sequence of str
        Lines printed at the bottom of every image (e.g. an incomplete series).

    Returns
    -------
    list of KeyImage

    Raises
    ------
    OutputError
        The inputs disagree in shape, or matplotlib fails.
    """
    nz = array.shape[0]
    if labels.shape != array.shape or len(instance_numbers) != nz:
        raise OutputError(
            f"key images need labels and an instance number per slice: volume {array.shape}, "
            f"labels {labels.shape}, {len(instance_numbers)} instance numbers"
        )
    aspect = float(spacing_xyz[1]) / float(spacing_xyz[0])
    letters = edge_letters(direction)
    names = _slice_names(instance_numbers)
    out: list[KeyImage] = []
    try:
        for f in list(findings)[: max(limit, 0)]:
            z = f.key_slice(nz)
            axes = f.lesion.axes
            on_slice = axes is not None and axes.slice_index == z
            focus = _Focus(
                f.number, _lesion_slice(f.lesion, f.label, labels[z], z), f.label.color,
                np.array([p[1:] for p in axes.long_ends]) if on_slice and axes else None,
                np.array([p[1:] for p in axes.short_ends]) if on_slice and axes else None,
            )
            caption = caption_of(f, names[z])
            rgb = _render(array[z], labels[z], bundle, caption, aspect=aspect, letters=letters, focus=focus, notes=notes)
            out.append(KeyImage(z, rgb, caption, f.number))
        if not findings:
            z = _overview_slice(labels, bundle)
            lesions = [lb.name for lb in bundle.labels if lb.lesion]
            what = f"no {' or '.join(lesions)} found" if lesions else "overview"
            caption = f"{what} · {names[z]}"
            rgb = _render(array[z], labels[z], bundle, caption, aspect=aspect, letters=letters, notes=notes)
            out.append(KeyImage(z, rgb, caption, None))
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise OutputError(f"cannot render the key images: {exc}") from exc
    logger.debug("rendered %d key image(s) of %d finding(s)", len(out), len(findings))
    return out


def overlay_png(array: np.ndarray, labels: np.ndarray, bundle: Bundle, spacing_xyz: Sequence[float], out: Any) -> None:
    """Axial, coronal and sagittal views through the main finding, as a PNG file."""
    plt = _pyplot()
    z = _main_slice(labels, bundle)
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
