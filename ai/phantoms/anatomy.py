"""The body and thorax: drawn sizes and the analytic fields of the body wall, pleural cavity and lungs.

Coordinates are anatomical LPS millimetres (x patient left, y posterior,
z superior), thorax axis at ``x = y = 0``, lung apices at ``z = 0``.
Every field takes broadcastable coordinate arrays, so the same code serves
a z-chunk of the grid (``x, y`` of shape ``(1, ny, nx)``, ``z`` of shape
``(nz, 1, 1)``) and a list of points (all ``(N,)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ai.phantoms.geometry import rotation_to


def smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """0 below ``a``, 1 above ``b``, smooth between."""
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class Ellipsoid:
    """An oriented ellipsoid: ``centre``, ``rot`` (columns: its axes in the frame), semi-axes ``axes``."""

    centre: np.ndarray
    rot: np.ndarray
    axes: np.ndarray

    def q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared normalised radius: below 1 inside."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        out: np.ndarray | float = 0.0
        for i in range(3):
            r = self.rot[:, i]
            t = dx * np.float32(r[0]) + dy * np.float32(r[1]) + dz * np.float32(r[2])
            out = out + t * t * np.float32(1.0 / self.axes[i] ** 2)
        return np.asarray(out)

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance, positive inside (mm)."""
        return (1.0 - np.sqrt(self.q(x, y, z))) * np.float32(self.axes.min())

    def grown(self, mm: float) -> Ellipsoid:
        """The same ellipsoid with every semi-axis ``mm`` longer."""
        return Ellipsoid(self.centre, self.rot, self.axes + mm)

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi)."""
        ext = np.sqrt(((self.rot * self.axes[None, :]) ** 2).sum(1))
        return self.centre - ext, self.centre + ext


@dataclass
class Anatomy:
    """The drawn anatomy of one patient (all lengths mm)."""

    scale: float
    adiposity: float
    lung_height: float  # apex (z = 0) to the deepest posterior recess
    ac: float  # pleural cavity half-width at the base
    bc: float  # pleural cavity half-depth at the base
    wall: float  # ribs and intercostal muscle
    muscle: tuple[float, float, float]  # lateral, anterior, posterior chest-wall muscle
    fat: tuple[float, float, float]  # lateral, anterior, posterior subcutaneous fat
    gravity: float  # +1 supine (posterior down), -1 prone
    dome_top: tuple[float, float]  # right, left dome tops (z)
    dome_depth: float
    apex_x: float
    apex_depth: float  # depth below the apex where the apical cap reaches the cavity
    carina_z: float
    spine_y: float  # vertebral body centre at mid-thorax
    spine_r: float
    heart: Ellipsoid
    arms_down: bool
    breasts: bool
    arm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # arm centre |x|, y and radius (arms down)
    pectoral: float = 12.0  # extra muscle in front of the upper chest
    hu: dict[str, float] = field(default_factory=dict)

    # ---- profiles along z -------------------------------------------------
    def s(self, z: np.ndarray) -> np.ndarray:
        """Normalised height: 0 at the apex, 1 at the deepest recess."""
        return np.asarray(-z / self.lung_height, dtype=np.float32)

    def cavity_axes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-width and half-depth of the pleural cavity (inner rib cage) at ``z``."""
        s = self.s(z)
        a = self.ac * (0.62 + 0.38 * smoothstep(-0.3, 0.6, s)) * (1 - 0.06 * smoothstep(1.1, 1.6, s))
        b = self.bc * (0.74 + 0.26 * smoothstep(-0.25, 0.5, s))
        return a.astype(np.float32), b.astype(np.float32)

    def spine_yz(self, z: np.ndarray) -> np.ndarray:
        """Vertebral body centre y (kyphosis: most posterior mid-thorax)."""
        t = (z + 0.45 * self.lung_height) / (0.7 * self.lung_height)
        return (self.spine_y - 14.0 * t * t).astype(np.float32)

    def cavity_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Squared normalised radius of the cavity grown by ``grow`` mm (posterior half slightly deeper)."""
        a, b = self.cavity_axes(z)
        yy = y * y
        yp = np.where(y > 0, yy, 0.0).astype(np.float32)
        ya = yy - yp
        return x * x * (1.0 / (a + grow) ** 2) + yp * (1.0 / (b * 1.04 + grow) ** 2) + ya * (1.0 / (b * 0.96 + grow) ** 2)

    # ---- body wall --------------------------------------------------------
    def wall_layers(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Chest-wall muscle and subcutaneous fat thickness (mm) around the thorax: pectorals in front
        of the upper chest, the paraspinal masses behind, thinner at the sides."""
        th = np.arctan2(x, -y)  # 0 anterior, +-pi posterior
        c = np.cos(th)
        ant, post = np.clip(c, 0, 1) ** 2, np.clip(-c, 0, 1) ** 2
        ml, ma, mp = self.muscle
        fl, fa, fp = self.fat
        back = (0.5 - 0.5 * c) ** 1.6  # paraspinal and back muscles, broad and smooth
        pec = np.exp(-(((np.abs(th) - 0.8) / 0.5) ** 2))
        scap = np.exp(-(((np.abs(th) - 2.2) / 0.55) ** 2))  # around the scapulae
        s = self.s(z)
        upper = smoothstep(-0.15, 0.1, s) * (1 - smoothstep(0.4, 0.7, s))
        muscle = ml + (ma - ml) * ant + (mp - ml) * back + upper * (self.pectoral * pec + 0.8 * self.pectoral * scap)
        fat = fl + (fa - fl) * ant + (fp - fl) * post
        return muscle.astype(np.float32), fat.astype(np.float32)

    def body_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, depth: str = "skin") -> np.ndarray:
        """Squared normalised radius of a body-wall boundary: ``skin``, ``fat`` (its inner side) or ``ribs`` (outer)."""
        a, b = self.cavity_axes(z)
        grow: np.ndarray | float = self.wall
        if depth in ("skin", "fat"):
            m, f = self.wall_layers(x, y, z)
            grow = grow + m + (f if depth == "skin" else 0.0)
        yy = y * y
        yp = np.where(y > 0, yy, 0.0).astype(np.float32)
        return x * x / (a + grow) ** 2 + yp / (b * 1.04 + grow) ** 2 + (yy - yp) / (b * 0.96 + grow) ** 2

    def extent(self) -> tuple[float, float]:
        """Half-width and half-depth of the body outline (arms included when down), mm."""
        th = np.linspace(-np.pi, np.pi, 73)[None, :]
        ux, uy = np.sin(th), -np.cos(th)
        z = np.linspace(-1.2 * self.lung_height, 30.0, 16)[:, None]
        r = 1.0 / np.sqrt(self.body_q(ux, uy, np.broadcast_to(z, (16, 73))))
        hx, hy = float((r * np.abs(ux)).max()), float((r * np.abs(uy)).max())
        if self.arms_down:
            hx = max(hx, self.arm[0] + self.arm[2])
        return hx, hy

    # ---- diaphragm --------------------------------------------------------
    def dome_z(self, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
        """Height of the right (``side=-1``) or left (``+1``) diaphragm dome under (x, y)."""
        top = self.dome_top[0 if side < 0 else 1]
        xd = side * 0.42 * self.ac
        u = (x - xd) / (0.5 * self.ac)
        v = (y + 0.12 * self.bc) / (0.95 * self.bc)
        return (top - self.dome_depth * (u * u + v * v) ** 1.3).astype(np.float32)

    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The diaphragm surface: the higher of the two domes."""
        return np.maximum(self.dome_z(x, y, -1), self.dome_z(x, y, 1))

    # ---- mediastinum ------------------------------------------------------
    def mediastinum(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Central block (great vessels, trachea, oesophagus, fat) and the paravertebral strip: never lung."""
        s = self.s(z)
        hw = 6.0 + 22.0 * smoothstep(0.0, 0.3, s) * (1 - 0.5 * smoothstep(0.5, 0.8, s))  # half-width
        yc = -0.08 * self.bc
        hd = self.bc * (0.55 + 0.15 * smoothstep(0.1, 0.35, s))
        hw = hw * self.scale
        block = (x * x) / (hw * hw) + ((y - yc) / hd) ** 2 < 1.0
        yv = self.spine_yz(z)
        rs = self.spine_r + 9.0
        spine = (x * x) / (rs * rs) + ((y - yv - 8.0) / (rs + 10.0)) ** 2 < 1.0
        band = np.abs(x) < 3.0
        return np.asarray(block | spine | band)

    # ---- lungs --------------------------------------------------------------
    def lungs(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, q: np.ndarray | None = None) -> np.ndarray:
        """Both lungs' pleural-cavity part before mediastinal exclusions (right where x < 0).

        ``q`` is :meth:`cavity_q` if already computed.
        """
        inside = (self.cavity_q(x, y, z) if q is None else q) < 1.0
        ax = np.abs(x)
        a, b = self.cavity_axes(z)
        dx = ax - self.apex_x
        dy = y - 0.05 * self.bc
        apex = dx * dx * (self.apex_depth / (0.5 * a * a)) + dy * dy * (self.apex_depth / (0.7 * b * b))
        inside &= apex + z < 0
        u = (ax - 0.42 * self.ac) / (0.5 * self.ac)
        v = (y + 0.12 * self.bc) / (0.95 * self.bc)
        top = np.where(x < 0, self.dome_top[0], self.dome_top[1])
        inside &= z > (top - self.dome_depth * (u * u + v * v) ** 1.3).astype(np.float32)
        return np.asarray(inside)

    def lung_points(self, pts: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
        """Side of each point: 1 right lung, 2 left lung, 0 neither (``excluded``: extra points to leave out)."""
        x, y, z = (pts[:, i].astype(np.float32) for i in range(3))
        out = np.zeros(len(pts), dtype=np.uint8)
        free = ~self.mediastinum(x, y, z) & (self.heart.grown(self.hu_pericardium_mm).q(x, y, z) > 1.0)
        if excluded is not None:
            free &= ~excluded
        both = self.lungs(x, y, z) & free
        out[both & (x < 0)] = 1
        out[both & (x > 0)] = 2
        return out

    @property
    def hu_pericardium_mm(self) -> float:
        """Pericardial fat between the heart and the lungs, mm."""
        return float(self.hu.get("pericardium_mm", 4.0))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical box holding both lungs."""
        return (np.array([-self.ac, -self.bc * 1.0, -self.lung_height - 2]), np.array([self.ac, self.bc * 1.05, 2.0]))


def draw_anatomy(rng: np.random.Generator, prone: bool) -> Anatomy:
    """Draw one patient's body habitus and thoracic anatomy.

    Parameters
    ----------
    rng : Generator
        The anatomy stream.
    prone : bool
        Whether the patient lies prone (gravity anterior).
    """
    scale = float(rng.uniform(0.84, 1.14))
    adip = float(rng.beta(1.6, 2.4))  # 0 lean .. 1 obese
    lung_h = 248.0 * scale * float(rng.uniform(0.9, 1.08))
    ac = 133.0 * scale * float(rng.uniform(0.93, 1.07))
    bc = ac * float(rng.uniform(0.64, 0.76))
    fat = (6 + 62 * adip**1.6 * rng.uniform(0.8, 1.2), 5 + 45 * adip**1.6 * rng.uniform(0.8, 1.2),
           6 + 50 * adip**1.6 * rng.uniform(0.8, 1.2))
    muscle = (float(rng.uniform(6, 12)), float(rng.uniform(6, 12)), float(rng.uniform(28, 46)) * scale)
    dome_depth = 0.14 * lung_h * float(rng.uniform(0.85, 1.15))
    top_r = -lung_h + 1.6 * dome_depth + float(rng.uniform(-6, 6))
    top_l = top_r - float(rng.uniform(8, 24))
    carina = -0.29 * lung_h * float(rng.uniform(0.9, 1.1))
    # Heart: long axis from base (posterior, right, up) to apex (anterior, left, down).
    long_axis = np.array([0.62 + rng.uniform(-0.1, 0.1), -0.58 + rng.uniform(-0.1, 0.1), -0.5 + rng.uniform(-0.1, 0.1)])
    rot = rotation_to(long_axis)[:, [2, 0, 1]]
    hax = np.array([rng.uniform(56, 66), rng.uniform(40, 47), rng.uniform(33, 40)]) * scale**0.8
    hx, hy = 0.21 * ac + float(rng.uniform(-6, 6)), -0.2 * bc + float(rng.uniform(-5, 5))
    ext_z = float(np.sqrt(((rot * hax[None, :]) ** 2).sum(1))[2])
    probe = Anatomy(scale, adip, lung_h, ac, bc, 12.0, (0, 0, 0), (0, 0, 0), 1.0, (top_r, top_l), dome_depth, 0.0, 1.0,
                    0.0, 0.0, 1.0, Ellipsoid(np.zeros(3), np.eye(3), np.ones(3)), False, False)
    floor = float(probe.diaphragm_z(np.asarray(hx), np.asarray(hy)))
    hz = floor + 0.62 * ext_z + float(rng.uniform(-4, 6))
    heart = Ellipsoid(np.array([hx, hy, hz]), rot, hax)
    wall = float(rng.uniform(10, 14))
    arm_r = (36.0 + 26.0 * adip) * scale * float(rng.uniform(0.9, 1.1))
    arm_x = ac + wall + muscle[0] + fat[0] + float(rng.uniform(-4, 14)) + arm_r
    return Anatomy(
        scale=scale, adiposity=adip, lung_height=lung_h, ac=ac, bc=bc, wall=wall,
        muscle=muscle, fat=tuple(float(f) for f in fat),  # type: ignore[arg-type]
        gravity=-1.0 if prone else 1.0, dome_top=(top_r, top_l), dome_depth=dome_depth,
        apex_x=0.5 * ac, apex_depth=float(rng.uniform(60, 90)) * scale, carina_z=carina,
        spine_y=0.8 * bc + float(rng.uniform(-4, 4)), spine_r=float(rng.uniform(14, 18)) * scale,
        heart=heart, arms_down=bool(rng.random() < 0.3), breasts=bool(rng.random() < 0.45),
        arm=(arm_x, float(rng.uniform(-0.2, 0.25)) * bc, arm_r), pectoral=float(rng.uniform(6, 22)) * scale,
        hu={"pericardium_mm": float(rng.uniform(2.5, 6.0) + 6 * adip)},
    )
