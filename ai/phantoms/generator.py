"""``generate``: draw a protocol, a patient, trees, confounders and nodules from a seed, render, acquire."""

from __future__ import annotations

import math

import numpy as np

from ai.phantoms.acquisition import (
    Protocol,
    blur_slices,
    circle_mask,
    draw_protocol,
    draw_tissues,
    fit_fov,
    noise_field,
)
from ai.phantoms.airways import bronchus_capsules
from ai.phantoms.anatomy import Anatomy, draw_anatomy
from ai.phantoms.confounders import draw_confounders
from ai.phantoms.geometry import (
    Grid,
    Pose,
    direction,
    image_mm,
    image_origin,
    is_prone,
    streams,
    to_image,
)
from ai.phantoms.hilar_nodes import hilar_nodes
from ai.phantoms.hilar_vessels import hilar_vessels
from ai.phantoms.lesions import place_nodules
from ai.phantoms.lobes import draw_fissures
from ai.phantoms.lungs import LungQuery
from ai.phantoms.mediastinum import build_mediastinum
from ai.phantoms.organs import build_organs
from ai.phantoms.raster import Capsules
from ai.phantoms.records import Nodule, Phantom, Tree
from ai.phantoms.render import Scene, render
from ai.phantoms.skeleton import build_skeleton
from ai.phantoms.vessels import build_trees, bundle_capsules

# Append only: each name's stream is the seed's child in this order, so a new name leaves the others' draws alone.
_STREAMS = ("protocol", "anatomy", "vessels", "airways", "confounders", "nodules", "textures", "noise", "hilar_nodes", "hilar_vessels")


def scan_protocol(
    seed: int, *, matrix: int = 512, fov_mm: tuple[float, float] = (310.0, 500.0), slice_mm: tuple[float, float] = (0.625, 5.0)
) -> Protocol:
    """The acquisition :func:`generate` draws for ``seed``, without rendering anything.

    For picking or stratifying seeds cheaply (position, kernel, noise,
    padding, contrast, field of view, slice spacing).

    Parameters
    ----------
    seed : int
        As for :func:`generate`.
    matrix, fov_mm, slice_mm
        As for :func:`generate` (they change the field of view and spacing only).

    Returns
    -------
    Protocol
        The same protocol ``generate(seed, ...)`` uses.
    """
    rs = streams(seed, *_STREAMS)
    proto = draw_protocol(rs["protocol"], matrix, fov_mm, slice_mm)
    anat = draw_anatomy(rs["anatomy"], is_prone(proto.position))
    return fit_fov(proto, body_width(anat), matrix, fov_mm)


def body_width(anat: Anatomy) -> float:
    """The patient's largest extent across the field of view (arms included when down), mm."""
    hx, hy = anat.extent()
    return 2 * max(hx, hy + 20.0)


