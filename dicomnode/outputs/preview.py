"""Pictures of a result: coloured contours, a legend and the intended use, drawn with matplotlib.

Used for the Secondary Capture key images sent to viewers that cannot show
SEG (:func:`build_key_image`), and for the overlay PNG of ``dicomnode infer``.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pydicom import Dataset

    from ai.bundle import Bundle

WINDOW = (-1000.0, 400.0)  # HU shown: lungs and soft tissue both readable
MAX_KEY_IMAGES = 4
LPS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z


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


def intended_use_line(bundle: Bundle) -> str:
    """What every picture of a result says about itself: AI, which model, and what for."""
    return f"AI result: {bundle.name} {bundle.version} - {bundle.intended_use}"


def add_legend(fig: Any, bundle: Bundle) -> None:
    """Label colours at the bottom, and the model with its intended use at the top."""
    from matplotlib.patches import Patch

    handles = [Patch(color=(lb.color[0] / 255, lb.color[1] / 255, lb.color[2] / 255), label=lb.name) for lb in bundle.labels]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), facecolor="black", labelcolor="white", frameon=False)
    width = fig.get_figwidth() * fig.dpi
    fig.suptitle(textwrap.fill(intended_use_line(bundle), max(40, int(width / 6.5))), color="white", fontsize=9, y=0.99)


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
            comps = cc3d.connected_components(mask, connectivity=26)
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
    ax = fig.add_axes((0.02, 0.08, 0.96, 0.8))
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


def patient_orientation(direction: np.ndarray) -> tuple[str, str]:
    """PatientOrientation of an axial rendering: the directions of its rows and columns (LPS letters).

    Column ``i`` of ``direction`` is the patient direction of voxel axis ``i``;
    the picture's columns run along axis x and its rows along axis y.
    """

    def letters(v: np.ndarray) -> str:
        order = np.argsort(-np.abs(v))
        out = "".join(LPS_LETTERS[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) > 0.1)
        return out or "L"

    d = np.asarray(direction, dtype=np.float64)
    return letters(d[:, 0]), letters(d[:, 1])


def build_key_image(
    ref: Dataset,
    image: KeyImage,
    bundle: Bundle,
    *,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    series_number: int,
    series_description: str,
    manufacturer: str,
    software_version: str,
    orientation: tuple[str, str],
) -> Dataset:
    """A Secondary Capture image (RGB) of one key image, in the study of ``ref``.

    Parameters
    ----------
    ref : Dataset
        Header of the source image the key image shows (patient and study).
    image : KeyImage
        The rendering.
    bundle : Bundle
        The model (its intended use goes into ImageComments too).
    series_uid, sop_uid : str
        The (deterministic) UIDs.
    instance_number, series_number : int
        Numbers of the image and of its series.
    series_description, manufacturer, software_version : str
        Descriptive attributes.
    orientation : (str, str)
        PatientOrientation of the rendering (see :func:`patient_orientation`).

    Raises
    ------
    OutputError
        highdicom refused the content.
    """
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    from dicomnode.errors import OutputError

    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=image.rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer=manufacturer,
            patient_orientation=orientation, series_description=series_description[:64],
            software_versions=software_version, transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"cannot build key image {instance_number}: {exc}") from exc
    sc.BurnedInAnnotation = "YES"  # the legend and the intended use are in the pixels
    sc.ImageComments = f"{image.caption}. {intended_use_line(bundle)}"[:10240]
    if "BodyPartExamined" in ref:
        sc.BodyPartExamined = ref.BodyPartExamined
    if "Laterality" in ref:
        sc.Laterality = ref.Laterality
    elif "BodyPartExamined" not in ref:
        sc.Laterality = ""  # type 2C: without a body part nobody knows whether it is paired
    return sc
