"""Implicit-surface anatomy evaluated on axial planes.

For each plane (every slice, or every 2nd or 3rd one, at most 2.6 mm apart) this computes,
in the A frame of :mod:`.layout`:

- ``tissue``: the HU of everything but the lung parenchyma (body wall, fat,
  muscle, ribs and costal cartilage, spine, sternum, mediastinum with heart,
  great vessels, airways and lymph nodes, diaphragm, liver, stomach, spleen);
- ``lung``: the signed distance to the lungs, a smooth intersection of the
  thoracic cavity (a superellipse cross-section tapering to the apices), the
  complement of the mediastinum (a smooth union of a midline slab, the heart,
  the vertebral column and the mediastinal tubes with a fat margin, which
  leaves the hila and the cardiac notch) and the half-space above the
  diaphragm domes, with an optional dependent pleural effusion carved out;
- ``effusion``: signed distance to that effusion (or +inf);
- ``fis_o`` / ``fis_h``: signed distances to the oblique and the (right)
  horizontal fissure surfaces.

The slices between planes are interpolated linearly (:mod:`.generate`),
which is exact for these smooth distance fields to first order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frame import Frame
from .layout import Layout
from .sdf import capsule, ellipsoid, ramp, smax, smin, superellipse2

BIG = 1e3


@dataclass(frozen=True)
class Effusion:
    """A dependent pleural effusion: ``side`` (-1 right, +1 left), depth at the base, top height (mm), HU."""

    side: int
    depth: float
    top: float
    hu: float


@dataclass(frozen=True)
class LymphNode:
    """A mediastinal or hilar lymph node (A frame); ``hu`` above 200 makes it a calcified one."""

    centre: np.ndarray
    radius: float
    hu: float


def _put(dst: np.ndarray, frac: np.ndarray, value: float | np.ndarray) -> None:
    dst += frac * (value - dst)


def _rib_field(L: Layout, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, cav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised elliptic radius of the nearest rib (<1 inside) and a cartilage flag."""
    q = np.abs(np.arctan2(X, Y)) / np.pi  # 0 posterior midline .. 1 anterior
    kf = (L.rib_top - L.rib_drop * q ** 1.4 - Z) / L.rib_spacing
    k = np.rint(kf)
    dzr = (kf - k) * L.rib_spacing
    s = cav - (3.5 + 0.35 * L.wall)
    e = np.sqrt((s / 3.6) ** 2 + (dzr / 4.6) ** 2)
    end = np.interp(k, [0, 6, 7, 9, 10, 11], [0.93, 0.93, 0.82, 0.7, 0.5, 0.4])
    e = np.where((k >= 0) & (k <= 11) & (q < end) & (q > 0.06), e, BIG)
    return e, q > end - 0.16 * (k < 10)


def _spine(L: Layout, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, t: np.ndarray, px: float) -> np.ndarray:
    """Paint the vertebral column into ``t``; returns the column's signed distance (for the mediastinum)."""
    hu = L.hu
    u = np.mod(Z - L.vert_phase, L.vert_len) / L.vert_len
    vb = np.hypot(X, Y - L.y_vb) - L.r_vb
    disc = u < 0.2
    body_hu = np.where(disc, hu["disc"], np.where(vb > -1.6, hu["cortex"] * 0.7, hu["marrow"]))
    _put(t, ramp(vb, px), body_hu)
    yc = L.y_vb + L.r_vb + 8.5
    canal = np.hypot(X, Y - yc)
    arch = np.abs(canal - 10.5) - 3.0
    arch = np.maximum(arch, (L.y_vb + L.r_vb - 1) - Y)
    spin = capsule(X, Y, Z, np.array([0, yc + 10, 0.0]), np.array([0, yc + 38, 0.0]), 4.5, 3.0)
    tp = np.minimum(capsule(X, Y, Z, np.array([-6, yc - 2, 0.0]), np.array([-32, yc + 4, 0.0]), 5, 4),
                    capsule(X, Y, Z, np.array([6, yc - 2, 0.0]), np.array([32, yc + 4, 0.0]), 5, 4))
    tp = np.where((u > 0.3) & (u < 0.75), tp, BIG)
    post = np.minimum(np.minimum(arch, np.where(u > 0.15, spin, BIG)), tp)
    _put(t, ramp(post, px), np.where(post > -1.5, hu["cortex"] * 0.8, hu["marrow"]))
    _put(t, ramp(canal - 7.5, px), hu["csf"])
    return vb


