"""The scanner: table, slice profile, reconstruction kernel, textured noise, field of view, position.

- Table: a curved carbon shell with a foam core and a thin mattress, under
  the dependent side of the patient (posterior when supine, anterior when
  prone), the same on every slice.
- Slice profile: a Gaussian along z of sigma 0.45 slice.
- Kernel: in-plane modulation transfer ``exp(-2 pi^2 s^2 f^2)``, times a
  mid-frequency boost for sharp kernels (edge overshoot).
- Noise: white noise shaped by a ramp-and-roll-off power spectrum peaking
  near ``1 / (2 grain)`` cycles/mm (spatially correlated, CT-like texture),
  scaled per slice with the body's width (more noise through the shoulders).
- Field of view: a circle of the matrix's width; outside it the padding
  value (-2000 or -3024) in some cases.
- Position: the canonical LPS-aligned arrays are flipped so that the index
  axes follow the drawn position's direction cosines.
"""

from __future__ import annotations

import numpy as np

from .case import Case, EvalNodule
from .confounders import Confounders
from .draw import Acquisition, stream
from .frame import Frame
from .layout import Layout
from .trees import Tree


def _table(hu: np.ndarray, fr: Frame, gravity: float, r: np.random.Generator) -> dict[str, float]:
    body = (hu > -500).any(axis=0)
    rows = np.flatnonzero(body.any(axis=1))
    if rows.size == 0:
        return {}
    px = fr.pixel
    j = np.arange(fr.ny) * px
    i = (np.arange(fr.nx) - (fr.nx - 1) / 2) * px
    edge = rows.max() * px + px if gravity > 0 else rows.min() * px - px
    pad = float(r.uniform(0, 25))
    curve = float(r.uniform(0.0004, 0.0012))
    s = gravity * (j[:, None] - edge) + curve * i[None, :] ** 2  # depth below the dependent edge; the table is concave
    frac_pad = np.clip((np.minimum(s, pad - s) / px) + 0.5, 0, 1) if pad > 1 else 0 * s
    top = s - pad
    shell = np.clip(np.minimum(top, 2.5 - top) / px + 0.5, 0, 1)
    core = np.clip(np.minimum(top - 2.5, 40 - top) / px + 0.5, 0, 1)
    bot = np.clip(np.minimum(top - 40, 42.5 - top) / px + 0.5, 0, 1)
    wide = (np.abs(i) < float(r.uniform(200, 240)))[None, :]
    t2 = -1000.0 + frac_pad * 150.0 + (shell + bot) * 1200.0 + core * 120.0
    t2 = np.where(wide, t2, -1000.0).astype(np.float32)
    m = t2 > -999.0
    hu[:, m] = np.maximum(hu[:, m], t2[m][None])
    return {"table_pad_mm": pad, "table_curve": curve}


def _kernel_and_noise(hu: np.ndarray, fr: Frame, acq: Acquisition, r: np.random.Generator) -> np.ndarray:
    nz, ny, nx = hu.shape
    fy = np.fft.fftfreq(ny, fr.pixel)[:, None]
    fx = np.fft.rfftfreq(nx, fr.pixel)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    nyq = 0.5 / fr.pixel
    mtf = np.exp(-2 * np.pi**2 * acq.psf_sigma_mm**2 * f * f)
    if acq.edge_boost:
        fb = 0.55 * nyq
        mtf = mtf * (1 + acq.edge_boost * (f / fb) ** 2 * np.exp(1 - (f / fb) ** 2))
    fp = min(0.5 / acq.noise_grain_mm, 0.9 * nyq)
    nps = (f / fp) * np.exp(1 - (f / fp) ** 2) + 0.04
    amp = np.sqrt(nps)
    amp *= 1.0 / np.sqrt((np.concatenate([amp, amp[:, 1:-1]], axis=1) ** 2).mean())  # unit-variance white in -> unit out
    width = (hu > -400).sum(axis=(1, 2)).astype(float)
    scale = np.clip(np.sqrt(width / max(np.median(width), 1.0)), 0.6, 1.6)
    out = np.empty_like(hu)
    for k0 in range(0, nz, 32):
        sl = slice(k0, min(k0 + 32, nz))
        F = np.fft.rfft2(hu[sl])
        W = np.fft.rfft2(r.standard_normal((sl.stop - sl.start, ny, nx), dtype=np.float32))
        F = F * mtf.astype(np.complex64) + W * (amp * acq.noise_sigma).astype(np.complex64) \
            * scale[sl, None, None].astype(np.complex64)
        out[sl] = np.fft.irfft2(F, s=(ny, nx)).astype(np.float32)
    return out


