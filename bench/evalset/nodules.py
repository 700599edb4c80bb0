"""Nodules: lobulated, spiculated and part-solid shapes, their placement and their truth.

A shape is a star-shaped body around its centre: an anisotropic, rotated
sphere whose radius is modulated by von Mises lobes
(``r(u) = R (1 + sum a_j (exp(k_j (u.v_j - 1)) - m_j))``), plus optional
spicules (tapered cones reaching past the surface).  Part-solid nodules are
a ground-glass envelope with an eccentric lobulated solid core; calcified
ones are solid with diffuse, central or popcorn calcification.

Every nodule is supersampled on its voxel box: the fraction of subsamples
inside gives the partial-volume weight for the image, ``>= 0.5`` gives the
label (its largest 26-connected piece), and the subsample count gives the
true volume.  Shapes are clipped to the lung (so juxtapleural nodules flatten
on the pleura).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from .case import NODULE, EvalNodule
from .frame import Frame
from .lungmap import LungMap
from .sdf import rotation
from .trees import Tree

KINDS = ("solid", "part-solid", "ground-glass", "calcified")
SITES = ("isolated", "juxtavascular", "juxtapleural")


@dataclass
class Shape:
    """A drawn nodule shape in its local frame (mm, centred)."""

    R: float
    rot: np.ndarray
    stretch: np.ndarray
    lobes: np.ndarray  # (K, 3) directions
    amp: np.ndarray
    kappa: np.ndarray
    spicules: np.ndarray  # (S, 3) directions
    spic_len: np.ndarray
    spic_base: np.ndarray

    @property
    def extent(self) -> float:
        """Radius of a sphere that contains the shape."""
        lob = self.R * (1 + self.amp.sum()) * self.stretch.max()
        sp = (self.R + self.spic_len.max()) if len(self.spic_len) else 0.0
        return float(max(lob, sp))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean occupancy at local coordinates (broadcastable arrays)."""
        q = [self.rot[0, i] * x + self.rot[1, i] * y + self.rot[2, i] * z for i in range(3)]
        q = [q[i] / self.stretch[i] for i in range(3)]
        rr = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        rad = np.full(rr.shape, self.R, np.float32)
        for v, a, k in zip(self.lobes, self.amp, self.kappa):
            m = (1 - np.exp(-2 * k)) / (2 * k)
            cosang = (q[0] * v[0] + q[1] * v[1] + q[2] * v[2]) / rr
            rad += self.R * a * (np.exp(k * (cosang - 1)) - m)
        occ = rr < rad
        for d, ln, b in zip(self.spicules, self.spic_len, self.spic_base):
            t = x * d[0] + y * d[1] + z * d[2]
            px2 = x * x + y * y + z * z - t * t
            s = (t - 0.6 * self.R) / (0.4 * self.R + ln)
            occ |= (s > 0) & (s < 1) & (px2 < (b * (1 - s) + 0.15) ** 2)
        return occ


def draw_shape(r: np.random.Generator, R: float, lobulated: float, spiculated: bool) -> Shape:
    """Draw a shape of nominal radius ``R`` with lobulation amplitude scale ``lobulated``.

    Parameters
    ----------
    r : numpy.random.Generator
        Random stream.
    R : float
        Nominal radius (mm).
    lobulated : float
        Scale of the lobe amplitudes (0 smooth .. ~0.3 strongly lobulated).
    spiculated : bool
        Whether to add spicules.

    Returns
    -------
    Shape
    """
    k = int(r.integers(3, 9))
    lobes = r.normal(size=(k, 3))
    lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
    st = np.array([1.0, r.uniform(0.75, 1.2), r.uniform(0.7, 1.15)])
    st /= np.prod(st) ** (1 / 3)
    ns = int(r.integers(4, 14)) if spiculated else 0
    sp = r.normal(size=(ns, 3))
    sp /= np.linalg.norm(sp, axis=1, keepdims=True) + 1e-9
    return Shape(R, rotation(*r.uniform(0, 2 * np.pi, 3)), st, lobes, r.uniform(0.2, 1.0, k) * lobulated,
                 r.uniform(2, 9, k), sp, r.uniform(0.5, 1.3, ns) * R, r.uniform(0.07, 0.14, ns) * R)


def _nominal(r: np.random.Generator, kind: str) -> float:
    if kind == "calcified":
        return float(r.uniform(4, 11))
    if r.random() < 0.2:
        return float(r.uniform(4, 6))
    lo = 8.0 if kind == "part-solid" else 6.0
    return float(np.exp(r.uniform(np.log(lo), np.log(28.0))))


