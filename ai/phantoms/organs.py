"""Soft tissues painted analytically, chunk by chunk: body wall (skin, fat, muscle), arms, breasts,
the table, the mediastinal fat, the heart with its chambers and the upper abdomen under the diaphragm
(liver, spleen, stomach).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ai.phantoms.anatomy import Anatomy, Ellipsoid
from ai.phantoms.raster import Chunk, paint


@dataclass
class Organs:
    """Drawn organ shapes (anatomical mm) and the table (patient mm)."""

    heart_parts: list[tuple[str, Ellipsoid]]
    spleen: Ellipsoid
    stomach: Ellipsoid
    stomach_gas: float  # gas depth below the non-dependent wall, mm (0: none)
    breasts: list[Ellipsoid]
    table_y: float  # patient y of the surface the patient lies on (mattress or table top), dependent side
    table: bool  # whether a table is drawn (the body is flattened against the surface either way)
    mattress_mm: float


def build_organs(rng: np.random.Generator, anat: Anatomy, dy: float) -> Organs:
    """Draw heart chambers, abdominal organs, breasts and the table for one patient (``dy``: table-axis shift)."""
    k = anat.scale
    h = anat.heart
    rot, ax = h.rot, h.axes

    def rel(name: str, off: tuple[float, float, float], frac: tuple[float, float, float]) -> tuple[str, Ellipsoid]:
        return name, Ellipsoid(h.centre + np.asarray(off) * k, rot, ax * np.asarray(frac))

    parts = [
        ("pericardial fat", h.grown(anat.hu_pericardium_mm)),
        ("myocardium", h),
        rel("ra", (-30, 2, 12), (0.36, 0.42, 0.46)),
        rel("rv", (-8, -16, -4), (0.55, 0.32, 0.45)),
        rel("la", (-4, 26, 16), (0.34, 0.38, 0.4)),
        rel("lv", (14, 6, -8), (0.5, 0.36, 0.4)),
    ]
    zl = anat.dome_top[1]
    spleen = Ellipsoid(np.array([0.62 * anat.ac, 0.45 * anat.bc, zl - 55 * k]), np.eye(3), np.array([32.0, 55.0, 52.0]) * k)
    stomach = Ellipsoid(np.array([0.3 * anat.ac, -0.2 * anat.bc, zl - 45 * k]), np.eye(3), np.array([48.0, 42.0, 40.0]) * k)
    breasts: list[Ellipsoid] = []
    if anat.breasts:
        zb = -0.56 * anat.lung_height
        a, b = anat.cavity_axes(np.asarray(zb))
        front = float(b) * 0.96 + anat.wall + anat.muscle[1] + anat.fat[1]
        size = float(rng.uniform(0.7, 1.3)) * (1 + 0.8 * anat.adiposity)
        proj = 30.0 * size * (1.35 if anat.gravity < 0 else 0.8)
        for s in (-1.0, 1.0):
            c = np.array([s * 0.5 * float(a), -front + proj * 0.7, zb])
            breasts.append(Ellipsoid(c, np.eye(3), np.array([62.0 * size * (0.85 if anat.gravity < 0 else 1.1), proj, 55.0 * size])))
    a, b = anat.cavity_axes(np.asarray(-0.5 * anat.lung_height))
    if anat.gravity > 0:
        edge = (float(b) * 1.04 + anat.wall + anat.muscle[2] + anat.fat[2]) * float(rng.uniform(0.9, 0.96))
    else:
        front = float(b) * 0.96 + anat.wall + anat.muscle[1] + anat.fat[1]
        edge = max(float(rng.uniform(0.92, 0.97)) * front, max((front + 0.3 * e.axes[1] - 2.0 for e in breasts), default=0.0))
    table_y = dy + anat.gravity * edge
    table = bool(rng.random() < 0.92)
    mattress = float(rng.uniform(15, 45)) if rng.random() < 0.5 else 0.0
    gas = float(rng.uniform(8, 30)) if rng.random() < 0.6 else 0.0
    return Organs(parts, spleen, stomach, gas, breasts, table_y, table, mattress)


def paint_body(c: Chunk, hu: np.ndarray, anat: Anatomy, org: Organs, T: dict[str, float], gland: np.ndarray) -> np.ndarray:
    """Paint table, body wall, arms and breasts into ``hu``; return the body mask (the patient's inside)."""
    ax, ay, z = c.ax, c.ay, c.z
    g = anat.gravity
    depth = g * (c.y - org.table_y) + 0.0006 * (c.x - c.pose.dx) ** 2  # a shallow cradle, in the scanner's frame
    if org.table:
        wide = np.abs(c.x - c.pose.dx) < 235.0
        m = org.mattress_mm
        layers = ((0, m, T["mattress"]), (m, m + 3, T["table_shell"]), (m + 3, m + 38, T["table_core"]), (m + 38, m + 41, T["table_shell"]))
        plane = np.full(np.broadcast_shapes(depth.shape, wide.shape), np.nan, np.float32)
        for d0, d1, v in layers:
            if d1 > d0:
                plane[(depth >= d0) & (depth < d1) & wide] = v
        hit = ~np.isnan(plane)
        if hit.any():
            hu[:] = np.where(hit, plane, hu)
    q = anat.body_q(ax, ay, z, "skin")
    body = (q < 1.0) & (depth < 0)  # soft tissue flattened against the support
    hu[body] = T["fat"]
    hu[body & (q > 0.972)] = T["skin"]
    for e in org.breasts:
        cv = c.cover(e.sdf, *e.box())
        if cv is not None:
            sl, cov, inside = cv
            paint(hu, sl, cov, T["fat"])
            body[sl] |= inside
            inner = Ellipsoid(e.centre, e.rot, e.axes * 0.7)
            gsl = inner.q(ax[:, sl[1], sl[2]], ay[:, sl[1], sl[2]], z[sl[0]]) < 1.0
            mix = np.clip(gland[sl] * 0.7 + 0.2, 0.0, 1.0) * gsl
            paint(hu, sl, mix, T["gland"])
    if anat.arms_down:
        ax_, ay_, r = anat.arm
        fat_t = 4.0 + 22.0 * anat.adiposity
        for s in (-1.0, 1.0):
            qa = ((ax - s * ax_) / r) ** 2 + ((ay - ay_) / (r * 1.1)) ** 2
            arm = np.broadcast_to(qa < 1.0, hu.shape)
            hu[arm] = T["fat"]
            hu[np.broadcast_to(qa < ((r - fat_t) / r) ** 2, hu.shape)] = T["muscle"]
            body |= arm
    qf = anat.body_q(ax, ay, z, "fat")
    hu[(qf < 1.0) & body] = T["muscle"]
    hu[anat.body_q(ax, ay, z, "ribs") < 1.0] = T["muscle"]
    return body


def paint_cavity(c: Chunk, hu: np.ndarray, anat: Anatomy, org: Organs, T: dict[str, float], tex: np.ndarray,
                 q: np.ndarray) -> None:
    """Mediastinal fat in the cavity, the upper abdomen under the diaphragm and the heart (``q``: :meth:`Anatomy.cavity_q`)."""
    ax, ay, z = c.ax, c.ay, c.z
    hu[q < 1.0] = T["fat"] + 8.0
    dz = z - anat.diaphragm_z(ax, ay)
    abd = q < 1.03
    below = abd & (dz < 0)
    if below.any():
        hu[below] = T["muscle"]  # the diaphragm
        deep = abd & (dz < -5.0)
        hu[deep] = (T["fat"] * 0.55 + T["soft"] * 0.45 + 25.0 * tex)[deep]
        liver = deep & (ax < 0.12 * anat.ac - 0.45 * dz)
        hu[liver] = T["liver"]
        for e, v in ((org.spleen, T["spleen"]), (org.stomach, T["muscle"])):
            cv = c.cover(e.sdf, *e.box())
            if cv is None:
                continue
            sl, cov, _ = cv
            paint(hu, sl, cov * deep[sl], v)
        cv = c.cover(org.stomach.grown(-4.0).sdf, *org.stomach.box())
        if cv is not None:
            sl, cov, _ = cv
            paint(hu, sl, cov * deep[sl], T["stomach"])
            if org.stomach_gas > 0:
                top = org.stomach.centre[1] - anat.gravity * (org.stomach.axes[1] - 4.0 - org.stomach_gas)
                gas = (anat.gravity * (ay[:, sl[1], sl[2]] - top) < 0) & (cov > 0.5) & deep[sl]
                hu[sl] = np.where(gas, T["air"], hu[sl])
    chamber = {"ra": "blood_art", "rv": "blood_art", "la": "blood_vein", "lv": "blood_vein"}
    for name, e in org.heart_parts:
        cv = c.cover(e.sdf, *e.box())
        if cv is None:
            continue
        sl, cov, _ = cv
        above = (z[sl[0]] > anat.diaphragm_z(ax[:, sl[1], sl[2]], ay[:, sl[1], sl[2]]) - 6.0)
        val = T["fat"] if name == "pericardial fat" else T["myocardium"] if name == "myocardium" else T[chamber[name]]
        paint(hu, sl, cov * above, val)
