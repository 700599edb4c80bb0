"""Vectorised rasterisation: tapered capsules, signed-distance shapes and smooth random fields.

Coverage is a fraction in [0, 1] per voxel: an anti-aliased edge in-plane
and, across the slice, the mean over ``nsub`` sub-slice samples (the slab a
thick slice integrates), so a 1 mm vessel still shows in a 5 mm slice.
Everything renders one z-chunk of the grid at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ai.phantoms.geometry import Grid, Pose


class Ch(IntEnum):
    """Capsule channels: one coverage map per material."""

    ART = 0  # pulmonary arteries (and the right heart's outflow)
    VEIN = 1  # pulmonary veins
    AORTA = 2  # systemic arteries
    SYSVEIN = 3  # systemic veins (SVC, brachiocephalic)
    AW_WALL = 4  # airway walls (outer radius)
    AW_LUMEN = 5  # airway lumen (inner radius)
    CORTEX = 6  # cortical bone (outer radius)
    MARROW = 7  # cancellous bone (inner radius)
    CARTILAGE = 8  # costal cartilage
    SOFT = 9  # oesophagus, lymph nodes
    EXCL = 10  # dilated mediastinal structures: never lung


N_CHANNELS = len(Ch)


@dataclass
class Capsules:
    """Tapered capsules: segment ``a -> b`` with radius ``ra`` at ``a`` and ``rb`` at ``b``, one channel each."""

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    ch: np.ndarray

    @staticmethod
    def empty() -> Capsules:
        """No capsules."""
        z = np.zeros((0, 3))
        return Capsules(z, z.copy(), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int16))

    @staticmethod
    def polyline(points: np.ndarray, radii: np.ndarray | float, ch: int) -> Capsules:
        """Consecutive points joined by capsules (radius per point or one for all)."""
        p = np.asarray(points, dtype=float)
        r = np.broadcast_to(np.asarray(radii, dtype=float), (len(p),))
        n = len(p) - 1
        return Capsules(p[:-1].copy(), p[1:].copy(), r[:-1].copy(), r[1:].copy(), np.full(n, int(ch), dtype=np.int16))

    @staticmethod
    def concat(parts: list[Capsules]) -> Capsules:
        """All capsules of ``parts`` together."""
        parts = [p for p in parts if len(p.ra)]
        if not parts:
            return Capsules.empty()
        return Capsules(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "b", "ra", "rb", "ch")))

    def __len__(self) -> int:
        return len(self.ra)

    def with_channel(self, ch: int, grow: float = 0.0, scale: float = 1.0) -> Capsules:
        """The same segments in another channel, radii ``scale * r + grow`` (non-negative)."""
        return Capsules(
            self.a.copy(), self.b.copy(), np.maximum(self.ra * scale + grow, 0.0), np.maximum(self.rb * scale + grow, 0.0),
            np.full(len(self), int(ch), dtype=np.int16),
        )

    def to_patient(self, pose: Pose) -> Capsules:
        """Anatomical to patient coordinates."""
        return Capsules(pose.to_patient(self.a), pose.to_patient(self.b), self.ra, self.rb, self.ch)

    def split(self, max_len: float) -> Capsules:
        """Cut long segments into pieces no longer than ``max_len`` (tighter bounding boxes)."""
        seg = self.b - self.a
        n = np.maximum(1, np.ceil(np.linalg.norm(seg, axis=1) / max_len)).astype(int)
        if (n == 1).all():
            return self
        rep = np.repeat(np.arange(len(n)), n)
        start = np.concatenate([[0], np.cumsum(n)[:-1]])
        j = np.arange(len(rep)) - np.repeat(start, n)
        t0, t1 = j / n[rep], (j + 1) / n[rep]
        a, b, ra, rb = self.a[rep], self.b[rep], self.ra[rep], self.rb[rep]
        return Capsules(
            a + (b - a) * t0[:, None], a + (b - a) * t1[:, None], ra + (rb - ra) * t0, ra + (rb - ra) * t1, self.ch[rep]
        )

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Signed distance ``(N,)`` from points to the union of the capsules (negative inside; ``inf`` far away:
        only points within a capsule's bounding box plus 1 mm are measured)."""
        pts = np.asarray(pts, dtype=np.float32)
        best = np.full(len(pts), np.inf, dtype=np.float32)
        if not len(pts):
            return best
        order = np.argsort(pts[:, 2])
        zs = pts[order, 2]
        for a, b, ra, rb in zip(self.a, self.b, self.ra, self.rb):
            r = max(ra, rb) + 1.0
            lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
            i0, i1 = np.searchsorted(zs, lo[2]), np.searchsorted(zs, hi[2], side="right")
            if i1 <= i0:
                continue
            cand = order[i0:i1]
            p = pts[cand]
            keep = (p[:, 0] >= lo[0]) & (p[:, 0] <= hi[0]) & (p[:, 1] >= lo[1]) & (p[:, 1] <= hi[1])
            if not keep.any():
                continue
            cand, p = cand[keep], p[keep]
            u = (b - a).astype(np.float32)
            l2 = max(float(u @ u), 1e-12)
            d = p - a.astype(np.float32)
            t = np.clip(d @ u * np.float32(1.0 / l2), 0.0, 1.0)
            e = d - t[:, None] * u
            dist = np.sqrt((e * e).sum(1)) - (ra + t * np.float32(rb - ra))
            best[cand] = np.minimum(best[cand], dist)
        return best

    def distance_from(self, p: np.ndarray) -> float:
        """Signed distance from one point to the union of the capsules (vectorised over capsules)."""
        if not len(self):
            return float("inf")
        u = self.b - self.a
        l2 = np.maximum((u * u).sum(1), 1e-12)
        d = np.asarray(p, dtype=float)[None] - self.a
        t = np.clip((d * u).sum(1) / l2, 0.0, 1.0)
        e = d - t[:, None] * u
        return float((np.sqrt((e * e).sum(1)) - (self.ra + t * (self.rb - self.ra))).min())