def scan(seed: int, hu: np.ndarray, labels: np.ndarray, fr: Frame, acq: Acquisition, L: Layout,
         conf: Confounders, nodules: list[EvalNodule], trees: list[Tree]) -> Case:
    """Turn the ideal canonical volume into the scanner's image and flip to the patient position.

    Parameters
    ----------
    seed : int
        Case seed (noise stream).
    hu : ndarray
        Ideal float32 volume, canonical V grid (consumed).
    labels : ndarray
        Canonical labels.
    fr : Frame
        Grid geometry.
    acq : Acquisition
        The drawn acquisition.
    L : Layout
        The drawn anatomy (for the meta).
    conf : Confounders
        The drawn confounders (for the meta).
    nodules : list of EvalNodule
        Nodules with canonical centres.
    trees : list of Tree
        The trees (for the meta).

    Returns
    -------
    Case
    """
    r = stream(seed, "noise")
    gravity = -1.0 if acq.prone else 1.0
    table = _table(hu, fr, gravity, r)
    if fr.nz > 2:  # slice profile
        w1 = np.float32(np.exp(-1 / (2 * 0.45**2)))
        blur = hu.copy()
        blur[1:] += w1 * hu[:-1]
        blur[:-1] += w1 * hu[1:]
        blur[0] += w1 * hu[0]
        blur[-1] += w1 * hu[-1]
        hu = blur / (1 + 2 * w1)
        del blur
    img = _kernel_and_noise(hu, fr, acq, r)
    del hu
    np.clip(img, -1024, 3071, out=img)
    if acq.pad_value is not None:
        c = (np.arange(fr.nx) - (fr.nx - 1) / 2) * fr.pixel
        outside = (c[None, :] ** 2 + c[:, None] ** 2) > (fr.nx * fr.pixel / 2) ** 2
        img[:, outside] = acq.pad_value
    img16 = np.rint(img).astype(np.int16)
    del img
    D = acq.direction
    flip = [D[a, a] < 0 for a in range(3)]  # x, y, z index axes
    for a, axis in ((0, 2), (1, 1), (2, 0)):
        if flip[a]:
            img16 = np.flip(img16, axis=axis)
            labels = np.flip(labels, axis=axis)
    n = np.array([fr.nx, fr.ny, fr.nz])
    sp = fr.spacing
    corner = np.where(flip, n - 1, 0)
    cx, cy = (fr.nx - 1) * fr.pixel / 2, (fr.ny - 1) * fr.pixel / 2
    origin = (corner[0] * sp[0] - cx, corner[1] * sp[1] - cy, acq.table_z_mm + corner[2] * sp[2])
    for nod in nodules:
        c = np.array(nod.centre_mm)
        nod.centre_mm = tuple(float(v) for v in np.where(flip, (n - 1) * sp - c, c))
    meta: dict[str, object] = {
        "seed": seed, "acquisition": acq.as_meta(), "table": table, "confounders": conf.as_meta(),
        "anatomy": {"cavity_half_width_mm": L.W, "cavity_half_depth_mm": L.Dp, "lung_height_mm": L.H,
                    "domes_mm": list(L.dome), "carina_z_mm": L.carina_z, "fat_mm": list(L.fat),
                    "hu": {k: round(v, 1) for k, v in L.hu.items()}},
        "trees": {f"{t.kind}-{'right' if t.side == 1 else 'left'}": int(len(t.pos)) for t in trees},
        "canonical_flip_xyz": [bool(f) for f in flip],
    }
    return Case(np.ascontiguousarray(img16), np.ascontiguousarray(labels), tuple(float(s) for s in sp), D,
                tuple(float(v) for v in origin), nodules, meta)
