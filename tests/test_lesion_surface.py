"""Nodule volumes where the nodule touches the chest wall or a vessel: the organ's surface and the opening's rim."""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pytest

from ai.measure import LesionVolume
from ai.organ_surface import inside_share
from tests.test_postprocess_measure import _blur, _lesion_error, _vessel_scene, scene

LUNG, WALL, NODULE = -850.0, 40.0, 30.0


def _juxtapleural(spacing: tuple[float, float, float], diameter: float, depth: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """A nodule of ``diameter`` mm on an oblique chest wall, its centre ``depth`` of its radius inside the lung.

    The truth is the sphere's part on the lung's side (as the phantoms clip a juxtapleural nodule); the
    network's component spills 2 mm into the wall, and the lung label stops at the wall, as a network's would.
    Returns labels (1 lung, 3 the component, 0 the wall), the CT image and the true volume (mm3).
    """
    r = diameter / 2
    extent = 2 * (r + 14.0)
    shape = tuple(int(np.ceil(extent / s)) for s in spacing)
    normal = np.array([0.35, 0.45, 0.82])
    normal /= np.linalg.norm(normal)
    rng = np.random.default_rng(seed)
    centre = np.array([n * s / 2 for n, s in zip(shape, spacing)]) + rng.uniform(-0.5, 0.5, 3) * np.array(spacing)
    plane = centre + normal * depth * r  # the wall begins here, along the normal
    sub = 4
    lung_frac = np.zeros(shape, np.float32)
    nod_frac = np.zeros(shape, np.float32)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    for oz in offs:
        for oy in offs:
            for ox in offs:
                pos = (idx + [oz, oy, ox] + 0.5) * spacing
                lung_side = (pos - plane) @ normal < 0
                inside = np.linalg.norm(pos - centre, axis=-1) <= r
                lung_frac += lung_side
                nod_frac += inside & lung_side
    lung_frac /= sub**3
    nod_frac /= sub**3
    true_mm3 = float(nod_frac.sum() * np.prod(spacing))
    img = LUNG * (lung_frac - nod_frac) + NODULE * nod_frac + WALL * (1 - lung_frac)
    img = _blur(img, [0.0, 0.7 / spacing[1], 0.7 / spacing[2]]) + rng.normal(0, 15, shape).astype(np.float32)
    pos = (idx + 0.5) * spacing
    comp = (np.linalg.norm(pos - centre, axis=-1) <= r) & ((pos - plane) @ normal < 2.0)  # 2 mm into the wall
    labels = np.where(comp, 3, np.where(lung_frac >= 0.5, 1, 0)).astype(np.uint8)
    return labels, img, true_mm3


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8), (2.0, 1.8, 1.8), (5.0, 0.8, 0.8)])
def test_surface_cut_measures_a_juxtapleural_nodule_up_to_the_wall(spacing: tuple[float, float, float]) -> None:
    """The wall has the nodule's density and the component spills into it: grown alone counts the wall it took in
    (+6 % to +40 %, the most for small nodules and shallow ones); with ``surface_cut`` the pleura fitted around the
    nodule ends it: within 3 % from 9 mm up, within 8 % at 7 mm (measured: 0.0-2.1 % and 0.1-6.4 %)."""
    for diameter, depth in ((7.0, 0.5), (9.0, 0.3), (12.0, 0.5), (16.0, 0.7)):
        labels, img, true_mm3 = _juxtapleural(spacing, diameter, depth)
        plain, _ = _lesion_error(labels, spacing, true_mm3, image=img, lesion_volume=LesionVolume("grown", small_core="brightest"))
        cut, methods = _lesion_error(labels, spacing, true_mm3, image=img,
                                     lesion_volume=LesionVolume("grown", small_core="brightest", surface_cut=True))
        assert methods == ["grown"]
        assert plain > 0.05, (diameter, depth, plain)
        assert abs(cut) <= (0.03 if diameter >= 9 else 0.08), (diameter, depth, plain, cut)


def test_surface_cut_leaves_a_nodule_in_the_lung_alone() -> None:
    """A nodule that touches no wall is measured exactly as without the cut; inside_share says there is no wall."""
    spacing = (1.0, 0.7, 0.7)
    sc = scene(12.0, (1.3, 1.6), spacing)
    img = sc.ct(seed=2)
    labels = np.where(cc3d.largest_k(img > -410, 1, connectivity=26) > 0, 3, 1).astype(np.uint8)
    a, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown"))
    b, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", surface_cut=True))
    assert a == b
    comp = labels == 3
    dist = np.where(comp, 0.0, 5.0)
    assert inside_share(comp, labels == 1, labels == 0, img, dist, spacing, LUNG, 15.0) is None


