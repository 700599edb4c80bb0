"""Acquisition: protocol draws (field of view, slices, position, kernel, noise, padding, contrast),
tissue attenuation, and the image formation steps (slice profile, in-plane PSF with edge enhancement
for sharp kernels, correlated noise, the reconstruction circle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ai.phantoms.geometry import Position

CLINICAL_SLICES = (0.625, 0.75, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)


@dataclass(frozen=True)
class Protocol:
    """How the scan was acquired and reconstructed."""

    fov: float  # display field of view, mm
    px: float  # pixel size, mm
    dz: float  # slice spacing (= thickness), mm
    position: Position
    kernel: str  # "sharp" or "smooth"
    psf_mm: float  # in-plane blur sigma, mm
    sharpen: float  # edge-enhancement gain (sharp kernels)
    noise: float  # noise sigma, HU
    noise_corr_px: float  # correlation length of the noise, pixels
    padding: int | None  # value outside the reconstruction circle, if any
    contrast: str | None  # None, "arterial" or "venous"
    fov_draw: float = 0.5  # the uniform behind the field of view (see :func:`fit_fov`)


def draw_protocol(
    rng: np.random.Generator, matrix: int, fov_mm: tuple[float, float], slice_mm: tuple[float, float]
) -> Protocol:
    """Draw one scan's protocol.

    A fixed number of uniforms is drawn first and mapped to each choice, so
    changing one range (say ``slice_mm``) changes nothing else.
    """
    u = rng.random(16)
    fov = float(fov_mm[0] + u[0] * (fov_mm[1] - fov_mm[0]))
    px = fov / matrix
    choices = [s for s in CLINICAL_SLICES if slice_mm[0] - 1e-9 <= s <= slice_mm[1] + 1e-9]
    if choices and u[1] < 0.8:
        dz = float(choices[min(int(u[2] * len(choices)), len(choices) - 1)])
    else:
        dz = float(slice_mm[0] + u[2] * (slice_mm[1] - slice_mm[0]))
    position = [Position.HFS, Position.HFP, Position.FFS, Position.FFP][int(np.searchsorted([0.6, 0.75, 0.9], u[3], side="right"))]
    sharp = bool(u[4] < 0.5)

    def span(lo: float, hi: float, t: float, log: bool = False) -> float:
        return float(math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))) if log else float(lo + t * (hi - lo))

    if sharp:
        psf, gain = span(0.3, 0.5, u[5]), span(0.2, 0.7, u[6])
        noise, corr = span(15, 80, u[7], log=True), span(0.5, 0.8, u[8])
    else:
        psf, gain = span(0.6, 1.0, u[5]), 0.0
        noise, corr = span(5, 30, u[7], log=True), span(0.9, 1.6, u[8])
    padding = (-2000 if u[10] < 0.5 else -3024) if u[9] < 0.4 else None
    contrast = None if u[11] < 0.55 else ("arterial" if u[12] < 0.6 else "venous")
    return Protocol(fov, px, dz, position, "sharp" if sharp else "smooth", psf, gain, noise, corr, padding, contrast, float(u[0]))


def fit_fov(proto: Protocol, width_mm: float, matrix: int, fov_mm: tuple[float, float]) -> Protocol:
    """Choose the field of view for the patient, as technologists do: the body's width plus a margin,
    or (one scan in seven) a little tight, cutting the body at the image edge; within ``fov_mm``."""
    u = proto.fov_draw
    factor = 0.84 + u / 0.14 * 0.13 if u < 0.14 else 1.04 + (u - 0.14) / 0.86 * 0.3
    fov = float(np.clip(width_mm * factor, *fov_mm))
    return replace(proto, fov=fov, px=fov / matrix)


def draw_tissues(rng: np.random.Generator, contrast: str | None) -> dict[str, float]:
    """Attenuation (HU) of every tissue for one scan."""
    u = rng.uniform
    blood = float(u(32, 48))
    T = {
        "air": -1000.0, "fat": float(u(-112, -88)), "skin": float(u(10, 40)), "muscle": float(u(38, 55)),
        "soft": float(u(30, 45)), "liver": float(u(52, 66)), "spleen": float(u(42, 52)), "stomach": float(u(0, 25)),
        "myocardium": blood + float(u(2, 10)), "blood_art": blood, "blood_vein": blood + float(u(-3, 3)),
        "aorta": blood, "sysvein": blood, "cortex": float(u(650, 1150)), "marrow": float(u(150, 320)),
        "cartilage": float(u(70, 160)), "disc": float(u(70, 105)), "lung": float(u(-885, -815)),
        "lung_gradient": float(u(15, 70)), "lung_texture": float(u(4, 14)), "airway_wall": float(u(10, 45)),
        "fissure": float(u(-60, 40)), "gland": float(u(-20, 35)), "mattress": float(u(-960, -880)),
        "table_shell": float(u(200, 450)), "table_core": float(u(-980, -900)),
    }
    if contrast == "arterial":
        art = float(u(200, 350))
        T.update(blood_art=art, blood_vein=float(u(140, art)), aorta=float(u(150, 300)), sysvein=float(u(250, 900)),
                 myocardium=float(u(90, 130)), liver=float(u(65, 85)), spleen=float(u(90, 140)), muscle=T["muscle"] + 6)
    elif contrast == "venous":
        v = float(u(150, 210))
        T.update(blood_art=v + float(u(0, 25)), blood_vein=v, aorta=v, sysvein=v + float(u(-10, 30)),
                 myocardium=float(u(100, 130)), liver=float(u(95, 130)), spleen=float(u(100, 130)), muscle=T["muscle"] + 10)
    return T


def gauss_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps (sigma in samples); ``[1]`` for sigma near 0."""
    if sigma < 0.05:
        return np.ones(1, dtype=np.float32)
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def convolve_axis(a: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Convolve along one axis with edge replication (shifted sums: fast for short kernels)."""
    if len(taps) == 1:
        return a
    r = len(taps) // 2
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="edge")
    out = np.zeros_like(a)
    for i, w in enumerate(taps):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(i, i + n)
        out += np.float32(w) * p[tuple(sl)]
    return out


def blur_inplane(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of ``[z, y, x]`` in-plane."""
    t = gauss_taps(sigma_px)
    return convolve_axis(convolve_axis(a, t, 2), t, 1)


def form_image(a: np.ndarray, proto: Protocol) -> np.ndarray:
    """In-plane point-spread function of the kernel, with edge enhancement for sharp kernels."""
    b = blur_inplane(a, proto.psf_mm / proto.px)
    if proto.sharpen > 0:
        wide = blur_inplane(b, max(0.5, 1.2 / proto.px))
        b = b + np.float32(proto.sharpen) * (b - wide)
    return b


def blur_slices(vol: np.ndarray, sigma: float) -> None:
    """Slice-profile blur along z, in place (``[z, y, x]``, sigma in slices)."""
    t = gauss_taps(sigma)
    if len(t) == 1 or vol.shape[0] < 2:
        return
    r = len(t) // 2
    n = vol.shape[0]
    prev = [vol[0].copy() for _ in range(r)]  # original slices k-r .. k-1 (edge replicated)
    for k in range(n):
        cur = vol[k].copy()
        window = prev + [cur] + [vol[min(k + j, n - 1)] for j in range(1, r + 1)]
        acc = np.zeros_like(cur)
        for w, s in zip(t, window):
            acc += np.float32(w) * s
        vol[k] = acc
        prev = prev[1:] + [cur]


def noise_field(rng: np.random.Generator, shape: tuple[int, int, int], proto: Protocol) -> np.ndarray:
    """Correlated noise of the kernel's texture, ``proto.noise`` HU standard deviation."""
    w = rng.standard_normal(shape, dtype=np.float32)
    if proto.kernel == "smooth":
        t = gauss_taps(proto.noise_corr_px)
        n = blur_inplane(w, proto.noise_corr_px)
        std = float((t**2).sum())
    else:  # band-pass: white minus part of its low frequencies
        t = gauss_taps(max(proto.noise_corr_px, 0.5))
        beta = 0.6
        low = blur_inplane(w, max(proto.noise_corr_px, 0.5))
        n = w - np.float32(beta) * low
        g0 = float(t[len(t) // 2] ** 2)
        std = math.sqrt(max(1 - 2 * beta * g0 + beta * beta * float((t**2).sum()) ** 2, 1e-6))
        return n * np.float32(proto.noise / std)
    return n * np.float32(proto.noise / std)


def circle_mask(nx: int, ny: int) -> np.ndarray:
    """Pixels outside the reconstruction circle (diameter = the image width)."""
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = min(nx, ny) / 2.0
    return ((xx + 0.5 - nx / 2) ** 2 + (yy + 0.5 - ny / 2) ** 2) > r * r
