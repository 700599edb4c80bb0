"""Nodules: kinds (solid, part-solid, ground-glass, calcified), sites (isolated, juxtavascular,
juxtapleural), shapes (sphere, ellipsoid, lobulated), with true volumes.

A shape is a star-shaped radial function around its centre (an ellipsoid
whose radius is modulated by a few smooth bumps), so its volume is
``1/3 * integral of r(u)^3 over directions`` (computed by quadrature).
Juxtapleural nodules are clipped by the pleura; their volume is measured on a
supersampled grid against the same lung region the labels use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ai.phantoms.geometry import random_rotation
from ai.phantoms.lungs import LungQuery
from ai.phantoms.raster import Capsules
from ai.phantoms.records import NoduleKind, NoduleSite


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


_DIRS = fibonacci_sphere(3000)


@dataclass(frozen=True)
class Blob:
    """A star-shaped solid: ellipsoid radius ``r_e(u)`` times ``1 + sum a_j exp(kappa (u . d_j - 1))``."""

    centre: np.ndarray
    rot: np.ndarray  # columns: local axes in the anatomical frame
    axes: np.ndarray
    bump_dirs: np.ndarray  # (m, 3) local unit vectors
    bump_amp: np.ndarray  # (m,)
    kappa: float = 8.0

    def radius_local(self, u: np.ndarray) -> np.ndarray:
        """Radius along local unit directions ``(..., 3)``."""
        r = 1.0 / np.sqrt(((u / self.axes) ** 2).sum(-1))
        if len(self.bump_amp):
            r = r * (1 + (self.bump_amp * np.exp(self.kappa * (u @ self.bump_dirs.T - 1))).sum(-1))
        return np.asarray(r)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Radial signed distance (positive inside), on broadcastable anatomical coordinates."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        R = self.rot.astype(np.float32)
        lx = dx * R[0, 0] + dy * R[1, 0] + dz * R[2, 0]
        ly = dx * R[0, 1] + dy * R[1, 1] + dz * R[2, 1]
        lz = dx * R[0, 2] + dy * R[1, 2] + dz * R[2, 2]
        rho = np.sqrt(lx * lx + ly * ly + lz * lz) + np.float32(1e-6)
        ux, uy, uz = lx / rho, ly / rho, lz / rho
        a = (1.0 / self.axes).astype(np.float32)
        r = 1.0 / np.sqrt((ux * a[0]) ** 2 + (uy * a[1]) ** 2 + (uz * a[2]) ** 2)
        if len(self.bump_amp):
            bump: np.ndarray | float = 1.0
            for d, amp in zip(self.bump_dirs.astype(np.float32), self.bump_amp):
                bump = bump + np.float32(amp) * np.exp(np.float32(self.kappa) * (ux * d[0] + uy * d[1] + uz * d[2] - 1))
            r = r * bump
        return r - rho

    @property
    def bound(self) -> float:
        """A radius that holds the whole shape."""
        return float(self.axes.max() * (1 + self.bump_amp.sum()))

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounding box (lo, hi)."""
        return self.centre - self.bound, self.centre + self.bound

    def volume(self) -> float:
        """Exact volume of the unclipped shape (analytic for ellipsoids, quadrature otherwise)."""
        if not len(self.bump_amp):
            return float(4.0 / 3.0 * math.pi * np.prod(self.axes))
        return float((self.radius_local(_DIRS) ** 3).mean() * 4.0 * math.pi / 3.0)

    def scaled(self, f: float, centre: np.ndarray | None = None) -> Blob:
        """The shape scaled by ``f`` (about its centre, or moved to ``centre``)."""
        c = self.centre if centre is None else centre
        return Blob(np.asarray(c, float), self.rot, self.axes * f, self.bump_dirs, self.bump_amp, self.kappa)

    def surface(self, n: int = 160) -> np.ndarray:
        """``n`` points on the surface (anatomical)."""
        u = fibonacci_sphere(n)
        return self.centre + (u * self.radius_local(u)[:, None]) @ self.rot.T


def make_blob(rng: np.random.Generator, shape: str, volume: float, centre: np.ndarray | None = None) -> Blob:
    """A sphere, ellipsoid or lobulated shape of the given volume (mm^3)."""
    rot = random_rotation(rng)
    if shape == "sphere":
        axes, dirs, amp = np.ones(3), np.zeros((0, 3)), np.zeros(0)
    elif shape == "ellipsoid":
        axes, dirs, amp = np.array([1.0, rng.uniform(0.65, 0.95), rng.uniform(0.5, 0.85)]), np.zeros((0, 3)), np.zeros(0)
    else:
        m = int(rng.integers(3, 7))
        dirs = rng.normal(size=(m, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        axes, amp = np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.7, 1.0)]), rng.uniform(0.12, 0.32, m)
    b = Blob(np.zeros(3) if centre is None else np.asarray(centre, float), rot, axes, dirs, amp, float(rng.uniform(5, 10)))
    return b.scaled((volume / b.volume()) ** (1.0 / 3.0))


