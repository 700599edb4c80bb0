"""Compose a scene into HU, labels and hard-negative structures, one z-chunk at a time.

Painting order: table, body wall, arms, breasts; mediastinal fat, abdomen and
heart; lung parenchyma (with a gravity gradient and texture), emphysema,
fissures; vessels, airway walls, consolidation and atelectasis, airway lumen
(so air bronchograms stay); bones; bullae, effusion; nodules.  Then the
kernel's in-plane point-spread function (the slice profile, noise and the
reconstruction circle come after, over the whole volume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ai.phantoms.acquisition import Protocol, form_image
from ai.phantoms.anatomy import Anatomy
from ai.phantoms.confounders import Confounders, effusion_masks
from ai.phantoms.geometry import Grid, Pose
from ai.phantoms.lesions import NodulePlan
from ai.phantoms.lobes import Fissures
from ai.phantoms.organs import Organs, paint_body, paint_cavity
from ai.phantoms.raster import (
    N_CHANNELS,
    CapsuleRaster,
    Capsules,
    Ch,
    Chunk,
    SmoothField,
    offset,
    paint,
)
from ai.phantoms.records import (
    AIRWAY,
    CONFOUNDER,
    FISSURE,
    LEFT_LUNG,
    NODULE,
    RIGHT_LUNG,
    VESSEL,
    NoduleKind,
)
from ai.phantoms.skeleton import Skeleton


@dataclass
class Scene:
    """Everything drawn for one phantom, ready to render."""

    grid: Grid
    pose: Pose
    proto: Protocol
    T: dict[str, float]
    anat: Anatomy
    organs: Organs
    skeleton: Skeleton
    fissures: Fissures
    confounders: Confounders
    nodules: list[NodulePlan]
    caps: Capsules  # all capsules, patient coordinates


@dataclass
class Rendered:
    """Noise-free render (float32 HU after the in-plane PSF), labels, structures and whether the body was cut."""

    hu: np.ndarray
    labels: np.ndarray
    structures: np.ndarray | None
    truncated: bool


ALL = (slice(None), slice(None), slice(None))
_VESSEL_CH = ((Ch.ART, "blood_art"), (Ch.VEIN, "blood_vein"), (Ch.AORTA, "aorta"), (Ch.SYSVEIN, "sysvein"), (Ch.SOFT, "soft"))


def render(scene: Scene, rng: np.random.Generator, structures: bool, chunk_voxels: int = 4_000_000) -> Rendered:
    """Render a scene over its grid.

    Parameters
    ----------
    scene : Scene
        The drawn phantom.
    rng : Generator
        The texture stream (smooth random fields).
    structures : bool
        Whether to build the hard-negative structure bits.
    chunk_voxels : int
        Voxels per chunk (memory versus per-chunk overhead).
    """
    g = scene.grid
    hu = np.empty(g.shape, dtype=np.float32)
    labels = np.zeros(g.shape, dtype=np.uint8)
    struct = np.zeros(g.shape, dtype=np.uint8) if structures else None
    raster = CapsuleRaster(scene.caps, g)
    tex = SmoothField(g, rng, 14.0)
    fis_vis = SmoothField(g, rng, 30.0)
    gland = SmoothField(g, rng, 7.0) if scene.organs.breasts else None
    step = max(1, chunk_voxels // (g.ny * g.nx))
    truncated = False
    for k0 in range(0, g.nz, step):
        k1 = min(g.nz, k0 + step)
        c = Chunk.make(g, scene.pose, k0, k1)
        h, lab, st, body = _chunk(scene, c, raster, tex.chunk(k0, k1), fis_vis.chunk(k0, k1),
                                  gland.chunk(k0, k1) if gland is not None else np.zeros(c.shape, np.float32), structures)
        hu[k0:k1] = form_image(h, scene.proto)
        labels[k0:k1] = lab
        if struct is not None and st is not None:
            struct[k0:k1] = st
        truncated |= bool(body[:, :, 0].any() or body[:, :, -1].any() or body[:, 0, :].any() or body[:, -1, :].any())
    return Rendered(hu, labels, struct, truncated)


def _chunk(
    scene: Scene, c: Chunk, raster: CapsuleRaster, tex: np.ndarray, fis_vis: np.ndarray, gland: np.ndarray, want: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    anat, T, conf, g = scene.anat, scene.T, scene.confounders, scene.grid
    ax, ay, z = c.ax, c.ay, c.z
    h = np.full(c.shape, T["air"], dtype=np.float32)
    body = paint_body(c, h, anat, scene.organs, T, gland)
    q = anat.cavity_q(ax, ay, z)
    paint_cavity(c, h, anat, scene.organs, T, tex, q)
    ch = np.zeros((N_CHANNELS,) + c.shape, dtype=np.float32)
    raster.render(c.k0, c.k1, ch)

    # Lungs: the pleural cavity minus mediastinum, heart and dilated hilar structures.
    free = ~anat.mediastinum(ax, ay, z) & (ch[Ch.EXCL] < 0.5)
    hb = anat.heart.grown(anat.hu_pericardium_mm)
    cv = c.cover(hb.sdf, *hb.box())
    if cv is not None:
        free[cv[0]] &= ~cv[2]
    lung = anat.lungs(ax, ay, z, q) & free
    right = lung & (ax < 0)
    left = lung & ~right
    dep = np.clip((anat.gravity * ay + anat.bc) / (2 * anat.bc), 0.0, 1.0)
    paren = (T["lung"] + T["lung_gradient"] * dep * dep) + T["lung_texture"] * tex
    h[lung] = paren[lung]
    conf_cov = np.zeros(c.shape, np.float32) if want else None
    for b in conf.emphysema:
        cvb = c.cover(b.sdf, *b.box())
        if cvb is not None:
            sl, cov, _ = cvb
            cov = cov * lung[sl]
            hs = h[sl]
            h[sl] = hs + (np.minimum(hs, conf.emphysema_hu) - hs) * cov
            if conf_cov is not None:
                np.maximum(conf_cov[sl], cov, out=conf_cov[sl])
    fc = scene.fissures.coverage(ax, ay, z, g.px, g.dz)
    vis = np.clip((fis_vis * 0.8 + scene.fissures.completeness * 2.0 - 0.6), 0.0, 1.0)
    fc = fc * vis * lung
    paint(h, ALL, fc, T["fissure"])

    for chn, key in _VESSEL_CH:
        if ch[chn].any():
            paint(h, ALL, ch[chn], T[key])
    paint(h, ALL, ch[Ch.AW_WALL], T["airway_wall"])
    for _kind, shape, val in conf.dense:
        cvd = c.cover(shape.sdf, *shape.box())
        if cvd is not None:
            sl, cov, _ = cvd
            cov = cov * lung[sl]
            paint(h, sl, cov, val)
            if conf_cov is not None:
                np.maximum(conf_cov[sl], cov, out=conf_cov[sl])
    paint(h, ALL, ch[Ch.AW_LUMEN], T["air"])

    sk = scene.skeleton
    for cyl in sk.discs:
        cvc = c.cover(cyl.sdf, *cyl.box())
        if cvc is not None:
            paint(h, cvc[0], cvc[1], T["disc"])
    for cyl in sk.bodies:
        cvc = c.cover(cyl.sdf, *cyl.box())
        if cvc is not None:
            paint(h, cvc[0], cvc[1], T["cortex"])
            cvm = c.cover(offset(cyl.sdf, -sk.cortex_mm), *cyl.box())
            if cvm is not None:
                paint(h, cvm[0], cvm[1], T["marrow"])
    for chn, key in ((Ch.CARTILAGE, "cartilage"), (Ch.CORTEX, "cortex"), (Ch.MARROW, "marrow")):
        if ch[chn].any():
            paint(h, ALL, ch[chn], T[key])

    for b in conf.bullae:
        cvb = c.cover(offset(b.sdf, 0.8), *b.box())
        if cvb is not None:
            sl, cov, _ = cvb
            paint(h, sl, cov * lung[sl], -450.0)
            cvi = c.cover(b.sdf, *b.box())
            if cvi is not None:
                paint(h, cvi[0], cvi[1] * lung[cvi[0]], T["air"])
            if conf_cov is not None:
                np.maximum(conf_cov[sl], cov * lung[sl], out=conf_cov[sl])
    fluid, rim, depb = effusion_masks(conf, anat, ax, ay, z, lung)
    if fluid.any() or rim.any() or depb.any():
        h[fluid] = conf.effusion_hu
        h[rim] = np.maximum(h[rim], -150.0)
        h[depb] = np.maximum(h[depb], conf.dependent[1])

    nod = np.zeros(c.shape, bool)
    for p in scene.nodules:
        cvn = c.cover(p.blob.sdf, *p.blob.box())
        if cvn is None:
            continue
        sl, cov, inside = cvn
        inlung = lung[sl] & ~fluid[sl]
        cov = cov * inlung
        inside = inside & inlung
        hs = h[sl]
        target = np.maximum(hs, p.hu) if p.kind in (NoduleKind.GROUND_GLASS, NoduleKind.PART_SOLID) else p.hu
        h[sl] = hs + (target - hs) * cov
        if p.core is not None:
            cvc2 = c.cover(p.core.sdf, *p.core.box())
            if cvc2 is not None:
                paint(h, cvc2[0], cvc2[1] * (lung[cvc2[0]] & ~fluid[cvc2[0]]), p.core_hu)
        nod[sl] |= inside
        i, j, k = np.rint(g.index_of(c.pose.to_patient(p.centroid))).astype(int)
        if c.k0 <= k < c.k1 and 0 <= j < g.ny and 0 <= i < g.nx:
            nod[k - c.k0, j, i] = True  # even a nodule smaller than a voxel marks the voxel at its centre

    lab = np.zeros(c.shape, np.uint8)
    lab[right] = RIGHT_LUNG
    lab[left] = LEFT_LUNG
    lab[fluid] = 0
    lab[nod] = NODULE
    st = None
    if want:
        st = np.zeros(c.shape, np.uint8)
        vessel = (ch[Ch.ART] > 0.3) | (ch[Ch.VEIN] > 0.3) | (ch[Ch.AORTA] > 0.5) | (ch[Ch.SYSVEIN] > 0.5)
        st[vessel] |= VESSEL
        st[(ch[Ch.AW_WALL] > 0.3) & (ch[Ch.AW_LUMEN] < 0.6)] |= AIRWAY
        st[fc > 0.2] |= FISSURE
        confm = fluid | rim | depb | ((ch[Ch.SOFT] > 0.3) & lung)  # soft tissue in the lung: hilar lymph nodes
        if conf_cov is not None:
            confm |= conf_cov > 0.4
        st[confm] |= CONFOUNDER
        st[nod] = 0
    return h, lab, st, body

