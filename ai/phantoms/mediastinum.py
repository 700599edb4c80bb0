"""Mediastinal structures as capsules: aorta, arch branches, SVC, pulmonary trunk and arteries,
pulmonary veins, trachea and main bronchi, oesophagus, lymph nodes, and the hila they lead to.

All of them (dilated) are excluded from the lung labels, as clinical lung
masks leave the hilar and mediastinal structures out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ai.phantoms.anatomy import Anatomy
from ai.phantoms.raster import Capsules, Ch


def _bezier(points: list[np.ndarray], n: int) -> np.ndarray:
    """``n`` points along the Bezier curve of control ``points``."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = [np.asarray(p, dtype=float) for p in points]
    while len(pts) > 1:
        pts = [(1 - t) * a + t * b for a, b in itertools.pairwise(pts)]
    return pts[0]


def _tube(points: list[np.ndarray], r0: float, r1: float, ch: Ch, n: int = 8) -> Capsules:
    curve = _bezier(points, n)
    return Capsules.polyline(curve, np.linspace(r0, r1, n), ch)


@dataclass
class Hilum:
    """Where one lung's trees start: bronchus root and its direction, artery root, vein roots."""

    side: str
    bronchus: np.ndarray
    bronchus_dir: np.ndarray
    artery: np.ndarray
    artery_r: float
    veins: tuple[np.ndarray, np.ndarray]  # superior, inferior
    vein_r: float
    bronchus_r: float


@dataclass
class Mediastinum:
    """Capsules of the mediastinal structures (anatomical mm), the exclusion set and the hila."""

    caps: Capsules
    excl: Capsules
    hila: dict[str, Hilum]
    top_z: float