def test_surface_cut_ignores_unlabelled_voxels_at_an_isolated_nodules_rim() -> None:
    """A network leaves a few voxels at a nodule's rim labelled neither lung nor nodule.  0.5.2 took such an island
    for a wall that the nodule touches, and fitted a surface to it and the chest wall 10 mm away together, through
    the nodule: an isolated 19.8 mm nodule of the training family (seed 3054, its neighbourhood saved in
    ``tests/data``) kept 21 % of its voxels and read -79 %.  An island that reaches neither the box's edge nor
    beyond the fitting annulus is no wall: no cut."""
    d = np.load(Path(__file__).parent / "data" / "surface-island-3054.npz")
    comp, organ, outside = d["comp"], d["organ"], d["outside"]
    island = outside & (d["dist"] < 4.0)
    assert 0 < np.count_nonzero(island) <= 20 and (d["dist"][outside & ~island] > 8.0).all()  # the island, and the wall
    args = (d["image"], d["dist"], tuple(d["spacing"]), float(d["background"]), float(d["noise"]))
    assert inside_share(comp, organ, outside, *args) is None  # 0.5.2: a share of 0.21 on the nodule


def test_inside_share_needs_a_smooth_wall_around_the_nodule() -> None:
    """A wall of scattered specks (no surface) gives no share, rather than a surface through noise."""
    rng = np.random.default_rng(0)
    spacing = (1.0, 1.0, 1.0)
    labels = np.ones((30, 30, 30), np.uint8)
    labels[rng.random(labels.shape) < 0.2] = 0
    labels[12:18, 12:18, 12:18] = 3
    comp = labels == 3
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~comp, sampling=spacing)
    img = np.where(labels == 0, WALL, LUNG).astype(np.float32)
    assert inside_share(comp, labels == 1, labels == 0, img, dist, spacing, LUNG, 15.0) is None


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8)])
def test_adjacent_rim_takes_a_touching_vessel_off_whole(spacing: tuple[float, float, float]) -> None:
    """``open_rim`` ``adjacent`` leaves no vessel stub: closer to the truth than ``ball`` on the vessel scene."""
    sc, labels, img = _vessel_scene(spacing)
    ball, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", open_mm=3.0))
    adjacent, methods = _lesion_error(labels, spacing, sc.true_mm3, image=img,
                                      lesion_volume=LesionVolume("grown", open_mm=3.0, open_rim="adjacent"))
    assert methods == ["grown"]
    assert abs(adjacent) <= 0.10 and abs(adjacent) <= abs(ball) + 0.01, (ball, adjacent)


def test_adjacent_rim_gives_back_what_a_coarse_grid_shaves_off() -> None:
    """No vessel: with ``adjacent`` the opening changes a round or ellipsoidal nodule's volume by under 3 % on fine and
    coarse grids (the rim the opening shaves off lies within a voxel step of the opened nodule)."""
    for spacing, d in (((1.0, 0.7, 0.7), 12.0), ((3.0, 3.0, 3.0), 14.0), ((2.0, 1.8, 1.8), 10.0), ((2.5, 0.8, 0.8), 16.0)):
        for aspect in ((1.0, 1.0), (1.3, 1.6)):
            sc = scene(d, aspect, spacing)
            img = sc.ct(seed=2)
            labels = np.where(cc3d.largest_k(img > -410, 1, connectivity=26) > 0, 3, 1).astype(np.uint8)
            plain, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown"))
            opened, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img,
                                      lesion_volume=LesionVolume("grown", open_mm=3.0, open_rim="adjacent"))
            assert abs(opened - plain) < 0.03, (spacing, d, aspect, plain, opened)


def test_shell_edge_only_leaves_out_a_vessel_past_the_region() -> None:
    """A 12 mm nodule with a 5 mm vessel leaving it, and a network component 4 mm short of the nodule's edge that runs
    along the vessel: the region stops ``grow_mm`` beyond the component, and its shell counts the next layer of the
    vessel whole (a 1.8 mm voxel layer of it: +3 %); with ``shell_edge_only`` that layer (bright, with more vessel
    beyond it) counts nothing (measured: +11.3 % -> +8.0 %, the rest being the vessel within the region)."""
    spacing = (2.0, 1.8, 1.8)
    sc = scene(12.0, (1.0, 1.0), spacing)
    f_nodule = sc.fractions(sc.shape, spacing)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(sc.shape, spacing)], indexing="ij")
    vessel = (np.hypot(z - sc.centre[0], y - sc.centre[1]) <= 2.5) & (x - sc.centre[2] > 0)
    img = -850.0 + np.clip(f_nodule + _blur(vessel.astype(np.float32), [0.25, 0.4, 0.4]), 0, 1) * 880.0
    img = img + np.random.default_rng(3).normal(0, 20, img.shape).astype(np.float32)
    radius = np.sqrt((z - sc.centre[0]) ** 2 + (y - sc.centre[1]) ** 2 + (x - sc.centre[2]) ** 2)
    labels = np.where((radius <= 4.5) | (vessel & (radius <= 10.0)), 3, 1).astype(np.uint8)
    plain, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", small_core="brightest"))
    edge, methods = _lesion_error(labels, spacing, sc.true_mm3, image=img,
                                  lesion_volume=LesionVolume("grown", small_core="brightest", shell_edge_only=True))
    assert methods == ["grown"]
    assert edge < plain - 0.02 and edge > 0.0, (plain, edge)


