"""The drawn anatomy of one patient: where every structure sits, in the anatomical frame.

Anatomical frame ("A frame"): millimetres, x towards the patient's left,
y towards posterior, z towards the head (LPS axes); x = 0 on the midline,
y = 0 at the centre of the thoracic cavity, z = 0 at the lowest point of the
lungs (the posterior costophrenic recesses).

The mediastinum is built from named tubes (:class:`Tube`): aorta, pulmonary
trunk and arteries, pulmonary veins, superior vena cava, trachea and main
bronchi, oesophagus.  Their lung-side ends are the roots of the vessel and
airway trees grown in :mod:`bench.evalset.trees`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .draw import Acquisition
from .sdf import rotation


@dataclass(frozen=True)
class Tube:
    """A tapered tube of the mediastinum: ``kind`` is aorta, pa, vein, svc, airway or oesophagus."""

    kind: str
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float


@dataclass
class Layout:
    """Every drawn anatomical parameter of a case (A frame, mm, HU)."""

    W: float  # half-width of the thoracic cavity at the bases
    Dp: float  # half-depth of the cavity
    H: float  # apex height above the lowest lung point
    square: float  # cavity cross-section: 0 ellipse .. 1 squircle
    taper: float  # narrowing of the cavity towards the front
    apex_len: float  # the top apex_len mm taper to the apices
    wall: float  # chest wall (muscle and ribs) thickness
    fat: tuple[float, float, float]  # subcutaneous fat: anterior, lateral, posterior
    shoulder: float  # extra half-width of the body at the top of the scan
    dome: tuple[float, float]  # right and left diaphragm dome heights
    heart_c: np.ndarray
    heart_axes: np.ndarray
    heart_rot: np.ndarray
    y_vb: float  # vertebral body centre (y)
    r_vb: float
    vert_len: float
    vert_phase: float
    trachea: tuple[float, float, float]  # x, y, radius
    carina_z: float
    tubes: list[Tube]
    art_roots: dict[str, list[np.ndarray]]
    vein_roots: dict[str, list[np.ndarray]]
    bronchus_roots: dict[str, np.ndarray]
    rib_top: float
    rib_spacing: float
    rib_drop: float
    fissures: dict[str, tuple[float, float, float, float]]  # side -> y_post, z_post, y_ant, z_ant
    horizontal_z: float
    fissure_tilt: float
    hu: dict[str, float] = field(default_factory=dict)

    def half_axes(self, z: np.ndarray, apex: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Half-width and half-depth of the cavity at heights ``z`` (with or without the apical taper)."""
        t = np.clip(1.0 - z / self.H, 0.0, 1.0)
        a = self.W * (0.74 + 0.26 * np.sqrt(t))
        b = self.Dp * (0.8 + 0.2 * np.sqrt(t))
        if apex:
            zt = self.H - self.apex_len
            s = np.clip((z - zt) / self.apex_len, 0.0, 1.2)
            f = np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0))
            a, b = a * np.where(z > zt, f, 1.0), b * np.where(z > zt, 0.55 + 0.45 * f, 1.0)
        return a, b

    def dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the diaphragm surface under the point (x, y); lungs lie above it."""
        side = np.where(x < 0, self.dome[0], self.dome[1])
        u = (np.abs(x) - 0.42 * self.W) / (0.95 * self.W)
        v = (y + 0.2 * self.Dp) / (1.2 * self.Dp)
        return side * (1.0 - u * u - v * v) - 3.0


def _u(r: np.random.Generator, lo: float, hi: float) -> float:
    return float(r.uniform(lo, hi))


def draw_layout(r: np.random.Generator, acq: Acquisition) -> Layout:
    """Draw a patient's anatomy.

    Parameters
    ----------
    r : numpy.random.Generator
        The case's anatomy stream.
    acq : Acquisition
        The acquisition (for the contrast phase).

    Returns
    -------
    Layout
    """
    W, Dp, H = _u(r, 112, 142), _u(r, 80, 104), _u(r, 205, 258)
    dome_r = _u(r, 50, 82)
    dome_l = dome_r - _u(r, 6, 22)
    carina = H * _u(r, 0.56, 0.64)
    r_vb = _u(r, 15, 20)
    y_vb = Dp - _u(r, 20, 27)
    x_t, r_t = _u(r, -5, 2), _u(r, 7.5, 10.5)
    y_t = y_vb - r_vb - _u(r, 14, 20) - r_t
    carina_p = np.array([x_t, y_t, carina])
    # heart: an ellipsoid leaning to the left, forwards and down, resting on the left dome
    axes = np.array([_u(r, 56, 70), _u(r, 42, 52), _u(r, 46, 58)])
    rot = rotation(np.radians(_u(r, 25, 45)), np.radians(_u(r, 15, 30)), np.radians(_u(r, -8, 8)))
    heart_c = np.array([_u(r, 14, 30), -_u(r, 8, 24), dome_l + _u(r, 22, 34)])
    # trees' roots and the central tubes that feed them
    rb_end = carina_p + [-_u(r, 34, 44), _u(r, 4, 12), -_u(r, 16, 24)]
    lb_end = carina_p + [_u(r, 42, 52), _u(r, 8, 16), -_u(r, 30, 40)]
    bif = np.array([_u(r, 12, 22), y_t - _u(r, 28, 40), carina - _u(r, 6, 16)])
    rvot = np.array([_u(r, 10, 24), heart_c[1] - axes[1] * 0.55, heart_c[2] + axes[2] * 0.35])
    rpa = carina_p + [-_u(r, 34, 42), -_u(r, 6, 14), -_u(r, 12, 22)]
    lpa = carina_p + [_u(r, 40, 48), -_u(r, 0, 10), -_u(r, 4, 14)]
    la = np.array([_u(r, 0, 10), y_t - _u(r, 0, 10), carina - _u(r, 55, 72)])
    veins = {
        "right": [carina_p + [-_u(r, 32, 42), -_u(r, 14, 24), -_u(r, 38, 48)],
                  carina_p + [-_u(r, 30, 40), _u(r, 0, 10), -_u(r, 62, 78)]],
        "left": [carina_p + [_u(r, 36, 46), -_u(r, 10, 20), -_u(r, 36, 46)],
                 carina_p + [_u(r, 34, 44), _u(r, 0, 10), -_u(r, 58, 72)]],
    }
    a_root = np.array([_u(r, 2, 9), heart_c[1] + _u(r, -4, 6), heart_c[2] + axes[2] * 0.45])
    a_asc = np.array([-_u(r, 4, 12), y_t - _u(r, 34, 48), carina + _u(r, 8, 18)])
    a_top = np.array([_u(r, 0, 8), y_t - _u(r, 8, 16), carina + _u(r, 30, 40)])
    a_des0 = np.array([x_t + _u(r, 20, 28), y_vb - r_vb - _u(r, 2, 8), carina + _u(r, 14, 22)])
    a_des1 = np.array([r_vb + _u(r, 6, 12), y_vb - r_vb * 0.6, -60.0])
    ra, rd = _u(r, 13, 17), _u(r, 10, 13)
    svc_top = np.array([-_u(r, 22, 32), y_t - _u(r, 18, 28), H + 80])
    svc_bot = np.array([-_u(r, 22, 30), heart_c[1] + _u(r, -10, 2), heart_c[2] + axes[2] * 0.45])
    oes = np.array([x_t + _u(r, 5, 11), y_vb - r_vb - _u(r, 6, 9)])
    tubes = [
        Tube("aorta", a_root, a_asc, ra, ra), Tube("aorta", a_asc, a_top, ra, (ra + rd) / 2),
        Tube("aorta", a_top, a_des0, (ra + rd) / 2, rd), Tube("aorta", a_des0, a_des1, rd, rd * 0.95),
        Tube("pa", rvot, bif, _u(r, 12, 15), 12.0), Tube("pa", bif, rpa, 11.0, _u(r, 7, 9)),
        Tube("pa", bif, lpa, 10.5, _u(r, 7, 9)),
        Tube("svc", svc_top, svc_bot, _u(r, 8, 11), 10.0),
        Tube("airway", np.array([x_t, y_t + 2, H + 90]), carina_p, r_t, r_t * 0.95),
        Tube("airway", carina_p, rb_end, _u(r, 6.2, 7.5), 5.8), Tube("airway", carina_p, lb_end, _u(r, 5.4, 6.5), 5.0),
        Tube("oesophagus", np.array([oes[0], oes[1], H + 90]), np.array([oes[0] + 12, oes[1] - 8, -40.0]), 7.5, 8.5),
    ]
    for side in ("right", "left"):
        for v in veins[side]:
            tubes.append(Tube("vein", v, la, _u(r, 5.5, 7.5), 8.0))
    post = _u(r, 0.62, 0.72) * H
    fis = {
        "right": (Dp * 0.9, post, -Dp * _u(r, 0.55, 0.8), dome_r * _u(r, 0.55, 0.8)),
        "left": (Dp * 0.9, post + _u(r, 4, 16), -Dp * _u(r, 0.55, 0.8), dome_l * _u(r, 0.55, 0.8)),
    }
    contrast = acq.contrast
    blood = _u(r, 34, 48)
    hu = {
        "fat": _u(r, -115, -85), "muscle": _u(r, 35, 58), "blood": blood, "liver": _u(r, 50, 66),
        "spleen": _u(r, 42, 52), "cortex": _u(r, 650, 1100), "marrow": _u(r, 150, 280),
        "cartilage": _u(r, 90, 180), "lung": _u(r, -885, -835), "lung_grad": _u(r, 20, 80),
        "airway_wall": _u(r, -10, 40), "csf": _u(r, 5, 18), "disc": _u(r, 70, 100),
        "pa": blood, "vein": blood, "aorta": blood, "svc": blood,
    }
    if contrast == "arterial":  # pulmonary arterial phase, the aorta catching up
        hu.update(pa=_u(r, 250, 480), vein=_u(r, 140, 260), aorta=_u(r, 130, 260), svc=_u(r, 300, 900),
                  liver=hu["liver"] + _u(r, 5, 20), spleen=hu["spleen"] + _u(r, 40, 90))
    elif contrast == "venous":
        hu.update(pa=_u(r, 140, 220), vein=_u(r, 140, 220), aorta=_u(r, 140, 210), svc=_u(r, 130, 220),
                  liver=hu["liver"] + _u(r, 45, 70), spleen=hu["spleen"] + _u(r, 60, 80))
    hu["heart_blood"] = (hu["pa"] + hu["aorta"]) / 2
    return Layout(
        W=W, Dp=Dp, H=H, square=_u(r, 0.1, 0.6), taper=_u(r, 0.12, 0.3), apex_len=_u(r, 55, 80), wall=_u(r, 11, 17),
        fat=(_u(r, 6, 38), _u(r, 8, 40), _u(r, 4, 14)), shoulder=_u(r, 15, 45), dome=(dome_r, dome_l),
        heart_c=heart_c, heart_axes=axes, heart_rot=rot, y_vb=y_vb, r_vb=r_vb, vert_len=_u(r, 24, 30),
        vert_phase=_u(r, 0, 30), trachea=(x_t, y_t, r_t), carina_z=carina, tubes=tubes,
        art_roots={"right": [rpa], "left": [lpa]}, vein_roots=veins,
        bronchus_roots={"right": rb_end, "left": lb_end},
        rib_top=H + _u(r, 5, 20), rib_spacing=_u(r, 22, 27), rib_drop=_u(r, 70, 110),
        fissures=fis, horizontal_z=carina - _u(r, 25, 45), fissure_tilt=_u(r, 0.2, 0.5), hu=hu,
    )
