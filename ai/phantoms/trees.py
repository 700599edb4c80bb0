"""Space-filling branching trees by recursive volume partition (after Kitaoka's airway model).

A branch owns a region of the lung, given as sample points.  It grows from
its start toward the region's centre; at its end the region is cut in two by
a plane containing the branch (turned about 90 degrees from the parent's
cut), and each half gets a child aimed at its own centre.  Radii follow
Murray's law from the share of the region each child serves, so the tree
tapers from the hilum to the periphery and fills the lung.  The first cuts
can follow given groups (lobes), so branches stay within their lobe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import numpy as np

#: A split plan: a group id (then geometric splits), or a pair of plans split by group membership.
Plan = Union[int, tuple["Plan", "Plan"], None]  # noqa: UP007 (a recursive alias needs Union)


@dataclass
class Branches:
    """A grown tree: branch ``i`` runs ``start[i] -> end[i]`` with radius ``radius[i]``, child of ``parent[i]``."""

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    parent: np.ndarray
    generation: np.ndarray
    rand: np.ndarray  # (N, 6) uniform numbers keyed by the branch's place in the tree (for its shape)

    def __len__(self) -> int:
        return len(self.radius)


def _groups_of(plan: Plan) -> set[int]:
    if plan is None:
        return set()
    if isinstance(plan, int):
        return {plan}
    return _groups_of(plan[0]) | _groups_of(plan[1])


_MASK = (1 << 16) - 1


def _keyed(table: np.ndarray, path: int, n: int) -> np.ndarray:
    """``n`` uniform numbers for the node at ``path`` (root 1, children 2p and 2p+1), the same in every run
    that reaches that node, however deep the rest of the tree grows."""
    h = (path * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    return np.asarray([table[((h >> 13) + 0x632BE5AB * j + (h >> 41) * (j + 1)) & _MASK] for j in range(n)])


def _perpendicular(u: np.ndarray, prev: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A unit vector normal to ``u``, roughly normal to ``prev`` too (alternating branching planes); ``r``: 4 uniforms."""
    n = _cross(u, prev)
    nn = math.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    if nn < 0.2:
        n = _cross(u, r[:3] - 0.5)
        nn = max(math.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]), 1e-9)
    n = n / nn
    ang = -0.45 + 0.9 * float(r[3])
    return math.cos(ang) * n + math.sin(ang) * _cross(u, n)


