"""Pulmonary vessel and airway trees grown by space colonisation from each hilum.

Space colonisation (Runions et al.'s venation algorithm): attraction points
are scattered through a lung; every point pulls the tree node nearest to it
(within an influence radius); each pulled node grows one step towards the
mean of its pulls (with some momentum and jitter); points closer than a kill
distance to the tree are consumed.  Branching emerges where a node's pulls
diverge.  Radii then follow a pipe model, ``r_parent^g = sum r_child^g``,
scaled so that each root has a drawn radius, which makes the trees taper
from lobar size at the hilum to sub-millimetre twigs near the pleura.

Arteries and veins are separate trees with their own attraction points (so
they interleave), airways grow from the main bronchi towards a subset of
the arteries' points (so they run alongside them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frame import Frame
from .layout import Layout
from .lungmap import LEFT, RIGHT, LungMap


@dataclass
class Tree:
    """A tree in the V frame: node positions, parent index (-1 for roots) and segment radius (parent to node)."""

    kind: str
    side: int
    pos: np.ndarray
    parent: np.ndarray
    radius: np.ndarray

    def segments(self, min_radius: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segments ``(p0, p1, r)`` from each non-root node's parent to the node, thinner ones dropped."""
        m = (self.parent >= 0) & (self.radius >= min_radius)
        return self.pos[self.parent[m]], self.pos[m], self.radius[m]


def colonize(roots: np.ndarray, attractors: np.ndarray, lungs: LungMap, side: int, rng: np.random.Generator, *,
             step: float, kill: float, influence: float, jitter: float, grace: float = 30.0,
             max_nodes: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """Grow a tree from ``roots`` towards ``attractors``.

    Parameters
    ----------
    roots : ndarray
        ``(R, 3)`` root positions (V frame).
    attractors : ndarray
        ``(M, 3)`` attraction points.
    lungs : LungMap
        New nodes must lie in lung ``side`` (or within ``grace`` mm of their root).
    side : int
        1 or 2.
    rng : numpy.random.Generator
        Jitter stream.
    step, kill, influence, jitter : float
        Growth step (mm), kill distance (mm), influence radius (mm) and direction jitter.
    grace : float
        Distance from the root within which nodes may lie outside the lung (the hilum).
    max_nodes : int
        Safety cap.

    Returns
    -------
    pos, parent : ndarray
        Node positions ``(N, 3)`` and parent indices ``(N,)``.
    """
    pos = [np.asarray(r, float) for r in roots]
    parent = [-1] * len(pos)
    root_of = list(range(len(pos)))
    last_dir = [np.zeros(3) for _ in pos]
    P = np.array(pos)
    d = np.linalg.norm(attractors[:, None, :] - P[None], axis=2)
    near, dist = d.argmin(1), d.min(1)
    alive = np.ones(len(attractors), bool)
    while len(pos) < max_nodes:
        act = alive & (dist < influence)
        if not act.any():
            break
        ids = near[act]
        v = attractors[act] - P[ids]
        v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
        acc = np.zeros((len(pos), 3))
        np.add.at(acc, ids, v)
        grow = np.unique(ids)
        new, new_parent = [], []
        for g in grow:
            dv = acc[g] / (np.linalg.norm(acc[g]) + 1e-9)
            if parent[g] >= 0:
                own = P[g] - P[parent[g]]
                dv = dv + 0.3 * own / (np.linalg.norm(own) + 1e-9)
            dv = dv + jitter * rng.normal(size=3)
            dv /= np.linalg.norm(dv) + 1e-9
            q = P[g] + step * dv
            stuck = float(dv @ last_dir[g]) > 0.995
            inside = lungs.side_at(q[None])[0] == side or np.linalg.norm(q - P[root_of[g]]) < grace
            if stuck or not inside:
                alive[act & (near == g)] = False
                continue
            last_dir[g] = dv
            new.append(q)
            new_parent.append(int(g))
        if not new:
            continue
        N = np.array(new)
        base = len(pos)
        for q, g in zip(new, new_parent):
            pos.append(q)
            parent.append(g)
            root_of.append(root_of[g])
            last_dir.append(np.zeros(3))
        P = np.array(pos)
        idx = np.flatnonzero(alive)
        dn = np.linalg.norm(attractors[idx, None, :] - N[None], axis=2)
        better = dn.min(1) < dist[idx]
        near[idx[better]] = base + dn.argmin(1)[better]
        dist[idx[better]] = dn.min(1)[better]
        alive[idx[dist[idx] < kill]] = False
    return np.array(pos), np.array(parent, int)


def pipe_radii(parent: np.ndarray, root_radius: float, gamma: float) -> np.ndarray:
    """Pipe-model radii: leaves 1, ``r^gamma`` summed upwards, each root's tree scaled to ``root_radius``.

    Parameters
    ----------
    parent : ndarray
        Parent indices (parents precede children).
    root_radius : float
        Radius given to every root.
    gamma : float
        Pipe exponent (2 area-preserving .. 3 Murray).

    Returns
    -------
    ndarray
        Radius of each node's segment.
    """
    n = len(parent)
    acc = np.zeros(n)
    has_child = np.zeros(n, bool)
    has_child[parent[parent >= 0]] = True
    acc[~has_child] = 1.0
    for i in range(n - 1, -1, -1):
        if parent[i] >= 0:
            acc[parent[i]] += acc[i]
    raw = acc ** (1.0 / gamma)
    root = np.arange(n)
    for i in range(n):
        if parent[i] >= 0:
            root[i] = root[parent[i]]
    r = raw * root_radius / raw[root]
    return np.where(has_child, r, r * 0.7)


def grow_trees(L: Layout, fr: Frame, lungs: LungMap, rng: np.random.Generator) -> list[Tree]:
    """Arteries, veins and airways of both lungs.

    Parameters
    ----------
    L : Layout
        The anatomy (its hilar roots).
    fr : Frame
        For mapping the roots into the V frame.
    lungs : LungMap
        Where the trees may grow.
    rng : numpy.random.Generator
        The case's tree stream.

    Returns
    -------
    list of Tree
    """
    trees: list[Tree] = []
    density = rng.uniform(0.8, 1.25)
    g_v, g_a = rng.uniform(2.4, 2.9), rng.uniform(2.6, 3.0)
    for side, name in ((RIGHT, "right"), (LEFT, "left")):
        vol = float((lungs.side == side).sum() * np.prod(lungs.spacing))
        n_art = int(density * vol / 1500.0)
        att_a = lungs.sample(rng, n_art, side, lo=1.5)
        att_v = lungs.sample(rng, int(n_art * 0.9), side, lo=1.5)
        roots_a = fr.a_to_v(np.array(L.art_roots[name]))
        roots_v = fr.a_to_v(np.array(L.vein_roots[name]))
        root_b = fr.a_to_v(np.array([L.bronchus_roots[name]]))
        for kind, roots, att, step, kill, r0, gam in (
            ("artery", roots_a, att_a, 3.0, 5.0, rng.uniform(6.0, 8.0), g_v),
            ("vein", roots_v, att_v, 3.0, 5.0, rng.uniform(5.0, 6.5), g_v),
            ("airway", root_b, att_a[: max(len(att_a) // 6, 20)], 4.0, 10.0, rng.uniform(4.8, 5.8), g_a),
        ):
            pos, par = colonize(roots, att, lungs, side, rng, step=step, kill=kill, influence=35.0, jitter=0.12)
            trees.append(Tree(kind, side, pos, par, pipe_radii(par, r0, gam)))
    return trees