def generate(
    seed: int,
    *,
    matrix: int = 512,
    slices: int | None = None,
    max_nodules: int = 6,
    healthy_fraction: float = 1.0 / 3.0,
    fov_mm: tuple[float, float] = (310.0, 500.0),
    slice_mm: tuple[float, float] = (0.625, 5.0),
    hard_negatives: bool = False,
    noise: bool = True,
    confounders: bool = True,
) -> Phantom:
    """Generate one chest-CT phantom.

    Parameters
    ----------
    seed : int
        Everything random derives from it (same seed, same phantom).
    matrix : int
        Rows and columns.
    slices : int, optional
        Number of slices (default: enough to cover the chest, from above the
        apices to below the costophrenic recesses).
    max_nodules : int
        Up to this many nodules in a scan that has any.
    healthy_fraction : float
        Probability that a scan has no nodule.
    fov_mm : (float, float)
        Range of the display field of view (pixel size = FOV / matrix).
    slice_mm : (float, float)
        Range of the slice spacing (= thickness); clinical values are preferred.
    hard_negatives : bool
        Also build :attr:`Phantom.hard_negatives` and :attr:`Phantom.structures`.
    noise : bool
        Add the kernel's noise (off: noise-free images, for tests).
    confounders : bool
        Allow emphysema, consolidation, atelectasis and effusion.

    Returns
    -------
    Phantom
        Image, labels (1 right lung, 2 left lung, 3 nodule), nodule records,
        orientation, vessel trees and the draws in ``meta``: ``position``
        (HFS, HFP, FFS, FFP), ``contrast`` (none, arterial, venous),
        ``kernel`` (sharp, smooth), ``noise_hu``, ``psf_mm``, ``sharpen``,
        ``padding`` (None, -2000, -3024), ``fov_mm``, ``pixel_mm``,
        ``slice_mm``, ``body_size`` (small, medium, large, obese),
        ``body_width_mm``, ``adiposity``, ``arms`` (up, down), ``breasts``,
        ``table``, ``truncated`` (the body reaches the image edge),
        ``confounders`` (names), ``nodules``, ``healthy``,
        ``vessel_r_min_mm``, ``hila_lps`` (bronchus roots per side),
        ``tissue_hu`` (drawn attenuation per tissue) and ``noise``.

    Notes
    -----
    The anatomy, trees, confounders and nodules depend on the seed only
    (not on ``matrix``, ``slices``, ``fov_mm`` or ``slice_mm``), except that
    the smallest vessel radius follows the pixel size; nodule centres are in
    millimetres from the centre of voxel 0 along the image axes.
    """
    rs = streams(seed, *_STREAMS)
    proto = draw_protocol(rs["protocol"], matrix, fov_mm, slice_mm)
    anat = draw_anatomy(rs["anatomy"], is_prone(proto.position))
    proto = fit_fov(proto, body_width(anat), matrix, fov_mm)
    T = draw_tissues(rs["protocol"], proto.contrast)
    pr = rs["protocol"]
    above, below = float(pr.uniform(15, 45)), float(pr.uniform(15, 55))
    roll, dx, dy = math.radians(float(pr.uniform(-6, 6))), float(pr.uniform(-22, 22)), float(pr.uniform(-30, 15))
    L = anat.lung_height
    centre = (above - L - below) / 2
    nz = int(slices) if slices else max(8, round((L + above + below) / proto.dz))
    z0 = centre - (nz - 1) * proto.dz / 2
    grid = Grid(matrix, matrix, nz, proto.px, proto.px, proto.dz, -(matrix - 1) * proto.px / 2, -(matrix - 1) * proto.px / 2, z0)
    pose = Pose(roll, dx, dy)
    top, bottom = z0 + (nz - 1) * proto.dz, z0

    ra = rs["anatomy"]
    fis = draw_fissures(ra, anat)
    med = build_mediastinum(ra, anat, top, bottom)
    skel = build_skeleton(ra, anat, top, bottom)
    org = build_organs(ra, anat, dy)
    r_min = float(np.clip(0.33 * proto.px, 0.45, 1.2))
    bundles = build_trees(rs["vessels"], anat, med, fis, r_min)
    vessel_caps = Capsules.concat([bundle_capsules(b) for b in bundles])
    bronchi = bronchus_capsules(bundles, rs["airways"])
    lungs = LungQuery(anat, med.excl)
    conf = draw_confounders(rs["confounders"], anat, lungs, confounders)
    rn = rs["nodules"]
    healthy = max_nodules <= 0 or rn.random() < healthy_fraction
    count = 0 if healthy else int(rn.integers(1, max_nodules + 1))
    plans = place_nodules(rn, count, lungs, vessel_caps, conf.avoid(), conf.blocked(anat))

    nodes = hilar_nodes(rs["hilar_nodes"], med.hila, plans)
    widenings = hilar_vessels(rs["hilar_vessels"], bundles, plans)
    caps = Capsules.concat([med.caps, med.excl, skel.caps, vessel_caps, widenings, bronchi, nodes]).to_patient(pose)
    scene = Scene(grid, pose, proto, T, anat, org, skel, fis, conf, plans, caps)
    out = render(scene, rs["textures"], hard_negatives)
    hu = out.hu
    blur_slices(hu, 0.3)
    outside = circle_mask(grid.nx, grid.ny) if proto.padding is not None else None
    final = np.empty(grid.shape, dtype=np.int16)
    step = max(1, 4_000_000 // (grid.ny * grid.nx))
    rn_noise = rs["noise"]
    for k0 in range(0, grid.nz, step):
        k1 = min(grid.nz, k0 + step)
        h = hu[k0:k1]
        if noise:
            h += noise_field(rn_noise, (h.shape[0], h.shape[1], h.shape[2]), proto)
        np.clip(h, -1024, 3071, out=h)
        if outside is not None:
            h[:, outside] = proto.padding
        final[k0:k1] = np.rint(h)
    del hu

    pos = proto.position
    nodules: list[Nodule] = []
    for p in plans:
        c_anat = p.centroid
        c_img = image_mm(grid, pos, pose.to_patient(c_anat))
        nodules.append(Nodule(tuple(float(v) for v in c_img), float((6 * p.volume / math.pi) ** (1 / 3)),  # type: ignore[arg-type]
                              p.kind, p.site, p.side, float(p.volume), p.shape))
    trees = [
        Tree(b.name, b.side, pose.to_patient(b.vessel_path[:, 0]), pose.to_patient(b.vessel_path[:, -1]), b.branches.radius.copy(),
             b.branches.parent.copy())
        for b in bundles
    ]
    width = 2 * (float(anat.cavity_axes(np.asarray(-0.6 * L))[0]) + anat.wall + anat.muscle[0] + anat.fat[0])
    size = "obese" if anat.adiposity > 0.62 else ("small" if width < 310 else "large" if width > 380 else "medium")
    meta = {
        "position": str(pos), "contrast": proto.contrast or "none", "kernel": proto.kernel, "noise_hu": proto.noise,
        "psf_mm": proto.psf_mm, "sharpen": proto.sharpen, "padding": proto.padding, "fov_mm": proto.fov,
        "pixel_mm": proto.px, "slice_mm": proto.dz, "body_size": size, "body_width_mm": width,
        "adiposity": anat.adiposity, "arms": "down" if anat.arms_down else "up", "breasts": bool(org.breasts),
        "table": org.table, "truncated": out.truncated, "confounders": conf.present,
        "nodules": len(nodules), "healthy": count == 0, "vessel_r_min_mm": r_min,
        "hila_lps": {s: [float(v) for v in pose.to_patient(h.bronchus)] for s, h in med.hila.items()},
        "tissue_hu": {k: round(v, 1) for k, v in T.items()}, "noise": noise,
    }
    labels = to_image(out.labels, pos)
    st = to_image(out.structures, pos) if out.structures is not None else None
    return Phantom(
        hu=to_image(final, pos), labels=labels, spacing=grid.spacing, nodules=nodules, seed=int(seed),
        direction=direction(pos), origin=image_origin(grid, pos), hard_negatives=(st > 0) if st is not None else None,
        structures=st, meta=meta, trees=trees,
    )
