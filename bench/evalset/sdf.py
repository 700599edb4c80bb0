"""Signed-distance primitives and smooth blends (negative inside, millimetres).

All functions broadcast over numpy arrays, so a caller may pass a whole stack
of planes (``[z, 1, 1]``, ``[1, y, x]`` coordinate arrays) or scattered points.
The shapes are approximate distances (gradient-normalised implicit functions),
which is all the blends and partial-volume ramps need near a surface.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray


def smin(a: Array, b: Array, k: float) -> Array:
    """Polynomial smooth minimum (a union that fillets within ``k`` mm).

    Parameters
    ----------
    a, b : ndarray
        Signed distances.
    k : float
        Blend radius in mm; 0 gives the plain minimum.

    Returns
    -------
    ndarray
        The blended distance.
    """
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a: Array, b: Array, k: float) -> Array:
    """Smooth maximum (an intersection with a fillet), ``-smin(-a, -b, k)``.

    Parameters
    ----------
    a, b : ndarray
        Signed distances.
    k : float
        Blend radius in mm.

    Returns
    -------
    ndarray
        The blended distance.
    """
    return -smin(-a, -b, k)


def capsule(x: Array, y: Array, z: Array, p0: Array, p1: Array, r0: float, r1: float) -> Array:
    """Distance to a tapered capsule from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``).

    Parameters
    ----------
    x, y, z : ndarray
        Point coordinates (broadcastable).
    p0, p1 : ndarray
        End points, shape ``(3,)``.
    r0, r1 : float
        Radii at the ends.

    Returns
    -------
    ndarray
        Signed distance (the taper is linear in the projection parameter).
    """
    d = np.asarray(p1, float) - np.asarray(p0, float)
    dd = float(d @ d) or 1e-9
    ax, ay, az = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((ax * d[0] + ay * d[1] + az * d[2]) / dd, 0.0, 1.0)
    ex, ey, ez = ax - t * d[0], ay - t * d[1], az - t * d[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez) - (r0 + (r1 - r0) * t)


def ellipsoid(x: Array, y: Array, z: Array, centre: Array, axes: Array, rot: Array | None = None) -> Array:
    """Approximate signed distance to an ellipsoid.

    Parameters
    ----------
    x, y, z : ndarray
        Point coordinates.
    centre : ndarray
        Centre, shape ``(3,)``.
    axes : ndarray
        Semi-axes, shape ``(3,)``.
    rot : ndarray, optional
        3x3 rotation whose columns are the ellipsoid's axes in world terms.

    Returns
    -------
    ndarray
        ``(rho - 1) / |grad rho|``, exact on the surface.
    """
    qx, qy, qz = x - centre[0], y - centre[1], z - centre[2]
    if rot is not None:
        qx, qy, qz = (rot[0, 0] * qx + rot[1, 0] * qy + rot[2, 0] * qz,
                      rot[0, 1] * qx + rot[1, 1] * qy + rot[2, 1] * qz,
                      rot[0, 2] * qx + rot[1, 2] * qy + rot[2, 2] * qz)
    a, b, c = axes
    rho = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2) + 1e-9
    g = np.sqrt((qx / a**2) ** 2 + (qy / b**2) ** 2 + (qz / c**2) ** 2) / rho + 1e-9
    return (rho - 1.0) / g


def superellipse2(x: Array, y: Array, a: Array, b: Array, square: float) -> Array:
    """Approximate signed distance to a rounded-rectangle superellipse cross-section.

    The level function blends the ellipse norm with the 4-norm
    (``square`` = 0: ellipse, 1: squircle); both only need squares and roots.

    Parameters
    ----------
    x, y : ndarray
        In-plane coordinates relative to the centre.
    a, b : ndarray
        Half-width and half-depth (broadcastable, e.g. per plane).
    square : float
        Blend towards the 4-norm, 0..1.

    Returns
    -------
    ndarray
        Gradient-normalised signed distance.
    """
    a = np.maximum(a, 0.5)
    b = np.maximum(b, 0.5)
    u, v = x / a, y / b
    u2, v2 = u * u, v * v
    r2 = np.sqrt(u2 + v2) + 1e-9
    r4 = np.sqrt(np.sqrt(u2 * u2 + v2 * v2)) + 1e-9
    rho = (1.0 - square) * r2 + square * r4
    r4c = r4 * r4 * r4
    gx = ((1.0 - square) * u / r2 + square * u2 * u / r4c) / a
    gy = ((1.0 - square) * v / r2 + square * v2 * v / r4c) / b
    return (rho - 1.0) / (np.sqrt(gx * gx + gy * gy) + 1e-9)


def rotation(yaw: float, pitch: float, roll: float) -> Array:
    """A rotation matrix from angles in radians (about z, then y, then x).

    Parameters
    ----------
    yaw, pitch, roll : float
        Angles about the z, y and x axes.

    Returns
    -------
    ndarray
        3x3 rotation matrix.
    """
    cz, sz = np.cos(yaw), np.sin(yaw)
    cy, sy = np.cos(pitch), np.sin(pitch)
    cx, sx = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def ramp(sd: Array, width: float) -> Array:
    """Partial-volume fraction inside a surface: 1 deep inside, 0 outside, linear over ``width``.

    Parameters
    ----------
    sd : ndarray
        Signed distance (negative inside).
    width : float
        Width of the ramp in mm (about one voxel).

    Returns
    -------
    ndarray
        Fraction in [0, 1], float32.
    """
    return np.clip(0.5 - sd / width, 0.0, 1.0).astype(np.float32, copy=False)
