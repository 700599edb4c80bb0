"""Findings that are not nodules but can look like them: the false-positive bait.

- emphysema: centrilobular lucencies (upper zones) and paraseptal bullae;
- plate-like atelectasis (thin dense discs) and a dependent consolidation
  (which keeps its air bronchograms: airways are painted after it);
- a small dependent pleural effusion (carved out of the lung labels, see
  :mod:`.anatomy`);
- mediastinal and hilar lymph nodes, some calcified.

None of these carries label 3; consolidation and atelectasis stay lung.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import Effusion, LymphNode
from .frame import Frame
from .layout import Layout
from .lungmap import LungMap
from .raster import splat_spheres


@dataclass
class Confounders:
    """What a case carries besides nodules."""

    effusion: Effusion | None
    lymph_nodes: list[LymphNode]
    emphysema: int  # 0 none, else the number of centrilobular lucencies
    bullae: int
    atelectasis: int  # plate-like strips
    consolidation: bool
    notes: dict[str, object] = field(default_factory=dict)

    def as_meta(self) -> dict[str, object]:
        """JSON-able summary for the case's meta."""
        return {
            "effusion": None if self.effusion is None else {
                "side": "right" if self.effusion.side < 0 else "left", "depth_mm": self.effusion.depth,
                "top_mm": self.effusion.top, "hu": self.effusion.hu},
            "lymph_nodes": len(self.lymph_nodes),
            "calcified_lymph_nodes": sum(1 for n in self.lymph_nodes if n.hu > 200),
            "emphysema_lucencies": self.emphysema, "bullae": self.bullae,
            "atelectasis_strips": self.atelectasis, "consolidation": self.consolidation,
        }


def draw_confounders(r: np.random.Generator, L: Layout) -> Confounders:
    """Draw which confounders a case has and the A-frame ones (effusion, lymph nodes).

    Parameters
    ----------
    r : numpy.random.Generator
        The case's confounder stream.
    L : Layout
        Anatomy (carina and hila for the lymph nodes).

    Returns
    -------
    Confounders
    """
    eff = None
    if r.random() < 0.2:
        eff = Effusion(int(r.choice([-1, 1])), float(r.uniform(8, 28)), float(r.uniform(45, 100)), float(r.uniform(0, 22)))
    x_t, y_t, r_t = L.trachea
    c = L.carina_z
    sites = [
        (x_t, y_t + 14, c - 24), (x_t - r_t - 10, y_t - 8, c + 16), (x_t + 20, y_t - 10, c + 6),
        tuple(L.bronchus_roots["right"] + [4, -8, -8]), tuple(L.bronchus_roots["left"] + [-4, -8, -6]),
        (x_t - r_t - 6, y_t - 2, c + 36),
    ]
    nodes = []
    for s in sites:
        if r.random() < 0.45:
            calc = r.random() < 0.5
            hu = float(r.uniform(300, 1100)) if calc else float(r.uniform(25, 50))
            nodes.append(LymphNode(np.array(s, float) + r.uniform(-3, 3, 3), float(r.uniform(2.5, 6.5)), hu))
    emph = int(r.integers(40, 220)) if r.random() < 0.22 else 0
    bullae = int(r.integers(1, 5)) if emph and r.random() < 0.6 else 0
    atel = int(r.integers(1, 4)) if r.random() < 0.3 else 0
    cons = bool(r.random() < 0.15)
    return Confounders(eff, nodes, emph, bullae, atel, cons)


def _composite(hu: np.ndarray, labels: np.ndarray, buf: np.ndarray, value: float | np.ndarray,
               box: tuple[slice, slice, slice], how: str = "mix") -> None:
    b = buf[box]
    m = (labels[box] == 1) | (labels[box] == 2)
    h = hu[box]
    f = np.where(m, b, 0)
    if how == "min":
        hu[box] = np.minimum(h, h + f * (value - h))
    else:
        hu[box] = h + f * (value - h)


def _box(fr: Frame, pts: np.ndarray, pad: float) -> tuple[slice, slice, slice]:
    lo = np.floor((pts.min(0) - pad) / fr.spacing).astype(int)
    hi = np.ceil((pts.max(0) + pad) / fr.spacing).astype(int) + 1
    lo = np.maximum(lo, 0)
    return (slice(lo[2], min(hi[2], fr.nz)), slice(lo[1], min(hi[1], fr.ny)), slice(lo[0], min(hi[0], fr.nx)))