def _abdomen(L: Layout, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, dd: np.ndarray, t: np.ndarray,
             px: float, gravity: float) -> None:
    """Liver, stomach (with its gas cap), spleen and the diaphragm muscle below the domes."""
    hu = L.hu
    liver = np.maximum(np.maximum(dd + 4.0, X + 0.45 * (Y + 0.2 * L.Dp) - 0.25 * L.W), Y - (L.Dp - 18))
    _put(t, ramp(liver, px), hu["liver"])
    sc = np.array([0.42 * L.W, -0.15 * L.Dp, L.dome[1] - 38])
    st = np.maximum(ellipsoid(X, Y, Z, sc, np.array([40.0, 36, 42])), dd + 5)
    gas = gravity * (Y - sc[1]) + 16.0  # the non-dependent part of the stomach holds gas
    _put(t, ramp(st, px), np.where(gas < 0, -1000.0, 15.0))
    _put(t, ramp(np.abs(st + 3.5) - 3.5, px), hu["muscle"])
    sp = ellipsoid(X, Y, Z, np.array([0.72 * L.W, 0.52 * L.Dp, L.dome[1] - 48]), np.array([22.0, 44, 46]))
    _put(t, ramp(np.maximum(sp, dd + 4), px), hu["spleen"])
    _put(t, ramp(np.abs(dd + 2.5) - 2.5, px), hu["muscle"])