def test_shell_edge_only_keeps_a_nodules_own_edge() -> None:
    """No attachment: the shell is the nodule's partial-volume edge, a thick slice's cap included, and counts as before
    (within 2 %) on fine, thick-slice and coarse grids, from 6 mm up."""
    for spacing in ((1.0, 0.7, 0.7), (5.0, 1.0, 1.0), (3.0, 3.0, 3.0), (2.0, 1.8, 1.8)):
        for d in (6.0, 12.0):
            sc = scene(d, (1.3, 1.6), spacing)
            img = sc.ct(seed=2)
            labels = np.where(cc3d.largest_k(sc.network(1.0, grid_mm=2.0) >= 0.5, 1, connectivity=26) > 0, 3, 1).astype(np.uint8)
            kw = {"small_core": "brightest"}
            plain, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", **kw))  # type: ignore[arg-type]
            edge, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img,
                                    lesion_volume=LesionVolume("grown", shell_edge_only=True, **kw))  # type: ignore[arg-type]
            assert abs(edge - plain) < 0.02, (spacing, d, plain, edge)


def test_a_manifest_turns_them_on() -> None:
    """``measurement.lesion_volume`` keys reach the measurement (the shipped chest model uses all three)."""
    from ai.bundle import _lesion_volume

    lv = _lesion_volume({"lesion_volume": {"method": "grown", "open_mm": 3, "open_rim": "adjacent", "surface_cut": True,
                                           "shell_edge_only": True}})
    assert lv == LesionVolume("grown", open_mm=3.0, open_rim="adjacent", surface_cut=True, shell_edge_only=True)
    assert _lesion_volume({}) == LesionVolume()



@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8), (2.0, 1.8, 1.8)])
def test_the_opening_leaves_a_noisy_ground_glass_nodule_whole(spacing: tuple[float, float, float]) -> None:
    """Ground glass (-600 HU in -850 HU lung) under 80 HU of noise thresholds into a ragged region with holes all
    through it; a ball erodes that apart: 0.5.1's opening lost up to 90 % of such nodules, and 0.5.2's options before
    the fix up to 99 % (a 12 mm one at 50 HU: -86 % against -3 % unopened).
    The erosion runs on the region with its holes filled, and with ``open_contrast`` a lesion this faint against its
    noise is not opened at all: within 3 % of the unopened volume (measured: 0-2.1 %, from the shell rule's speckles)."""
    for d in (8.0, 12.0, 20.0):
        sc = scene(d, (1.3, 1.6), spacing)
        img = sc.ct(seed=3, core=-600.0, psf_mm=1.0, noise=80.0)
        labels = np.where(cc3d.largest_k(sc.network(1.0, grid_mm=2.0) >= 0.5, 1, connectivity=26) > 0, 3, 1).astype(np.uint8)
        kw = {"small_core": "brightest"}
        plain, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", **kw))  # type: ignore[arg-type]
        opened, methods = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume(
            "grown", open_mm=3.0, open_contrast=6.0, open_rim="adjacent", shell_edge_only=True, **kw))  # type: ignore[arg-type]
        assert methods == ["grown"]
        assert abs(opened - plain) <= 0.03, (spacing, d, plain, opened)


def test_filled_holes_keep_a_ball_opening_from_eroding_ground_glass_apart() -> None:
    """Without the contrast gate, the ball opening of 0.5.1 keeps a noisy 12 mm ground-glass nodule within 10 % of the
    unopened volume once the erosion ignores its noise holes (before: -48 % against -3 % unopened at 50 HU of noise)."""
    spacing = (1.0, 0.7, 0.7)
    for noise in (50.0, 80.0):
        sc = scene(12.0, (1.3, 1.6), spacing)
        img = sc.ct(seed=3, core=-600.0, psf_mm=1.0, noise=noise)
        labels = np.where(cc3d.largest_k(sc.network(1.0, grid_mm=2.0) >= 0.5, 1, connectivity=26) > 0, 3, 1).astype(np.uint8)
        plain, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img, lesion_volume=LesionVolume("grown", small_core="brightest"))
        opened, _ = _lesion_error(labels, spacing, sc.true_mm3, image=img,
                                  lesion_volume=LesionVolume("grown", small_core="brightest", open_mm=3.0))
        assert abs(opened - plain) <= 0.10, (noise, plain, opened)
