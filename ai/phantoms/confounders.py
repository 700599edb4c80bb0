"""Confounders a nodule detector must not call nodules: emphysema (low-density patches, bullae),
consolidation (wedges on the pleura) and plate-like atelectasis, dependent atelectasis, and pleural
effusion (dependent fluid at the base, outside the lung label, with a compressed-lung rim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ai.phantoms.anatomy import Anatomy, smoothstep
from ai.phantoms.geometry import rotation_to
from ai.phantoms.lesions import Blob
from ai.phantoms.lungs import LungQuery


@dataclass(frozen=True)
class Wedge:
    """A cone from ``apex`` along unit ``axis``: length ``length``, half-angle ``angle`` (radians)."""

    apex: np.ndarray
    axis: np.ndarray
    length: float
    angle: float

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance, positive inside."""
        dx, dy, dz = x - self.apex[0], y - self.apex[1], z - self.apex[2]
        u = self.axis.astype(np.float32)
        t = dx * u[0] + dy * u[1] + dz * u[2]
        ex, ey, ez = dx - t * u[0], dy - t * u[1], dz - t * u[2]
        q = np.sqrt(ex * ex + ey * ey + ez * ez)
        return np.minimum(np.minimum((t * math.tan(self.angle) - q) * math.cos(self.angle), self.length - t), t)

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounding box (lo, hi)."""
        r = self.length * math.tan(self.angle)
        ends = np.stack([self.apex, self.apex + self.axis * self.length])
        return ends.min(0) - r, ends.max(0) + r

    @property
    def centre(self) -> np.ndarray:
        """Middle of the cone's axis."""
        return self.apex + self.axis * self.length * 0.6

    @property
    def bound(self) -> float:
        """Radius about :attr:`centre` that holds the cone."""
        return float(self.length * 0.7 + self.length * math.tan(self.angle))


@dataclass
class Effusion:
    """Dependent pleural fluid on one side: up to ``thickness`` mm at the base, tapering to ``top_z``."""

    side: int  # -1 right, +1 left
    thickness: float
    top_z: float
    rim: float  # compressed lung next to the fluid, mm


@dataclass
class Confounders:
    """What this scan carries besides nodules."""

    emphysema: list[Blob] = field(default_factory=list)
    emphysema_hu: float = -975.0
    bullae: list[Blob] = field(default_factory=list)
    dense: list[tuple[str, Blob | Wedge, float]] = field(default_factory=list)  # kind, shape, HU
    effusions: list[Effusion] = field(default_factory=list)
    effusion_hu: float = 10.0
    dependent: tuple[float, float] = (0.0, -400.0)  # dependent atelectasis band thickness (mm), HU

    @property
    def present(self) -> list[str]:
        """Names of the confounders present."""
        out = []
        if self.emphysema or self.bullae:
            out.append("emphysema")
        out += sorted({k for k, _, _ in self.dense})
        if self.effusions:
            out.append("effusion")
        if self.dependent[0] > 0:
            out.append("dependent atelectasis")
        return out

    def avoid(self) -> list[tuple[np.ndarray, float]]:
        """Spheres nodules must keep clear of."""
        return [(s.centre, s.bound) for _, s, _ in self.dense] + [(b.centre, b.bound) for b in self.bullae]

    def blocked(self, anat: Anatomy) -> object:
        """A ``points -> bool`` test for places inside an effusion (or its rim, with a margin)."""

        def test(pts: np.ndarray) -> np.ndarray:
            x, y, z = (pts[:, i] for i in range(3))
            out = np.zeros(len(pts), bool)
            for e in self.effusions:
                depth, w = dependent_depth(anat, x, y, z, e.side, e.thickness, e.top_z)
                out |= (depth < w + e.rim + 4.0) & (x * e.side > 0)
            return out

        return test


