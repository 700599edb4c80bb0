"""Bones: ribs curving around the thorax (with costal cartilage), the vertebral column, sternum,
scapulae, clavicles and, with the arms down, the humeri.

Long bones are capsules with a cortical shell (:attr:`Ch.CORTEX`) around
cancellous bone (:attr:`Ch.MARROW`); vertebral bodies and discs are
z-aligned elliptic cylinders (:class:`Cylinder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ai.phantoms.anatomy import Anatomy
from ai.phantoms.raster import Capsules, Ch


@dataclass(frozen=True)
class Cylinder:
    """A z-aligned elliptic cylinder: centre (x, y, z), half-axes (rx, ry), half-height ``hh``."""

    centre: tuple[float, float, float]
    rx: float
    ry: float
    hh: float

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance, positive inside (anatomical coordinates)."""
        cx, cy, cz = self.centre
        q = ((x - cx) / self.rx) ** 2 + ((y - cy) / self.ry) ** 2
        return np.minimum((1.0 - np.sqrt(q)) * min(self.rx, self.ry), self.hh - np.abs(z - cz))

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi)."""
        c = np.asarray(self.centre)
        e = np.array([self.rx, self.ry, self.hh])
        return c - e, c + e


@dataclass
class Skeleton:
    """Capsules of the long bones and cylinders of the vertebral bodies and discs."""

    caps: Capsules
    bodies: list[Cylinder]
    discs: list[Cylinder]
    cortex_mm: float


def _bone(points: np.ndarray, r: np.ndarray | float, cortex: float) -> list[Capsules]:
    outer = Capsules.polyline(points, r, Ch.CORTEX)
    return [outer, outer.with_channel(Ch.MARROW, grow=-cortex)]


def _rib_ring(anat: Anatomy, z: np.ndarray, phi: np.ndarray, side: float, out: float) -> np.ndarray:
    """Points on the rib cage (cavity boundary pushed out by ``out`` mm) at angle ``phi`` from posterior."""
    a, b = anat.cavity_axes(z)
    bb = np.where(np.cos(phi) > 0, b * 1.04, b * 0.96)
    return np.stack([side * (a + out) * np.sin(phi), (bb + out) * np.cos(phi), z], 1)


def build_skeleton(rng: np.random.Generator, anat: Anatomy, top_z: float, bottom_z: float) -> Skeleton:
    """Lay out the bones of one patient over the scan range ``bottom_z..top_z`` (anatomical z)."""
    k = anat.scale
    parts: list[Capsules] = []
    cortex = float(rng.uniform(1.0, 1.6))
    hv = (anat.lung_height + 22.0) / 11.5  # vertebral level height
    z_t1 = 14.0 * k
    # Ribs 1-12 on each side.
    for i in range(1, 13):
        zp = z_t1 - (i - 0.6) * hv
        if zp < bottom_z - 120 or zp > top_z + 40:
            continue
        r = (3.6 if i <= 2 else float(rng.uniform(4.2, 5.4))) * k
        drop = (62.0 + 4.0 * i) * k * float(rng.uniform(0.85, 1.15))
        end = math.pi * (0.93 if i <= 7 else (0.82 if i <= 10 else 0.55 + 0.04 * (12 - i)))
        cart = math.pi * (0.74 if i <= 7 else 0.66) if i <= 10 else 9.0
        for side in (-1.0, 1.0):
            a0, _ = anat.cavity_axes(np.asarray([zp]))
            phi0 = math.asin(min(0.9, (anat.spine_r + 14.0 * k) / float(a0[0])))
            phi = np.linspace(phi0, end, 20)
            frac = (phi - phi0) / (math.pi - phi0)
            z = zp + 4.0 * np.sin(frac * math.pi) * k - drop * frac**1.35
            ring = _rib_ring(anat, z, phi, side, anat.wall * 0.5)
            head = np.array([[side * (anat.spine_r + 3.0), float(anat.spine_yz(np.asarray(zp))) + 2.0, zp]])
            path = np.concatenate([head, ring])
            bony = np.concatenate([[True], phi <= cart])
            for dz in (-0.45 * r, 0.45 * r):  # a flat rib: two overlapping rods, taller than thick
                pz = path + np.array([0.0, 0.0, dz])
                parts += _bone(pz[bony], r * 0.62, min(cortex, r * 0.28))
                if (~bony).any():
                    j = int(np.argmin(bony)) - 1
                    parts.append(Capsules.polyline(pz[j:], r * 0.58, Ch.CARTILAGE))
    # Vertebral column: bodies, discs and posterior elements.
    bodies: list[Cylinder] = []
    discs: list[Cylinder] = []
    disc_h = float(rng.uniform(3.5, 6.0)) * k
    v = -3
    while True:
        zc = z_t1 - v * hv
        v += 1
        if zc > top_z + hv:
            continue
        if zc < bottom_z - hv:
            break
        yv = float(anat.spine_yz(np.asarray(zc)))
        rx = anat.spine_r * (1 + 0.02 * max(v, 0))
        ry = rx * 0.82
        bodies.append(Cylinder((0.0, yv, zc), rx, ry, (hv - disc_h) / 2))
        discs.append(Cylinder((0.0, yv, zc), rx * 0.97, ry * 0.97, hv / 2 + 0.5))
        cy = yv + ry + 8.0 * k  # spinal canal centre
        ring = np.array([[-0.55 * rx, yv + 0.7 * ry, zc], [-9.0 * k, cy + 1, zc], [-6.0 * k, cy + 9 * k, zc],
                         [0.0, cy + 11 * k, zc - 2], [6.0 * k, cy + 9 * k, zc], [9.0 * k, cy + 1, zc], [0.55 * rx, yv + 0.7 * ry, zc]])
        parts += _bone(ring, 3.4 * k, cortex)
        parts += _bone(np.array([[0.0, cy + 11 * k, zc - 2], [0.0, cy + 36 * k, zc - 16 * k]]), np.array([3.8, 2.6]) * k, cortex)
        for s in (-1.0, 1.0):
            parts += _bone(np.array([[s * 8.0 * k, cy + 2, zc + 1], [s * (rx + 16.0 * k), cy + 8 * k, zc + 4]]),
                           np.array([4.2, 3.2]) * k, cortex)
    # Sternum: manubrium and body, flat, in front of the cavity.
    zs = np.linspace(-0.06 * anat.lung_height, -0.72 * anat.lung_height, 12)
    _, b = anat.cavity_axes(zs)
    ys = -(b * 0.96 + anat.wall * 0.55)
    for dx in (-1.0, 0.0, 1.0):
        w = np.where(zs > -0.22 * anat.lung_height, 14.0, 9.0) * k
        parts += _bone(np.stack([dx * w, ys, zs], 1), 6.0 * k, cortex)
    a_top, b_top = anat.cavity_axes(np.asarray([top_z, 10.0]))
    # Clavicles: sternal end to the acromion.
    z_cl = float(rng.uniform(0.0, 16.0)) * k
    for s in (-1.0, 1.0):
        p = np.array([[s * 16.0 * k, -b_top[1] - 6.0, z_cl], [s * 0.55 * a_top[1], -b_top[1] - 12.0, z_cl + 6],
                      [s * (a_top[1] + 18.0), -0.1 * b_top[1], z_cl + 14]])
        parts += _bone(p, 6.5 * k, cortex)
    # Scapulae: a curved plate behind the ribs, spine of the scapula, a thick lateral border.
    lat_shift = 0.0 if anat.arms_down else 0.25
    for s in (-1.0, 1.0):
        z_top, z_bot = 18.0 * k, -0.5 * anat.lung_height
        for j in np.linspace(0.0, 1.0, 24):
            zz = np.linspace(z_top, z_bot + 30 * j, 8)
            phi0 = 0.42 + lat_shift + 0.6 * j
            phi = phi0 + (0.62 + lat_shift - phi0) * ((zz - z_top) / (z_bot - z_top)) ** 2 * 0.85
            pts = _rib_ring(anat, zz, phi, s, anat.wall + 12.0 * k)
            parts += _bone(pts, (2.4 if j < 0.95 else 4.5) * k, 0.9)
        zz = np.linspace(-0.12 * anat.lung_height, 22.0 * k, 6)
        pts = _rib_ring(anat, zz, np.linspace(0.45 + lat_shift, 1.05 + lat_shift, 6), s, anat.wall + 22.0 * k)
        parts += _bone(pts, 5.0 * k, cortex)
    # Humeri with the arms down.
    if anat.arms_down:
        for s in (-1.0, 1.0):
            xa = s * anat.arm[0]
            ya = anat.arm[1]
            zz = np.linspace(24.0 * k, bottom_z - 60.0, 6)
            rh = np.array([21.0, 13.0, 11.0, 10.5, 10.5, 10.0]) * k
            pts = np.stack([xa - s * np.linspace(8, 0, 6), ya + np.linspace(0, 10, 6), zz], 1)
            parts += _bone(pts, rh, 3.0)
    return Skeleton(Capsules.concat(parts), bodies, discs, cortex)