def _interp_box(vol: np.ndarray, box: tuple[slice, slice, slice], sub: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``vol`` on the subsample grid of ``box`` (per-axis factors ``sub``)."""
    out = vol[box].astype(np.float32)
    for ax, n in zip((2, 1, 0), sub):
        m = out.shape[ax]
        u = np.clip((np.arange(m * n) + 0.5) / n - 0.5, 0, m - 1)
        i0 = np.minimum(np.floor(u).astype(int), max(m - 2, 0))
        i1 = np.minimum(i0 + 1, m - 1)
        w = (u - i0).astype(np.float32)
        shp = [1, 1, 1]
        shp[ax] = m * n
        out = np.take(out, i0, axis=ax) * (1 - w.reshape(shp)) + np.take(out, i1, axis=ax) * w.reshape(shp)
    return out


def _sd_at(sd: np.ndarray, fr: Frame, p: np.ndarray) -> float:
    """The lung signed distance at V-frame point ``p``, trilinear (+inf outside the grid)."""
    u = p / fr.spacing
    i = np.floor(u).astype(int)
    if np.any(i < 0) or np.any(i + 1 >= [fr.nx, fr.ny, fr.nz]):
        return float("inf")
    w = u - i
    c = sd[i[2]:i[2] + 2, i[1]:i[1] + 2, i[0]:i[0] + 2].astype(float)
    c = c[0] * (1 - w[2]) + c[1] * w[2]
    c = c[0] * (1 - w[1]) + c[1] * w[1]
    return float(c[0] * (1 - w[0]) + c[1] * w[0])


def _vessel_nodes(trees: list[Tree]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, rad, dirs = [], [], []
    for t in trees:
        if t.kind in ("artery", "vein"):
            m = t.parent >= 0
            pos.append(t.pos[m])
            rad.append(t.radius[m])
            d = t.pos[m] - t.pos[t.parent[m]]
            dirs.append(d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9))
    return np.concatenate(pos), np.concatenate(rad), np.concatenate(dirs)


def place_nodules(hu: np.ndarray, labels: np.ndarray, lung_sd: np.ndarray, fr: Frame, lungs: LungMap,
                  trees: list[Tree], r: np.random.Generator) -> list[EvalNodule]:
    """Draw 1-5 nodules (at least one placed), paint them into ``hu`` and ``labels`` (in place) and return their truth.

    Parameters
    ----------
    hu, labels : ndarray
        Canonical volume and labels.
    lung_sd : ndarray
        Lung signed distance per voxel (shapes are clipped to ``< 0.3`` mm).
    fr : Frame
        Grid geometry.
    lungs : LungMap
        Placement map.
    trees : list of Tree
        Vessel trees (juxtavascular placement, isolated clearance).
    r : numpy.random.Generator
        The case's nodule stream.

    Returns
    -------
    list of EvalNodule
        Centres in the canonical V frame (the scanner step maps them).
    """
    n = int(r.choice([1, 2, 3, 4, 5], p=[0.15, 0.2, 0.25, 0.2, 0.2]))
    vpos, vrad, vdir = _vessel_nodes(trees)
    big = vrad > 0.9
    vside, vdepth = lungs.side_at(vpos), lungs.depth_at(vpos)
    out: list[EvalNodule] = []
    taken: list[tuple[np.ndarray, float]] = []
    for attempt in range(n + 30):  # past n only while nothing could be placed: a nodule case has >= 1 nodule
        if attempt >= n and out:
            break
        kind = str(r.choice(KINDS, p=[0.42, 0.2, 0.2, 0.18]))
        site = str(r.choice(SITES, p=[0.42, 0.3, 0.28]))
        D = _nominal(r, kind)
        spic = kind in ("solid", "part-solid") and D >= 8 and r.random() < 0.4
        shape = draw_shape(r, D / 2, float(r.uniform(0.05, 0.3)), spic)
        ext = shape.extent
        centre = None
        for _try in range(300):
            side = int(r.integers(1, 3))
            if site == "juxtapleural":
                c = lungs.sample(r, 1, side, lo=0.0, hi=0.75 * D / 2 + 2.0)
            elif site == "juxtavascular":
                ok = np.flatnonzero((vrad > 0.9) & (vrad < 3.5) & (vside == side) & (vdepth > D / 2 + 4))
                if not ok.size:
                    continue
                j = int(r.choice(ok))
                u = np.cross(vdir[j], r.normal(size=3))
                u /= np.linalg.norm(u) + 1e-9
                c = (vpos[j] + u * (D / 2 * 0.9 + vrad[j] * 0.8))[None]
            else:
                c = lungs.sample(r, 1, side, lo=ext + 4)
                if len(c) and np.any(np.linalg.norm(vpos[big] - c[0], axis=1) < D / 2 + vrad[big] + 1.5):
                    continue
            if not len(c) or lungs.side_at(c)[0] != side:
                continue
            depth = -_sd_at(lung_sd, fr, c[0])
            need = {"juxtapleural": (0.15 * D / 2, 0.6 * D / 2), "juxtavascular": (D / 2 + 2, np.inf)}
            lo_d, hi_d = need.get(site, (ext + 3, np.inf))
            if not lo_d <= depth <= hi_d:
                continue
            if any(np.linalg.norm(c[0] - p) < ext + e + 4 for p, e in taken):
                continue
            centre = c[0]
            break
        if centre is None:
            continue
        nod = _paint(hu, labels, lung_sd, fr, centre, shape, kind, r)
        if nod is not None:
            nod.site = site
            out.append(nod)
            taken.append((centre, ext))
    return out


def _paint(hu: np.ndarray, labels: np.ndarray, lung_sd: np.ndarray, fr: Frame, c: np.ndarray, shape: Shape,
           kind: str, r: np.random.Generator) -> EvalNodule | None:
    sp = fr.spacing
    e = shape.extent + 1.0
    lo = np.maximum(np.floor((c - e) / sp).astype(int), 0)
    hi = np.minimum(np.ceil((c + e) / sp).astype(int) + 1, [fr.nx, fr.ny, fr.nz])
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    sub = np.clip(np.ceil(sp / 0.3).astype(int), 2, 6)
    axes = []
    for a in range(3):
        u = (np.arange((hi[a] - lo[a]) * sub[a]) + 0.5) / sub[a] - 0.5 + lo[a]
        axes.append((u * sp[a] - c[a]).astype(np.float32))
    X, Y, Z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
    env = shape.inside(X, Y, Z) & (_interp_box(lung_sd, box, sub) < 0.3)
    core = np.zeros_like(env)
    extra: dict[str, object] = {"nominal_mm": 2 * shape.R, "lobes": len(shape.lobes), "spicules": len(shape.spicules)}
    if kind in ("part-solid", "calcified"):
        cs = draw_shape(r, shape.R * float(r.uniform(0.3, 0.55)), 0.2, False)
        off = r.normal(size=3) * shape.R * 0.15
        core = cs.inside(X - off[0], Y - off[1], Z - off[2]) & env
        if kind == "calcified":
            pattern = str(r.choice(["diffuse", "central", "popcorn"], p=[0.5, 0.3, 0.2]))
            extra["pattern"] = pattern
            if pattern == "diffuse":
                core = env.copy()
            elif pattern == "popcorn":
                core = np.zeros_like(env)
                for _ in range(int(r.integers(3, 7))):
                    p = r.normal(size=3) * shape.R * 0.4
                    rad = shape.R * float(r.uniform(0.2, 0.35))
                    core |= ((X - p[0]) ** 2 + (Y - p[1]) ** 2 + (Z - p[2]) ** 2 < rad * rad) & env
    if not env.any():
        return None
    nb = [hi[a] - lo[a] for a in range(3)]

    def frac(m: np.ndarray) -> np.ndarray:
        return m.reshape(nb[2], sub[2], nb[1], sub[1], nb[0], sub[0]).mean(axis=(1, 3, 5), dtype=np.float32)

    f_env, f_core = frac(env), frac(core)
    h = hu[box]
    solid_hu = float(r.uniform(5, 60))
    if kind in ("part-solid", "ground-glass"):
        g_hu = float(r.uniform(-720, -520) if kind == "ground-glass" else r.uniform(-640, -420))
        tex = r.normal(0, 25, h.shape).astype(np.float32)
        h = np.maximum(h, h + f_env * (g_hu + tex - h))
        extra["ggo_hu"] = g_hu
        if kind == "part-solid":
            h = h + f_core * (solid_hu - h)
            extra["solid_fraction"] = float(core.sum() / env.sum())
    elif kind == "solid":
        h = h + f_env * (solid_hu - h)
    else:
        calc_hu = float(r.uniform(250, 1000))
        h = h + f_env * (solid_hu - h)
        h = h + f_core * (calc_hu - h)
        extra["calcium_hu"] = calc_hu
    if kind != "ground-glass":
        extra["solid_hu"] = solid_hu
    hu[box] = h
    lab = f_env >= 0.5
    if not lab.any():
        lab = f_env == f_env.max()
    cc = cc3d.connected_components(lab.astype(np.uint8), connectivity=26)
    if cc.max() > 1:
        sizes = np.bincount(cc.ravel())
        sizes[0] = 0
        lab = cc == sizes.argmax()
    side_vals = labels[box][lab]
    side_vals = side_vals[(side_vals == 1) | (side_vals == 2)]
    side = "right" if (side_vals == 1).sum() >= (side_vals == 2).sum() else "left"
    labels[box][lab] = NODULE
    vol = float(env.sum() * np.prod(sp / sub))
    zz, yy, xx = np.nonzero(env)
    cen = np.array([X.ravel()[xx].mean(), Y.ravel()[yy].mean(), Z.ravel()[zz].mean()]) + c
    idx = np.rint(cen / sp).astype(int) - lo
    kz, ky, kx = np.nonzero(lab)
    if not (0 <= idx[2] < nb[2] and 0 <= idx[1] < nb[1] and 0 <= idx[0] < nb[0] and lab[idx[2], idx[1], idx[0]]):
        j = int(np.argmin((kx - idx[0]) ** 2 + (ky - idx[1]) ** 2 + (kz - idx[2]) ** 2))
        cen = (np.array([kx[j], ky[j], kz[j]]) + lo) * sp
    return EvalNodule(tuple(float(v) for v in cen), float((6 * vol / np.pi) ** (1 / 3)), kind, "", side, vol, extra)