def _clip_to_region(start: np.ndarray, end: np.ndarray, inside: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Shorten ``start -> end`` where it leaves the region after having been inside it (or from its start)."""
    d = end - start
    n = max(4, int(math.sqrt(float(d @ d)) / 1.5))
    t = np.linspace(0.0, 1.0, n + 1)
    ok = inside(start[None] + t[:, None] * d[None])
    entered = np.flatnonzero(ok)
    if not len(entered):
        return end
    out = np.flatnonzero(~ok[entered[0]:])
    if not len(out):
        return end
    j = entered[0] + out[0]  # first sample outside after being inside
    return start + d * t[max(j - 1, 0)]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def grow_tree(
    points: np.ndarray,
    groups: np.ndarray | None,
    plan: Plan,
    root: np.ndarray,
    root_dir: np.ndarray,
    r_root: float,
    r_min: float,
    rng: np.random.Generator,
    murray: float = 3.0,
    length_frac: float = 0.42,
    inside: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Branches:
    """Grow one tree into the region sampled by ``points``.

    Parameters
    ----------
    points : ndarray
        ``(N, 3)`` samples of the region to fill (roughly uniform density).
    groups : ndarray, optional
        ``(N,)`` group id per point (lobes), used by ``plan``.
    plan : Plan
        How the first splits follow the groups, e.g. ``(1, (2, 3))``.
    root : ndarray
        Where the tree starts.
    root_dir : ndarray
        Direction of approach (for the first branching plane).
    r_root : float
        Radius of the first branch, mm.
    r_min : float
        Branches whose children would fall below this radius end the tree.
    rng : Generator
        Random stream: only its first draw (a table the nodes index by their place in the tree) is used,
        so a tree grown to a smaller ``r_min`` extends, rather than changes, one grown to a larger.
    murray : float
        Exponent of Murray's law (3: radius cubed is conserved).
    length_frac : float
        Share of the way to its region's centre a branch covers before it splits.
    inside : callable, optional
        ``inside(points) -> bool``: the region a branch must not leave once it has entered it (the
        lung); a branch that would leave it (say, across the heart) stops at its edge.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    radii: list[float] = []
    parents: list[int] = []
    gens: list[int] = []
    paths: list[int] = []
    rands: list[np.ndarray] = []
    table = rng.random(_MASK + 1)
    prev0 = np.cross(root_dir, [0.0, 0.0, 1.0])
    if np.linalg.norm(prev0) < 1e-6:
        prev0 = np.array([1.0, 0.0, 0.0])
    n_total = len(points)
    all_idx = np.arange(n_total) if groups is None else np.flatnonzero(np.isin(groups, list(_groups_of(plan)) or [-1]))
    if groups is None or plan is None:
        all_idx = np.arange(n_total)
    stack: list[tuple[np.ndarray, np.ndarray, float, int, int, Plan, np.ndarray, int]] = [
        (np.asarray(root, float), all_idx, float(r_root), -1, 0, plan, prev0 / np.linalg.norm(prev0), 1)
    ]
    leaf_ratio = 2.0 ** (-1.0 / murray)
    while stack:
        start, idx, r, parent, gen, pl, prev, path = stack.pop()
        if len(idx) == 0:
            continue
        pts = points[idx]
        c = pts.mean(0)
        tgt = pts[np.argmin(((pts - c) ** 2).sum(1))]
        v = tgt - start
        dist = math.sqrt(float(v @ v))
        structured = isinstance(pl, tuple)
        leaf = not structured and (r * leaf_ratio < r_min or len(idx) < 4)
        if dist < 1e-6:
            u = prev
            end = start + u * max(r, 0.5)
        elif leaf:
            u = v / dist
            reach = (pts - start) @ u  # run through the region, toward its far side
            far = pts[int(np.argmax(reach))]
            end = tgt + (far - tgt) * 0.7
        else:
            u = v / dist
            end = start + u * min(0.8 * dist, max(dist * length_frac, 5.0 * r))
        if inside is not None:
            end = _clip_to_region(start, end, inside)
        me = len(radii)
        starts.append(start)
        ends.append(end)
        radii.append(r)
        parents.append(parent)
        gens.append(gen)
        paths.append(path)
        rnd = _keyed(table, path, 11)
        rands.append(rnd[5:])
        if leaf:
            continue
        if structured:
            assert isinstance(pl, tuple) and groups is not None
            g = groups[idx]
            halves = [(idx[np.isin(g, list(_groups_of(p)))], p) for p in pl]
            nrm = _perpendicular(u, prev, rnd[:4])
        else:
            nrm = _perpendicular(u, prev, rnd[:4])
            proj = (pts - c) @ nrm
            kq = min(len(proj) - 1, int(len(proj) * (0.32 + 0.36 * float(rnd[4]))))
            cut = np.partition(proj, kq)[kq]
            halves = [(idx[proj <= cut], None), (idx[proj > cut], None)]
        n_here = max(1, len(idx))
        for which, (sub, p) in enumerate(halves):
            if len(sub) == 0:
                continue
            rc = r * (len(sub) / n_here) ** (1.0 / murray)
            if structured:
                rc = max(rc, r * 0.6)
            stack.append((end, sub, rc, me, gen + 1, p if isinstance(p, tuple) else None, nrm, 2 * path + which))
    order = sorted(range(len(paths)), key=paths.__getitem__)  # canonical order: parents first, by place in the tree
    new = np.empty(len(order), dtype=np.int64)
    new[order] = np.arange(len(order))
    par = np.asarray(parents, dtype=np.int64)[order]
    return Branches(np.asarray(starts)[order], np.asarray(ends)[order], np.asarray(radii)[order],
                    np.where(par >= 0, new[np.maximum(par, 0)], -1), np.asarray(gens, dtype=np.int64)[order],
                    np.asarray(rands)[order])