def _ladder() -> np.ndarray:
    steps = [1, 2, 3]
    m = 4
    while m < 4096:
        steps += [m, m * 5 // 4, m * 3 // 2, m * 7 // 4]
        m *= 2
    return np.asarray(sorted(set(steps)))


_LADDER = _ladder()


def sub_samples(grid: Grid) -> int:
    """Odd number of sub-slice samples per slice: about one per in-plane pixel (1 mm at most) of slab."""
    q = grid.dz / min(grid.px, 1.25)
    return int(min(7, 2 * int(q // 2) + 1))


def sub_offsets(grid: Grid, nsub: int) -> np.ndarray:
    """Offsets (mm) of the sub-slice samples from the slice centre: symmetric, 0 in the middle."""
    return ((np.arange(nsub) + 0.5) / nsub - 0.5) * grid.dz


class CapsuleRaster:
    """Render a capsule set into the channels of z-chunks of a grid.

    Parameters
    ----------
    caps : Capsules
        In patient coordinates.
    grid : Grid
        The render grid.
    budget : int
        Most voxel samples evaluated at once (memory bound).
    """

    def __init__(self, caps: Capsules, grid: Grid, budget: int = 1_500_000) -> None:
        self.grid = grid
        self.nsub = sub_samples(grid)
        self.offs = sub_offsets(grid, self.nsub).astype(np.float32)
        self.w = float(grid.px)
        self.budget = budget
        caps = caps.split(max(6.0, 4 * grid.px))
        keep = np.maximum(caps.ra, caps.rb) > 0.05
        self.c = Capsules(caps.a[keep], caps.b[keep], caps.ra[keep], caps.rb[keep], caps.ch[keep])
        c = self.c
        rmax = np.maximum(c.ra, c.rb)[:, None] + 0.5 * self.w
        lo = (np.minimum(c.a, c.b) - rmax - grid.origin) / np.array([grid.px, grid.py, grid.dz])
        hi = (np.maximum(c.a, c.b) + rmax - grid.origin) / np.array([grid.px, grid.py, grid.dz])
        self.x0 = np.clip(np.ceil(lo[:, 0]), 0, grid.nx).astype(np.int64)
        self.x1 = np.clip(np.floor(hi[:, 0]) + 1, 0, grid.nx).astype(np.int64)
        self.y0 = np.clip(np.ceil(lo[:, 1]), 0, grid.ny).astype(np.int64)
        self.y1 = np.clip(np.floor(hi[:, 1]) + 1, 0, grid.ny).astype(np.int64)
        self.z0 = np.clip(np.ceil(lo[:, 2] - 0.5), 0, grid.nz).astype(np.int64)
        self.z1 = np.clip(np.floor(hi[:, 2] + 0.5) + 1, 0, grid.nz).astype(np.int64)

    def render(self, k0: int, k1: int, out: np.ndarray) -> None:
        """Max-accumulate coverage of slices ``k0..k1`` into ``out`` (``[N_CHANNELS, k1-k0, ny, nx]`` float32)."""
        z0, z1 = np.maximum(self.z0, k0), np.minimum(self.z1, k1)
        sel = np.flatnonzero((z1 > z0) & (self.y1 > self.y0) & (self.x1 > self.x0))
        if not len(sel):
            return
        sz = np.searchsorted(_LADDER, z1[sel] - z0[sel])
        sy = np.searchsorted(_LADDER, self.y1[sel] - self.y0[sel])
        sx = np.searchsorted(_LADDER, self.x1[sel] - self.x0[sel])
        key = (sz * 64 + sy) * 64 + sx
        order = np.argsort(key, kind="stable")
        sel, key = sel[order], key[order]
        bounds = np.flatnonzero(np.diff(key)) + 1
        flat = out.reshape(-1)
        for group in np.split(sel, bounds):
            g = group[0]
            wz = int(_LADDER[np.searchsorted(_LADDER, z1[g] - z0[g])])
            wy = int(_LADDER[np.searchsorted(_LADDER, self.y1[g] - self.y0[g])])
            wx = int(_LADDER[np.searchsorted(_LADDER, self.x1[g] - self.x0[g])])
            per = wz * self.nsub * wy * wx
            step = max(1, self.budget // per)
            for s in range(0, len(group), step):
                idx = group[s:s + step]
                self._group(idx, z0[idx], z1[idx], (wz, wy, wx), k0, k1, flat)

    def _group(self, idx: np.ndarray, z0: np.ndarray, z1: np.ndarray, win: tuple[int, int, int], k0: int, k1: int,
               flat: np.ndarray) -> None:
        g, c = self.grid, self.c
        wz, wy, wx = win
        kz = z0[:, None] + np.arange(wz)[None]
        ky = self.y0[idx][:, None] + np.arange(wy)[None]
        kx = self.x0[idx][:, None] + np.arange(wx)[None]
        vz, vy, vx = kz < z1[:, None], ky < self.y1[idx][:, None], kx < self.x1[idx][:, None]
        a = c.a[idx].astype(np.float32)
        u = (c.b[idx] - c.a[idx]).astype(np.float32)
        inv = 1.0 / np.maximum((u * u).sum(1), 1e-9)
        ra, dr = c.ra[idx].astype(np.float32), (c.rb[idx] - c.ra[idx]).astype(np.float32)
        dx = (g.x0 + kx * g.px).astype(np.float32) - a[:, 0:1]  # (S, wx)
        dy = (g.y0 + ky * g.py).astype(np.float32) - a[:, 1:2]  # (S, wy)
        dz = ((g.z0 + kz * g.dz).astype(np.float32) - a[:, 2:3])[:, :, None] + self.offs[None, None]  # (S, wz, n)
        sh = (len(idx), 1, 1, 1, 1)
        X, Y, Z = dx[:, None, None, None, :], dy[:, None, None, :, None], dz[:, :, :, None, None]
        ux, uy, uz = u[:, 0].reshape(sh), u[:, 1].reshape(sh), u[:, 2].reshape(sh)
        t = np.clip((X * ux + Y * uy + Z * uz) * inv.reshape(sh).astype(np.float32), 0.0, 1.0)
        ex, ey, ez = X - t * ux, Y - t * uy, Z - t * uz
        d = np.sqrt(ex * ex + ey * ey + ez * ez)
        r = ra.reshape(sh) + t * dr.reshape(sh)
        cov = np.clip((r - d) * (1.0 / self.w) + 0.5, 0.0, 1.0).mean(axis=2)  # (S, wz, wy, wx)
        ok = (cov > 0.004) & vz[:, :, None, None] & vy[:, None, :, None] & vx[:, None, None, :]
        if not ok.any():
            return
        ch = c.ch[idx].astype(np.int64)[:, None, None, None]
        lin = ((ch * (k1 - k0) + (kz - k0)[:, :, None, None]) * g.ny + ky[:, None, :, None]) * g.nx + kx[:, None, None, :]
        np.maximum.at(flat, lin[ok], cov[ok])


SDF = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def offset(sdf: SDF, mm: float) -> SDF:
    """The shape grown by ``mm`` (shrunk if negative)."""

    def grown(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return sdf(x, y, z) + np.float32(mm)

    return grown


def sdf_coverage(
    sdf: SDF, lo: np.ndarray, hi: np.ndarray, grid: Grid, k0: int, k1: int
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Coverage of a shape given by a signed distance (positive inside) within a patient box, over slices ``k0..k1``.

    Parameters
    ----------
    sdf : callable
        ``sdf(x, y, z)`` on broadcastable patient coordinates, mm.
    lo, hi : ndarray
        Patient bounding box of the shape.
    grid : Grid
        The render grid.
    k0, k1 : int
        The chunk's slices.

    Returns
    -------
    (slices, coverage, inside) or None
        Index slices into the chunk ``[z, y, x]``, the coverage (float32) and
        whether each voxel centre is inside; None where the box misses the chunk.
    """
    nsub = sub_samples(grid)
    w = grid.px
    ilo = np.floor((np.asarray(lo) - w - grid.origin) / np.array([grid.px, grid.py, grid.dz]))
    ihi = np.ceil((np.asarray(hi) + w - grid.origin) / np.array([grid.px, grid.py, grid.dz]))
    i0, i1 = int(max(ilo[0], 0)), int(min(ihi[0] + 1, grid.nx))
    j0, j1 = int(max(ilo[1], 0)), int(min(ihi[1] + 1, grid.ny))
    c0, c1 = int(max(ilo[2], k0)), int(min(ihi[2] + 1, k1))
    if i1 <= i0 or j1 <= j0 or c1 <= c0:
        return None
    x = (grid.x0 + np.arange(i0, i1) * grid.px).astype(np.float32)[None, None, :]
    y = (grid.y0 + np.arange(j0, j1) * grid.py).astype(np.float32)[None, :, None]
    zc = grid.z0 + np.arange(c0, c1) * grid.dz
    z = (zc[:, None] + sub_offsets(grid, nsub)[None]).reshape(-1).astype(np.float32)[:, None, None]
    d = sdf(x, y, z).reshape(c1 - c0, nsub, j1 - j0, i1 - i0)
    cov = np.clip(d * (1.0 / w) + 0.5, 0.0, 1.0).mean(axis=1, dtype=np.float32)
    inside = d[:, nsub // 2] >= 0
    return (slice(c0 - k0, c1 - k0), slice(j0, j1), slice(i0, i1)), cov, inside


class SmoothField:
    """A smooth random field (unit variance before interpolation) on the render grid, by chunks.

    Values on a coarse lattice of ``cell`` mm, interpolated linearly (element-wise, so the result
    does not depend on the BLAS or its thread count).
    """

    def __init__(self, grid: Grid, rng: np.random.Generator, cell: float) -> None:
        self.grid = grid
        gx = int(np.ceil(grid.nx * grid.px / cell)) + 2
        gy = int(np.ceil(grid.ny * grid.py / cell)) + 2
        gz = int(np.ceil(grid.nz * grid.dz / cell)) + 2
        coarse = rng.standard_normal((gz, gy, gx)).astype(np.float32)
        iy, ty = self._taps(grid.ny, grid.py / cell, gy)
        ix, tx = self._taps(grid.nx, grid.px / cell, gx)
        rows = coarse[:, iy, :] * (1 - ty)[None, :, None] + coarse[:, iy + 1, :] * ty[None, :, None]
        self.planes = rows[:, :, ix] * (1 - tx)[None, None, :] + rows[:, :, ix + 1] * tx[None, None, :]
        self.fz = np.arange(grid.nz) * grid.dz / cell + 0.5

    @staticmethod
    def _taps(n: int, step: float, g: int) -> tuple[np.ndarray, np.ndarray]:
        f = np.arange(n) * step + 0.5
        i = np.clip(np.floor(f).astype(int), 0, g - 2)
        return i, (f - i).astype(np.float32)

    def chunk(self, k0: int, k1: int) -> np.ndarray:
        """Field values ``[k1-k0, ny, nx]``."""
        f = self.fz[k0:k1]
        i = np.clip(np.floor(f).astype(int), 0, len(self.planes) - 2)
        t = (f - i).astype(np.float32)[:, None, None]
        return self.planes[i] * (1 - t) + self.planes[i + 1] * t


@dataclass
class Chunk:
    """Slices ``k0..k1`` of the grid with their coordinates: patient ``x (1, 1, nx)``, ``y (1, ny, 1)``,
    ``z (n, 1, 1)`` and anatomical ``ax, ay (1, ny, nx)`` (the anatomical z is the patient z)."""

    grid: Grid
    pose: Pose
    k0: int
    k1: int
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    ax: np.ndarray
    ay: np.ndarray

    @staticmethod
    def make(grid: Grid, pose: Pose, k0: int, k1: int) -> Chunk:
        """Coordinates of one chunk."""
        x = grid.xs()[None, None, :]
        y = grid.ys()[None, :, None]
        ax, ay = pose.plane_to_anatomy(x, y)
        return Chunk(grid, pose, k0, k1, x, y, grid.zs(k0, k1)[:, None, None], ax, ay)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(k1 - k0, ny, nx)``."""
        return (self.k1 - self.k0, self.grid.ny, self.grid.nx)

    def cover(self, sdf: SDF, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
        """:func:`sdf_coverage` of an anatomical-frame shape in this chunk (``lo, hi``: its anatomical box)."""
        pose = self.pose
        corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]])
        pc = pose.to_patient(np.concatenate([corners, np.zeros((4, 1))], 1))
        plo = np.array([pc[:, 0].min(), pc[:, 1].min(), lo[2]])
        phi = np.array([pc[:, 0].max(), pc[:, 1].max(), hi[2]])

        def in_patient(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            ax, ay = pose.plane_to_anatomy(x, y)
            return sdf(ax, ay, z)

        return sdf_coverage(in_patient, plo, phi, self.grid, self.k0, self.k1)


def paint(hu: np.ndarray, where: tuple[slice, slice, slice], cov: np.ndarray, value: float | np.ndarray) -> None:
    """Blend ``value`` into ``hu`` by coverage: ``hu += (value - hu) * cov`` over ``where`` (a slice box)."""
    h = hu[where]
    tmp = np.subtract(value, h, dtype=np.float32)
    tmp *= cov
    h += tmp
    if not np.shares_memory(h, hu):
        hu[where] = h