@dataclass
class NodulePlan:
    """A nodule to paint: its shape, attenuation, site, side and true volume."""

    blob: Blob
    kind: NoduleKind
    site: NoduleSite
    shape: str
    side: str
    hu: float
    core: Blob | None
    core_hu: float
    clipped: bool
    volume: float
    centroid: np.ndarray  # of the true (clipped) region


def clipped_volume(blob: Blob, lungs: LungQuery, side: int, n: int = 56) -> tuple[float, np.ndarray]:
    """Volume of ``blob`` inside its lung, on an ``n``-per-side supersampled grid, and that part's centroid."""
    lo, hi = blob.box()
    h = (hi - lo) / n
    ax = [lo[i] + (np.arange(n) + 0.5) * h[i] for i in range(3)]
    X, Y, Z = np.meshgrid(*ax, indexing="ij")
    inside = blob.sdf(X.astype(np.float32), Y.astype(np.float32), Z.astype(np.float32)) >= 0
    pts = np.stack([X[inside], Y[inside], Z[inside]], 1)
    keep = lungs.side(pts) == side
    if not keep.any():
        return 0.0, blob.centre
    return float(keep.sum() * np.prod(h)), pts[keep].mean(0)


KINDS = [NoduleKind.SOLID, NoduleKind.PART_SOLID, NoduleKind.GROUND_GLASS, NoduleKind.CALCIFIED]
SITES = [NoduleSite.ISOLATED, NoduleSite.JUXTAVASCULAR, NoduleSite.JUXTAPLEURAL]


def _attenuation(rng: np.random.Generator, kind: NoduleKind) -> tuple[float, float]:
    if kind == NoduleKind.CALCIFIED:
        return float(rng.uniform(200, 1000)), 0.0
    if kind == NoduleKind.GROUND_GLASS:
        return float(rng.uniform(-750, -350)), 0.0
    if kind == NoduleKind.PART_SOLID:
        return float(rng.uniform(-600, -300)), float(rng.uniform(-20, 80))
    return float(rng.uniform(-20, 80)), 0.0


CALCIFICATION = {"diffuse": 0.4, "central": 0.4, "eccentric": 0.2}  # patterns and how often each is drawn


def _calcification(blob: Blob, calcium_hu: float) -> tuple[float, float, Blob | None]:
    """A calcified nodule's pattern: its density, the calcification's and the calcified part (None: all of it).

    Diffuse: calcified throughout.  Central and eccentric: a soft-tissue nodule with a calcified part of 30-60 %
    of its size at or off its centre, as real calcified granulomas often are.  The part is the nodule scaled by
    ``s`` and moved ``t`` of the way to a point of its surface, with ``s + t`` under 1, so it stays inside.  Drawn
    from a stream of its own, seeded by the nodule's centre, so that every other draw of the phantom is the same
    as before patterns existed.
    """
    rng = np.random.default_rng(np.frombuffer(np.asarray(blob.centre, np.float64).tobytes(), np.uint32))
    pattern = str(rng.choice(list(CALCIFICATION), p=list(CALCIFICATION.values())))
    if pattern == "diffuse":
        return calcium_hu, 0.0, None
    soft = float(rng.uniform(-20, 80))
    toward = blob.surface()[int(rng.integers(160))] - blob.centre
    if pattern == "central":
        scale, shift = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.0, 0.1))
    else:
        scale, shift = float(rng.uniform(0.3, 0.45)), float(rng.uniform(0.3, 0.4))
    return soft, calcium_hu, blob.scaled(scale, blob.centre + shift * toward)