def build_mediastinum(rng: np.random.Generator, anat: Anatomy, top_z: float, bottom_z: float) -> Mediastinum:
    """Lay out the mediastinal structures for one patient.

    Parameters
    ----------
    rng : Generator
        The anatomy stream.
    anat : Anatomy
        The drawn anatomy.
    top_z, bottom_z : float
        Scan range (structures run a little beyond it).
    """
    k = anat.scale
    hc = anat.heart.centre
    car_z = anat.carina_z
    top = max(top_z, 0.0) + 30.0
    bot = min(bottom_z, -anat.lung_height) - 30.0
    yv = float(anat.spine_yz(np.asarray(car_z)))
    car = np.array([-2.0 + rng.uniform(-3, 3), yv - 44.0 * k + rng.uniform(-4, 4), car_z])
    parts: list[Capsules] = []
    excl: list[Capsules] = []

    def add(c: Capsules, grow: float | None) -> None:
        parts.append(c)
        if grow is not None:
            excl.append(c.with_channel(Ch.EXCL, grow=grow))

    # Trachea and main bronchi (lumen inside a soft-tissue wall).
    rt, wt = float(rng.uniform(7.5, 10.5)) * k, float(rng.uniform(1.5, 2.5))
    ttop = np.array([0.0, float(anat.spine_yz(np.asarray(top))) - 52.0 * k, top])
    trachea = _tube([ttop, (ttop + car) / 2 + [1, 3, 0], car], rt, rt * 0.95, Ch.AW_WALL)
    add(trachea, 4.0)
    parts.append(trachea.with_channel(Ch.AW_LUMEN, grow=-wt))
    hila: dict[str, Hilum] = {}
    for side, d, length, rb in (("right", np.array([-0.7, 0.12, -0.7]), 32.0, 7.0), ("left", np.array([0.78, 0.18, -0.6]), 46.0, 6.0)):
        d = d / np.linalg.norm(d)
        hb = car + d * length * k * rng.uniform(0.92, 1.08)
        rbk = rb * k * float(rng.uniform(0.9, 1.1))
        bron = _tube([car, (car + hb) / 2 - [0, 0, 2], hb], rbk * 1.08, rbk, Ch.AW_WALL, 5)
        add(bron, 3.0)
        parts.append(bron.with_channel(Ch.AW_LUMEN, grow=-1.6))
        s = -1.0 if side == "right" else 1.0
        art = hb + np.array([s * 4.0, -13.0 * k, 6.0 if side == "left" else 1.0])
        veins = (hb + np.array([s * 2.0, -22.0 * k, -24.0 * k]), hb + np.array([s * 2.0, 8.0 * k, -44.0 * k]))
        hila[side] = Hilum(side, hb, d, art, float(rng.uniform(5.8, 7.2)) * k, veins, float(rng.uniform(4.6, 5.8)) * k, rbk)

    # Pulmonary trunk from the right ventricle's outflow, splitting under the arch.
    pt0 = hc + np.array([-2.0, -36.0, 30.0]) * k
    bif = np.array([10.0, car[1] - 22.0 * k, car_z - 14.0 * k])
    rpt = float(rng.uniform(12, 15)) * k
    add(_tube([pt0, pt0 + [6, -4, 22], bif], rpt, rpt * 0.92, Ch.ART, 6), 4.0)
    ra = hila["right"].artery
    add(_tube([bif, np.array([-8.0, car[1] - 10.0 * k, car_z - 18.0 * k]), ra], rpt * 0.72, hila["right"].artery_r, Ch.ART, 8), 3.5)
    la = hila["left"].artery
    add(_tube([bif, bif + [14, 6, 14], la], rpt * 0.7, hila["left"].artery_r, Ch.ART, 6), 3.5)

    # Pulmonary veins into the left atrium (the back of the heart).
    lat = hc + np.array([-4.0, 34.0, 18.0]) * k
    for hil in hila.values():
        for v in hil.veins:
            add(_tube([v, (v + lat) / 2 + [0, 4, 0], lat], hil.vein_r * 1.1, hil.vein_r * 1.25, Ch.VEIN, 5), 3.0)

    # Aorta: ascending, arch over the left bronchus, descending beside the spine.
    r_as = float(rng.uniform(13, 17)) * k
    root = hc + np.array([-10.0, -8.0, 32.0]) * k
    asc_top = np.array([-10.0 * k, car[1] - 38.0 * k, car_z + 16.0 * k])
    arch_top = np.array([4.0 * k, car[1] - 12.0 * k, car_z + 34.0 * k])
    yv_d = float(anat.spine_yz(np.asarray(car_z)))
    desc0 = np.array([22.0 * k, yv_d - 18.0 * k, car_z + 14.0 * k])
    add(_tube([root, asc_top], r_as, r_as * 0.97, Ch.AORTA, 4), 4.0)
    add(_tube([asc_top, asc_top + [0, 0, 18 * k], arch_top + [-8, 0, 6], desc0 + [0, -4, 18]], r_as * 0.97, r_as * 0.85, Ch.AORTA, 10), 4.0)
    zs = np.linspace(desc0[2] + 18, bot, 12)
    desc = np.stack([np.interp(zs, [bot, desc0[2] + 18], [10.0 * k, 22.0 * k]), anat.spine_yz(zs) - 20.0 * k, zs], 1)
    add(Capsules.polyline(desc, np.linspace(r_as * 0.85, r_as * 0.72, len(zs)), Ch.AORTA), 4.0)
    # Arch branches: brachiocephalic, left common carotid, left subclavian.
    for x0, xt, yt, r in ((-6.0, -22.0, -46.0, 6.5), (2.0, 9.0, -40.0, 4.5), (12.0, 30.0, -18.0, 5.0)):
        p0 = np.array([x0 * k, car[1] - 22.0 * k + 10 * (x0 / 12), car_z + 40.0 * k])
        add(_tube([p0, p0 + [0, 0, 20], np.array([xt * k, car[1] + yt * k * 0.6, top])], r * k, r * k * 0.9, Ch.AORTA, 5), 3.0)
    # Superior vena cava and the brachiocephalic veins.
    r_svc = float(rng.uniform(8, 11)) * k
    svc_top = np.array([-24.0 * k, car[1] - 34.0 * k, car_z + 46.0 * k])
    ra_pt = hc + np.array([-36.0, 0.0, 26.0]) * k
    add(_tube([svc_top, svc_top + [0, 2, -30], ra_pt], r_svc, r_svc * 1.05, Ch.SYSVEIN, 5), 3.0)
    add(_tube([np.array([-40.0 * k, car[1] - 44.0 * k, top]), svc_top], 7.0 * k, r_svc, Ch.SYSVEIN, 4), 3.0)
    add(_tube([np.array([48.0 * k, car[1] - 50.0 * k, car_z + 64.0 * k]), np.array([0.0, car[1] - 56.0 * k, car_z + 56.0 * k]), svc_top],
              6.0 * k, r_svc * 0.9, Ch.SYSVEIN, 7), 3.0)
    # Oesophagus behind the trachea, to the hiatus.
    r_oe = float(rng.uniform(6.5, 9.0)) * k
    zs = np.linspace(top, anat.dome_top[1] - 20.0, 10)
    oes = np.stack([np.interp(zs, [zs[-1], car_z, top], [24.0, 6.0, 4.0]) * k, anat.spine_yz(zs) - 27.0 * k, zs], 1)
    add(Capsules.polyline(oes, r_oe, Ch.SOFT), 3.0)
    if rng.random() < 0.5:
        parts.append(Capsules.polyline(oes, float(rng.uniform(1.0, 3.0)), Ch.AW_LUMEN))
    # A few mediastinal lymph nodes (subcarinal, paratracheal, hilar).
    for _ in range(int(rng.integers(2, 7))):
        c = car + rng.normal(0, 1, 3) * np.array([12.0, 10.0, 14.0]) * k
        r = float(rng.uniform(2.5, 6.0))
        add(Capsules.polyline(np.stack([c, c + rng.normal(0, 2.0, 3)]), r, Ch.SOFT), 2.0)
    return Mediastinum(Capsules.concat(parts), Capsules.concat(excl), hila, top)