def _plate(r: np.random.Generator, centre: np.ndarray, size: float, thick: float) -> np.ndarray:
    """Points filling a thin, mostly horizontal disc with a wavy outline."""
    n = np.array([r.normal(0, 0.25), r.normal(0, 0.25), 1.0])
    n /= np.linalg.norm(n)
    u = np.cross(n, [1.0, 0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    g = np.arange(-size, size + 1e-6, max(thick * 0.5, 0.8))
    a, b = np.meshgrid(g, g * 0.45)
    keep = (a / size) ** 2 + (b / (0.45 * size)) ** 2 < 1 + 0.2 * np.sin(3 * np.arctan2(b, a) + r.uniform(0, 6))
    a, b = a[keep], b[keep]
    return centre + a[:, None] * u + b[:, None] * v + (0.15 * size * np.sin(a / size * 3))[:, None] * n


def paint_confounders(hu: np.ndarray, labels: np.ndarray, fr: Frame, conf: Confounders, lungs: LungMap,
                      r: np.random.Generator, before_vessels: bool) -> None:
    """Paint the in-lung confounders into ``hu`` (canonical V grid) in place.

    Parameters
    ----------
    hu, labels : ndarray
        Volume being built and its lung labels.
    fr : Frame
        Grid geometry.
    conf : Confounders
        What to paint.
    lungs : LungMap
        Where to put things.
    r : numpy.random.Generator
        Random stream (the caller passes a different one to each of the two calls).
    before_vessels : bool
        Emphysema goes before the vessels; atelectasis and consolidation after.
    """
    width = fr.pixel
    if before_vessels:
        if conf.emphysema:
            top = np.linspace(0, 1, lungs.side.shape[0])[:, None, None] ** 2
            for side in (1, 2):
                pts = lungs.sample(r, conf.emphysema // 2, side, lo=3.0, weight=top + 1e-3)
                rad = r.uniform(1.0, 4.5, len(pts))
                if len(pts):
                    buf = np.zeros(hu.shape, np.float32)
                    splat_spheres(buf, fr.spacing, pts, rad, width)
                    _composite(hu, labels, buf, -995.0, _box(fr, pts, 6), "min")
        for _ in range(conf.bullae):
            side = int(r.integers(1, 3))
            rad = float(r.uniform(6, 16))
            pts = lungs.sample(r, 1, side, lo=0.5 * rad, hi=rad)
            if len(pts):
                buf = np.zeros(hu.shape, np.float32)
                splat_spheres(buf, fr.spacing, pts, np.array([rad]), width)
                _composite(hu, labels, buf, -1000.0, _box(fr, pts, rad + 3), "min")
        return
    low = np.clip(1 - np.linspace(0, 1, lungs.side.shape[0]), 0, 1)[:, None, None] ** 3
    for _ in range(conf.atelectasis):
        side = int(r.integers(1, 3))
        c = lungs.sample(r, 1, side, lo=12.0, weight=low + 1e-4)
        if not len(c):
            continue
        thick = float(r.uniform(1.8, 4.0))
        pts = _plate(r, c[0], float(r.uniform(14, 34)), thick)
        buf = np.zeros(hu.shape, np.float32)
        splat_spheres(buf, fr.spacing, pts, np.full(len(pts), thick / 2), width)
        _composite(hu, labels, buf, float(r.uniform(-150, 30)), _box(fr, pts, 5))
    if conf.consolidation:
        side = int(r.integers(1, 3))
        c = lungs.sample(r, 1, side, lo=8.0, weight=low + 1e-4)
        if len(c):
            rad = float(r.uniform(12, 28))
            pts = c[0] + r.normal(0, rad * 0.45, (6, 3))
            rr = r.uniform(0.45, 0.8, 6) * rad
            buf = np.zeros(hu.shape, np.float32)
            splat_spheres(buf, fr.spacing, pts, rr, 3.0 * width)
            _composite(hu, labels, buf, float(r.uniform(10, 45)), _box(fr, pts, rad + 4))