def planes(L: Layout, fr: Frame, z: np.ndarray, effusion: Effusion | None, nodes: list[LymphNode],
           gravity: float) -> dict[str, np.ndarray]:
    """Evaluate the anatomy on axial planes at A-frame heights ``z``.

    Parameters
    ----------
    L : Layout
        The drawn anatomy.
    fr : Frame
        Grid geometry (in-plane pixel centres and windows).
    z : ndarray
        Plane heights in the A frame.
    effusion : Effusion or None
        A pleural effusion to carve out of the lungs.
    nodes : list of LymphNode
        Mediastinal lymph nodes.
    gravity : float
        +1 when posterior is down (supine), -1 when anterior is down (prone).

    Returns
    -------
    dict of str to ndarray
        ``tissue``, ``lung``, ``effusion``, ``fis_o``, ``fis_h``: float32 ``[plane, y, x]``.
    """
    out = {k: np.empty((len(z), fr.ny, fr.nx), np.float32) for k in ("tissue", "lung", "effusion", "fis_o", "fis_h")}
    X2, Y2 = fr.plane_xy()
    px = fr.pixel
    hu = L.hu
    for p0 in range(0, len(z), 6):
        Z = z[p0:p0 + 6].astype(np.float32)[:, None, None]
        a, b = L.half_axes(Z)
        a0, b0 = L.half_axes(Z, apex=False)
        X, Y = X2[None], Y2[None]
        narrow = 1.0 - L.taper * np.clip(-Y / b, 0, 1) ** 2  # the front of the chest is narrower
        cav = superellipse2(X, Y, a * narrow, b, L.square)
        # body: fat, muscle, then the cavity contents
        sh = L.shoulder * np.clip((Z - (L.H - 50)) / 70, 0, 1)
        ant, post = b0 + L.wall + L.fat[0], b0 + 42 + L.fat[2]
        yc = (post - ant) / 2
        body = superellipse2(X, Y - yc, (a0 + L.wall + L.fat[1] + sh) * (1.0 - 0.6 * L.taper * np.clip(-Y / b0, 0, 1) ** 2),
                             (post + ant) / 2, 0.55)
        v = np.clip((Y - yc) / ((post + ant) / 2), -1, 1)
        fat = L.fat[1] + (L.fat[0] - L.fat[1]) * np.clip(-v, 0, 1) ** 2 + (L.fat[2] - L.fat[1]) * np.clip(v, 0, 1) ** 2
        t = np.full(cav.shape, -1000.0, np.float32)
        _put(t, ramp(body, px), hu["fat"])
        _put(t, ramp(body + fat, px), hu["muscle"])
        dd = Z - L.dome_z(X, Y)
        content = np.full(cav.shape, hu["fat"], np.float32)
        if Z.min() < max(L.dome) + 5:
            _abdomen(L, X, Y, Z, dd, content, px, gravity)
        _put(t, ramp(cav, px), content)
        # mediastinum: midline slab, heart, tubes, nodes (painted in t, unioned in med)
        x_t, y_t, _ = L.trachea
        w = 3.0 + 10.0 * np.clip((Y - (y_t - 40)) / 30, 0, 1) + 14.0 * np.clip((Z - L.carina_z - 10) / 30, 0, 1)
        med = np.abs(X - 0.5 * x_t) - w
        med = med + np.zeros_like(cav)
        reach = float(L.heart_axes.max()) + 12
        win = fr.window(L.heart_c - reach, L.heart_c + reach)
        if win is not None and np.abs(Z - L.heart_c[2]).min() < reach:
            Xw, Yw = X2[win][None], Y2[win][None]
            ddw = dd[:, win[0], win[1]]
            hs = np.maximum(ellipsoid(Xw, Yw, Z, L.heart_c, L.heart_axes, L.heart_rot), -ddw - 1)
            hin = np.maximum(ellipsoid(Xw, Yw, Z, L.heart_c, L.heart_axes * 0.8, L.heart_rot), -ddw - 8)
            tw = t[:, win[0], win[1]]
            _put(tw, ramp(hs, px), hu["muscle"] - 5)
            _put(tw, ramp(hin, px), hu["heart_blood"])
            med[:, win[0], win[1]] = smin(med[:, win[0], win[1]], hs + 3, 8)
        for tb in L.tubes:
            lo = np.minimum(tb.p0, tb.p1) - max(tb.r0, tb.r1) - 16
            hi = np.maximum(tb.p0, tb.p1) + max(tb.r0, tb.r1) + 16
            idx = np.flatnonzero((Z[:, 0, 0] >= lo[2]) & (Z[:, 0, 0] <= hi[2]))
            win = fr.window(lo, hi)
            if idx.size == 0 or win is None:
                continue
            zs = slice(int(idx[0]), int(idx[-1]) + 1)
            d = capsule(X2[win][None], Y2[win][None], Z[zs], tb.p0, tb.p1, tb.r0, tb.r1)
            tw = t[zs, win[0], win[1]]  # a view: painted in place
            if tb.kind == "airway":
                _put(tw, ramp(d, px), hu["airway_wall"])
                _put(tw, ramp(d + 1.8, px), -1000.0)
            elif tb.kind == "oesophagus":
                _put(tw, ramp(d, px), hu["muscle"])
                _put(tw, ramp(d + tb.r0 - 1.5, px), -1000.0)
            else:
                _put(tw, ramp(d, px), hu[tb.kind])
            margin = 2.5 if tb.kind == "airway" else 4.0
            med[zs, win[0], win[1]] = smin(med[zs, win[0], win[1]], d - margin, 6)
        for n in nodes:
            d = np.sqrt((X - n.centre[0]) ** 2 + (Y - n.centre[1]) ** 2 + ((Z - n.centre[2]) * 1.2) ** 2) - n.radius
            _put(t, ramp(d, px), n.hu)
            med = smin(med, d - 2.0, 3)
        vb = _spine(L, X, Y, Z, t, px)
        med = smin(med, vb - 7.0, 6)
        # ribs, costal cartilage and sternum outside the cavity
        e, cart = _rib_field(L, X, Y, Z, cav)
        rib_hu = np.where(cart, hu["cartilage"], np.where(e > 0.62, hu["cortex"], hu["marrow"] + 60))
        _put(t, ramp((e - 1.0) * 3.6, px), rib_hu)
        st = superellipse2(X, Y + b0 + 0.45 * L.wall, 15.0 + 8 * np.clip((Z - L.H + 40) / 30, 0, 1), 6.0, 0.5)
        zst = np.maximum(Z - (L.H - 10), (L.dome[0] + 15) - Z)
        st = np.maximum(st, zst)
        _put(t, ramp(st, px), np.where(st > -1.4, hu["cortex"] * 0.7, hu["marrow"]))
        # lungs
        gx = np.float32(2 * L.dome[0] / (0.95 * L.W) ** 2)
        dia = -dd / np.sqrt(1.0 + (gx * (np.abs(X) - 0.42 * L.W)) ** 2 + (gx * (Y + 0.2 * L.Dp) * 0.6) ** 2)
        lung = smax(smax(cav, -med, 3.0), dia, 4.0)
        eff = np.full(cav.shape, BIG, np.float32)
        if effusion is not None:
            level = b * 1.0 - effusion.depth * np.clip(1 - Z / effusion.top, 0, 1) ** 0.7
            lev = gravity * Y - level  # > 0 in the fluid
            mine = (X * effusion.side) > 0
            eff = np.where(mine, smax(lung, -lev, 2.0), BIG)
            lung = np.where(mine, smax(lung, lev, 2.0), lung)
        # fissures: oblique (both sides), horizontal (right)
        fo = np.empty(cav.shape, np.float32)
        for side, sel in (("right", X < 0), ("left", X >= 0)):
            yp, zp, ya, za = L.fissures[side]
            dy, dzf = ya - yp, za - zp
            n = np.hypot(dy, dzf)
            d = ((Y - yp) * dzf - (Z - zp) * dy) / n + L.fissure_tilt * (np.abs(X) - 0.4 * L.W) \
                + 12 * ((np.abs(X) - 0.55 * L.W) / L.W) ** 2
            fo = np.where(sel, d, fo)
        fh = np.where((X < 0) & (fo > 0), (Z - L.horizontal_z) + 0.12 * Y, BIG)
        sl = slice(p0, p0 + Z.shape[0])
        out["tissue"][sl], out["lung"][sl], out["effusion"][sl] = t, lung, eff
        out["fis_o"][sl], out["fis_h"][sl] = fo, fh
    return out
