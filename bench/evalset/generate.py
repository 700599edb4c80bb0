"""Assemble one evaluation case: anatomy, trees, confounders, nodules, then the scanner.

Order of composition (later steps paint over earlier ones): body and
mediastinum with the lung parenchyma and fissures (:mod:`.anatomy`,
interpolated between planes) -> emphysema -> consolidation and atelectasis
-> arteries and veins -> airways -> pleural effusion -> nodules -> scanner
(:mod:`.acquisition`: slice profile, kernel, textured noise, field of view,
flip to the patient position).
"""

from __future__ import annotations

import numpy as np

from .acquisition import scan
from .anatomy import planes
from .case import Case
from .confounders import draw_confounders, paint_confounders
from .draw import draw_acquisition, stream
from .frame import Frame
from .layout import draw_layout
from .lungmap import LungMap
from .nodules import place_nodules
from .raster import smooth_field, splat_tubes
from .trees import grow_trees


def _plane_index(nz: int, dz: float) -> np.ndarray:
    m = max(1, int(2.6 // dz))
    kp = np.arange(0, nz, m)
    return kp if kp[-1] == nz - 1 else np.append(kp, nz - 1)


def _lerp(stack: np.ndarray, i0: int, i1: int, w: float) -> np.ndarray:
    """Linear interpolation between planes ``i0`` and ``i1`` of ``stack`` at weight ``w``."""
    a = stack[i0]
    return a if w == 0.0 else a + np.float32(w) * (stack[i1] - a)


def generate_case(seed: int, *, healthy: bool, matrix: int = 256) -> Case:
    """Generate evaluation case ``seed``.

    Parameters
    ----------
    seed : int
        Case seed; everything is drawn from it.
    healthy : bool
        True for a case without nodules (it may still carry confounders).
    matrix : int
        In-plane matrix; the field of view does not depend on it.

    Returns
    -------
    Case
        Image, labels, geometry, nodules and the drawn parameters.
    """
    acq = draw_acquisition(seed, matrix)
    L = draw_layout(stream(seed, "anatomy"), acq)
    fr = Frame.build(acq, L.H)
    gravity = -1.0 if acq.prone else 1.0
    conf = draw_confounders(stream(seed, "confounders"), L)
    kp = _plane_index(fr.nz, fr.dz)
    P = planes(L, fr, kp * fr.dz + fr.z0, conf.effusion, conf.lymph_nodes, gravity)
    even = np.flatnonzero(np.arange(len(kp)) * (kp[1] - kp[0]) == kp) if len(kp) > 1 else np.arange(1)
    lungs = LungMap.build(P["lung"][even], kp[even] * fr.dz, fr)

    # slices: interpolate the planes, add the parenchyma, fissures and effusion
    shape, px = fr.shape, fr.pixel
    hu = np.empty(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    lung_sd = np.empty(shape, np.float32)
    rt = stream(seed, "texture")
    cell, tex_amp, fis_amp = float(rt.uniform(6, 12)), float(rt.uniform(6, 18)), float(rt.uniform(120, 320))
    tex = smooth_field(rt, shape, fr.spacing, cell)
    xa, ya = fr.plane_xy()
    side2d = np.where(xa < 0, 1, 2).astype(np.uint8)
    dep = np.clip((gravity * ya / L.Dp + 1) / 2, 0, 1) ** 2 * L.hu["lung_grad"] + L.hu["lung"]
    fis_w = 0.5 * px + 0.4
    for k in range(fr.nz):
        i1 = int(np.searchsorted(kp, k))
        i0 = max(i1 - 1, 0) if kp[i1] != k else i1
        w = 0.0 if i0 == i1 else (k - kp[i0]) / (kp[i1] - kp[i0])

        t, lsd = _lerp(P["tissue"], i0, i1, w), _lerp(P["lung"], i0, i1, w)
        fis = np.maximum(np.clip(1 - np.abs(_lerp(P["fis_o"], i0, i1, w)) / fis_w, 0, 1),
                         np.clip(1 - np.abs(_lerp(P["fis_h"], i0, i1, w)) / fis_w, 0, 1))
        lhu = dep + tex_amp * tex[k] + fis_amp * fis
        f = np.clip(0.5 - lsd / px, 0, 1)
        s = t + f * (lhu - t)
        if conf.effusion is not None:
            fe = np.clip(0.5 - _lerp(P["effusion"], i0, i1, w) / px, 0, 1)
            s += fe * (conf.effusion.hu + 0.3 * tex_amp * tex[k] - s)
        hu[k] = s
        lung_sd[k] = lsd
        labels[k] = np.where(lsd < 0, side2d, 0)
    del P, tex

    paint_confounders(hu, labels, fr, conf, lungs, stream(seed, "emphysema"), before_vessels=True)
    # vessels and airways
    trees = grow_trees(L, fr, lungs, stream(seed, "trees"))
    buf = np.zeros(shape, np.float32)
    width = px
    for kind, value in (("artery", L.hu["pa"]), ("vein", L.hu["vein"])):
        buf.fill(0)
        for tr in trees:
            if tr.kind == kind:
                splat_tubes(buf, fr.spacing, *tr.segments(0.2), width)
        hu += buf * (np.float32(value) - hu)
    paint_confounders(hu, labels, fr, conf, lungs, stream(seed, "opacities"), before_vessels=False)
    for lumen in (False, True):
        buf.fill(0)
        for tr in trees:
            if tr.kind == "airway":
                p0, p1, r = tr.segments(0.7)
                splat_tubes(buf, fr.spacing, p0, p1, r if lumen else r * 1.12 + 0.45, width)
        hu += buf * (np.float32(-1000.0 if lumen else L.hu["airway_wall"]) - hu)
    del buf
    nodules = [] if healthy else place_nodules(hu, labels, lung_sd, fr, lungs, trees, stream(seed, "nodules"))
    del lung_sd
    return scan(seed, hu, labels, fr, acq, L, conf, nodules, trees)