def dependent_depth(anat: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: int, thickness: float,
                    top_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth (mm) of each point from the cavity wall, and the dependent layer's local thickness there."""
    q = np.maximum(anat.cavity_q(x, y, z), 1e-6)
    rho = np.sqrt(x * x + y * y) + 1e-3
    depth = rho * (1.0 / np.sqrt(q) - 1.0)
    cosd = anat.gravity * y / rho
    lateral = np.clip((cosd + 0.25) / 1.25, 0.0, 1.0) ** 0.6
    zb = -anat.lung_height
    height = np.clip((top_z - z) / max(top_z - zb, 1.0), 0.0, 1.0) ** 0.6
    return depth, thickness * lateral * height


def draw_confounders(rng: np.random.Generator, anat: Anatomy, lungs: LungQuery, enabled: bool = True) -> Confounders:
    """Draw the confounders of one scan (most scans have none or one or two)."""
    conf = Confounders()
    if not enabled:
        return conf
    h = anat.lung_height
    if rng.random() < 0.2:  # emphysema, upper-zone predominant
        p, _ = lungs.sample(rng, int(rng.integers(15, 90)), zone=(0.0, 0.6))
        for c in p[: int(rng.integers(15, 150))]:
            r = float(rng.uniform(2.0, 7.0))
            conf.emphysema.append(Blob(c, np.eye(3), np.array([r, r * rng.uniform(0.7, 1), r * rng.uniform(0.7, 1)]),
                                       np.zeros((0, 3)), np.zeros(0)))
        conf.emphysema_hu = float(rng.uniform(-995, -955))
        for _ in range(int(rng.integers(0, 4))):
            p, s = lungs.sample(rng, 4, zone=(0.0, 0.45))
            ex = lungs.costal_exit(p[0], int(s[0]), float(rng.uniform(0.0, 0.6)))
            if ex is not None:
                r = float(rng.uniform(7, 24))
                conf.bullae.append(Blob(ex[0] - ex[1] * r * 0.8, np.eye(3), np.array([r, r, r * rng.uniform(0.7, 1)]),
                                        np.zeros((0, 3)), np.zeros(0)))
    if rng.random() < 0.14:  # consolidation: wedges based on the pleura
        for _ in range(int(rng.integers(1, 3))):
            p, s = lungs.sample(rng, 4)
            ex = lungs.costal_exit(p[0], int(s[0]), float(rng.uniform(-0.4, 0.4)))
            if ex is None:
                continue
            depth = float(rng.uniform(18, 50))
            apex = ex[0] - ex[1] * depth
            conf.dense.append(("consolidation", Wedge(apex, ex[1], depth + 12.0, float(rng.uniform(0.3, 0.6))),
                               float(rng.uniform(-40, 50))))
    if rng.random() < 0.2:  # plate-like atelectasis, mostly in the lower zones
        p, _ = lungs.sample(rng, 6, zone=(0.5, 0.92))
        for c in p[: int(rng.integers(1, 4))]:
            ang = rng.uniform(0, 2 * math.pi)
            long_ax = np.array([math.cos(ang), math.sin(ang), rng.uniform(-0.3, 0.3)])
            rot = rotation_to(long_ax)[:, [2, 0, 1]]
            tilt = rotation_to(np.array([rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35), 1.0]))
            rot = tilt @ rot if abs(float(np.dot(tilt[:, 2], rot[:, 0]))) < 0.5 else rot
            axes = np.array([rng.uniform(12, 35), rng.uniform(1.2, 3.0), rng.uniform(5, 12)])
            conf.dense.append(("atelectasis", Blob(c, rot, axes, np.zeros((0, 3)), np.zeros(0)), float(rng.uniform(-60, 40))))
    if rng.random() < 0.15:  # pleural effusion, one side or both
        sides = [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))]
        for sd in sides:
            conf.effusions.append(Effusion(sd, float(rng.uniform(10, 55)), float(anat.dome_top[0 if sd < 0 else 1]) + float(rng.uniform(20, 0.35 * h)),
                                           float(rng.uniform(2.0, 7.0))))
        conf.effusion_hu = float(rng.uniform(0, 20))
    if rng.random() < 0.2:
        conf.dependent = (float(rng.uniform(2.0, 7.0)), float(rng.uniform(-650, -250)))
    return conf


def effusion_masks(conf: Confounders, anat: Anatomy, ax: np.ndarray, ay: np.ndarray, z: np.ndarray,
                   lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluid, compressed-lung rim and dependent-atelectasis masks of a chunk (within ``lung``)."""
    fluid = np.zeros(lung.shape, bool)
    rim = np.zeros(lung.shape, bool)
    for e in conf.effusions:
        depth, w = dependent_depth(anat, ax, ay, z, e.side, e.thickness, e.top_z)
        mine = lung & (ax * e.side > 0)
        fluid |= mine & (depth < w)
        rim |= mine & (depth >= w) & (depth < w + e.rim * smoothstep(0.0, 3.0, w))
    dep = np.zeros(lung.shape, bool)
    if conf.dependent[0] > 0:
        top = -0.45 * anat.lung_height
        for sd in (-1, 1):
            depth, w = dependent_depth(anat, ax, ay, z, sd, conf.dependent[0], top)
            dep |= lung & (ax * sd > 0) & (depth < w)
        dep &= ~fluid & ~rim
    return fluid, rim, dep