def place_nodules(
    rng: np.random.Generator, count: int, lungs: LungQuery, vessels: Capsules, avoid: list[tuple[np.ndarray, float]],
    blocked: object = None,
) -> list[NodulePlan]:
    """Draw and place ``count`` nodules (fewer if no room is found).

    Parameters
    ----------
    rng : Generator
        The nodule stream.
    count : int
        How many to place.
    lungs : LungQuery
        The lung region.
    vessels : Capsules
        Pulmonary vessel segments (anatomical), for juxtavascular sites and clearance.
    avoid : list of (centre, radius)
        Spheres to keep clear of (confounders).
    blocked : callable, optional
        ``blocked(points) -> bool array``: other places a nodule must not reach (pleural effusion).
    """
    plans: list[NodulePlan] = []
    taken = list(avoid)
    big = np.flatnonzero(np.maximum(vessels.ra, vessels.rb) >= 1.6)  # never terminal: the same at every resolution
    mid_v = (vessels.a + vessels.b) / 2
    for _ in range(count):
        kind = KINDS[int(rng.choice(4, p=[0.48, 0.16, 0.2, 0.16]))]
        site = SITES[int(rng.choice(3, p=[0.42, 0.3, 0.28]))]
        shape = ["sphere", "ellipsoid", "lobulated"][int(rng.choice(3, p=[0.35, 0.35, 0.3]))]
        hi_d = 12.0 if kind == NoduleKind.CALCIFIED else 30.0
        lo_d = 6.0 if kind == NoduleKind.PART_SOLID else (4.0 if kind == NoduleKind.GROUND_GLASS else 3.0)
        if site == NoduleSite.JUXTAPLEURAL:
            lo_d = max(lo_d, 4.5)
        d = float(math.exp(rng.uniform(math.log(lo_d), math.log(hi_d))))
        blob = make_blob(rng, shape, math.pi / 6 * d**3)
        placed = _place(rng, blob, site, lungs, vessels, big, mid_v, taken, blocked)
        if placed is None:
            continue
        blob, side, clipped = placed
        vol, centroid = clipped_volume(blob, lungs, side) if clipped else (blob.volume(), blob.centre)
        hu, core_hu = _attenuation(rng, kind)
        core = None
        if kind == NoduleKind.PART_SOLID:
            off = rng.normal(0, 0.15, 3) * blob.bound
            core = blob.scaled(float(rng.uniform(0.35, 0.65)), blob.centre + off)
        elif kind == NoduleKind.CALCIFIED:
            hu, core_hu, core = _calcification(blob, hu)
        plans.append(NodulePlan(blob, kind, site, shape, "right" if side == 1 else "left", hu, core, core_hu, clipped, vol, centroid))
        taken.append((blob.centre, blob.bound))
    return plans


def _clear(c: np.ndarray, r: float, taken: list[tuple[np.ndarray, float]]) -> bool:
    return all(float(np.linalg.norm(c - t)) > r + tr + 2.0 for t, tr in taken)


def _place(
    rng: np.random.Generator, blob: Blob, site: NoduleSite, lungs: LungQuery, vessels: Capsules, big: np.ndarray,
    mid_v: np.ndarray, taken: list[tuple[np.ndarray, float]], blocked: object,
) -> tuple[Blob, int, bool] | None:
    r = blob.bound
    mean_r = (3 * blob.volume() / (4 * math.pi)) ** (1 / 3)

    def fits(b: Blob, side: int, clipped: bool) -> bool:
        if not _clear(b.centre, b.bound, taken):
            return False
        surf = b.surface()
        s = lungs.side(np.concatenate([b.centre[None], surf]))
        if s[0] != side:
            return False
        if not clipped and not (s[1:] == side).all():
            return False
        if clipped and (s[1:] == side).mean() < 0.45:
            return False
        return not (callable(blocked) and blocked(np.concatenate([b.centre[None], surf])).any())

    bigcaps = Capsules(vessels.a[big], vessels.b[big], vessels.ra[big], vessels.rb[big], vessels.ch[big])
    best: tuple[float, Blob, int] | None = None
    for _attempt in range(60):
        if site == NoduleSite.JUXTAVASCULAR and len(big):
            j = int(big[rng.integers(len(big))])
            rv = float(max(vessels.ra[j], vessels.rb[j]))
            if rv > 4.5:
                continue
            u = vessels.b[j] - vessels.a[j]
            u /= max(float(np.linalg.norm(u)), 1e-9)
            perp = np.cross(u, rng.normal(size=3))
            if float(np.linalg.norm(perp)) < 1e-6:
                continue
            perp /= np.linalg.norm(perp)
            c = mid_v[j] + perp * (rv + mean_r * float(rng.uniform(0.55, 0.85)))
            b = blob.scaled(1.0, c)
            side = int(lungs.side(c[None])[0])
            if side and fits(b, side, False):
                return b, side, False
        elif site == NoduleSite.JUXTAPLEURAL:
            p, s = lungs.sample(rng, 4)
            side = int(s[0])
            ex = lungs.costal_exit(p[0], side, float(rng.uniform(-0.3, 0.3)))
            if ex is None:
                continue
            edge, d = ex
            c = edge - d * mean_r * float(rng.uniform(0.3, 0.75))
            b = blob.scaled(1.0, c)
            if fits(b, side, True):
                return b, side, True
        else:
            p, s = lungs.sample(rng, 4)
            c, side = p[0], int(s[0])
            b = blob.scaled(1.0, c)
            if not fits(b, side, False):
                continue
            score = bigcaps.distance_from(c) - r
            if score > 1.5:
                return b, side, False
            if best is None or score > best[0]:
                best = (score, b, side)
    if best is not None:
        return best[1], best[2], False
    return None
