"""The training-family phantom generator (:mod:`ai.phantoms`): determinism, patient-frame labels,
vessel trees, nodules (counts, kinds, sites, volumes), HU ranges, padding and outputs."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pytest

from ai.phantoms import (
    LEFT_LUNG,
    NODULE,
    RIGHT_LUNG,
    VESSEL,
    NoduleKind,
    NoduleSite,
    Phantom,
    generate,
    scan_protocol,
)


@cache
def small(seed: int, matrix: int = 64, slices: int | None = 24, **kw: object) -> Phantom:
    return generate(seed, matrix=matrix, slices=slices, **kw)  # type: ignore[arg-type]


def lps_of(p: Phantom, mask: np.ndarray) -> np.ndarray:
    """LPS millimetres of the voxels of a ``[z, y, x]`` mask."""
    zyx = np.argwhere(mask)
    return p.index_to_lps(zyx[:, ::-1])


def erode(mask: np.ndarray, n: int = 1) -> np.ndarray:
    """6-neighbour binary erosion, ``n`` times (edges count as outside)."""
    m = mask.copy()
    for _ in range(n):
        e = m.copy()
        for ax in range(3):
            e[(slice(None),) * ax + (slice(1, None),)] &= m[(slice(None),) * ax + (slice(None, -1),)]
            e[(slice(None),) * ax + (slice(None, -1),)] &= m[(slice(None),) * ax + (slice(1, None),)]
            e[(slice(None),) * ax + (0,)] = False
            e[(slice(None),) * ax + (-1,)] = False
        m = e
    return m


def test_same_seed_same_phantom() -> None:
    a = generate(11, matrix=48, slices=12, hard_negatives=True)
    b = generate(11, matrix=48, slices=12, hard_negatives=True)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.hard_negatives is not None and b.hard_negatives is not None
    np.testing.assert_array_equal(a.hard_negatives, b.hard_negatives)
    assert a.nodules == b.nodules and a.meta == b.meta
    np.testing.assert_array_equal(a.direction, b.direction)
    c = generate(12, matrix=48, slices=12)
    assert not np.array_equal(a.hu, c.hu)
    assert a.hu.dtype == np.int16 and a.labels.dtype == np.uint8 and a.hu.shape == (12, 48, 48)


def test_nodules_do_not_depend_on_the_matrix() -> None:
    for seed in (2, 4):
        a, b = small(seed, 40, 6), small(seed, 96, 6)
        assert [(n.kind, n.site, n.side, round(n.volume_mm3, 3)) for n in a.nodules] == \
            [(n.kind, n.site, n.side, round(n.volume_mm3, 3)) for n in b.nodules]


def _seeds_by_position(n: int = 60) -> dict[str, int]:
    found: dict[str, int] = {}
    for seed in range(n):
        pos = str(scan_protocol(seed).position)
        found.setdefault(pos, seed)
        if len(found) == 4:
            break
    return found


@pytest.mark.parametrize("position", ["HFS", "HFP", "FFS", "FFP"])
def test_lungs_are_on_the_patients_sides_in_every_position(position: str) -> None:
    seed = _seeds_by_position()[position]
    p = small(seed, 64, None, slice_mm=(5.0, 5.0))
    assert p.meta["position"] == position
    d = p.direction
    assert np.allclose(np.abs(d), np.eye(3)) and np.isclose(np.linalg.det(d), 1.0)
    right, left = lps_of(p, p.labels == RIGHT_LUNG), lps_of(p, p.labels == LEFT_LUNG)
    assert len(right) > 200 and len(left) > 200
    assert right[:, 0].mean() < -20 < 20 < left[:, 0].mean()
    # The apices are superior, the spine posterior to the lungs, in patient terms.
    lungs = np.concatenate([right, left])
    assert lungs[:, 2].max() > lungs[:, 2].mean() + 60
    bone = lps_of(p, (p.hu > 350) & (p.labels == 0))
    near = np.abs(bone[:, 0] - lungs[:, 0].mean()) < 25
    zyx = np.argwhere((p.hu > 350) & (p.labels == 0))[near]
    mask = np.zeros(p.hu.shape, bool)
    mask[tuple(zyx.T)] = True
    cc = cc3d.connected_components(mask, connectivity=26)
    spine = lps_of(p, cc == np.argmax(np.bincount(cc.ravel())[1:]) + 1)  # the largest midline bone: the column
    assert spine[:, 1].mean() > lungs[:, 1].mean() + 20
    # The affine agrees with direction, spacing and origin; NIfTI is RAS.
    np.testing.assert_allclose(p.affine_ras[:3, 3], np.array(p.origin) * [-1, -1, 1])
    np.testing.assert_allclose(p.index_to_lps(np.zeros(3)), p.origin)


def test_vessel_trees_connect_to_the_hilum_and_taper() -> None:
    p = small(3, 160, 4)
    assert {t.name for t in p.trees} >= {"right artery", "left artery"}
    for t in p.trees:
        kids = t.parent >= 0
        assert (t.parent[kids] < np.flatnonzero(kids)).all()  # a tree: parents first
        np.testing.assert_allclose(t.start[kids], t.end[t.parent[kids]], atol=1e-6)  # branches join
        assert len(t.radius) > 50
        dist = np.linalg.norm((t.start + t.end) / 2 - t.root, axis=1)
        assert (t.radius[kids] <= t.radius[t.parent[kids]] + 1e-9).all()  # never wider than the parent
        length = np.linalg.norm(t.end - t.start, axis=1)
        thirds = np.array_split(np.argsort(dist), 3)  # near, middle, far from the hilum
        calibre = [(t.radius[i] ** 3 * length[i]).sum() / (t.radius[i] ** 2 * length[i]).sum() for i in thirds]
        assert calibre[0] > calibre[1] > calibre[2], (t.name, calibre)  # volume-weighted mean radius
        quarters = np.array_split(np.argsort(dist), 4)
        assert t.radius[quarters[0]].mean() > t.radius[quarters[-1]].mean()
        assert t.radius.max() > 3.5 and t.radius.min() < 1.3  # about 8-14 mm to about 1-2 mm across


def test_rendered_vessels_are_few_components_reaching_the_hilum() -> None:
    p = generate(3, matrix=128, slice_mm=(2.0, 2.0), hard_negatives=True, noise=False)
    assert p.structures is not None
    hila = {s: np.asarray(v) for s, v in p.meta["hila_lps"].items()}
    for side, lab in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
        ves = ((p.structures & VESSEL) > 0) & (p.labels == lab)
        cc = cc3d.connected_components(ves, connectivity=26)
        sizes = np.bincount(cc.ravel())[1:]
        big = np.argsort(sizes)[::-1][: max(1, int((sizes > 0.02 * sizes.sum()).sum()))] + 1
        assert len(big) <= 8, (side, len(big))
        assert sizes[big - 1].sum() > 0.8 * sizes.sum(), side  # nearly all vessel voxels hang on a few trees
        for comp in big:
            pts = lps_of(p, cc == comp)
            assert np.linalg.norm(pts - hila[side], axis=1).min() < 45.0, side  # each reaches the hilum


def test_healthy_and_nodule_counts_and_labels() -> None:
    counts = []
    for seed in range(12):
        p = small(seed, 64, None, slice_mm=(3.0, 3.0))
        nod = p.labels == NODULE
        counts.append(len(p.nodules))
        if not p.nodules:
            assert not nod.any()
            continue
        cc = cc3d.connected_components(nod, connectivity=26)
        assert 1 <= cc.max() <= len(p.nodules)
        hit = set()
        for n in p.nodules:
            z, y, x = p.nodule_index(n)
            assert p.labels[z, y, x] == NODULE
            hit.add(int(cc[z, y, x]))
            lung = RIGHT_LUNG if n.side == "right" else LEFT_LUNG
            near = p.labels[max(z - 3, 0): z + 4, max(y - 6, 0): y + 7, max(x - 6, 0): x + 7]
            assert (near == lung).any() and not (near == (RIGHT_LUNG + LEFT_LUNG - lung)).any()
        assert hit == set(range(1, cc.max() + 1))  # every component is a drawn nodule
    assert min(counts) == 0 and max(counts) >= 3 and max(counts) <= 6
    assert sum(c == 0 for c in counts) >= 2


def test_kinds_sites_and_shapes_across_30_seeds() -> None:
    kinds, sites, shapes, healthy = set(), set(), set(), 0
    for seed in range(30):
        p = small(seed, 40, 6)
        healthy += not p.nodules
        for n in p.nodules:
            kinds.add(n.kind)
            sites.add(n.site)
            shapes.add(n.shape)
            assert 2.0 <= n.diameter_mm <= 31.0
            assert n.side in ("right", "left")
            assert abs(np.pi / 6 * n.diameter_mm**3 - n.volume_mm3) < 1e-6 * n.volume_mm3 + 1e-6
    assert kinds == set(NoduleKind) and sites == set(NoduleSite) and shapes == {"sphere", "ellipsoid", "lobulated"}
    assert 5 <= healthy <= 20


def test_nodule_volumes_match_labels_at_fine_spacing() -> None:
    p = generate(4, matrix=384, fov_mm=(310.0, 310.0), slice_mm=(0.8, 0.8), confounders=False, noise=False)
    vox = float(np.prod(p.spacing))
    cc = cc3d.connected_components(p.labels == NODULE, connectivity=6)
    checked = 0
    for n in p.nodules:
        comp = cc[p.nodule_index(n)]
        if n.diameter_mm < 6 or comp == 0:
            continue
        got = (cc == comp).sum() * vox
        assert abs(got - n.volume_mm3) < 0.08 * n.volume_mm3 + 3 * vox, (n, got)
        checked += 1
    assert checked >= 2


def test_hu_ranges_away_from_edges() -> None:
    seed = next(s for s in range(60) if scan_protocol(s).contrast is None and scan_protocol(s).kernel == "smooth")
    p = generate(seed, matrix=256, slices=40, noise=False, hard_negatives=True, confounders=False)
    assert p.meta["contrast"] == "none" and p.hard_negatives is not None
    lung = erode((p.labels == RIGHT_LUNG) | (p.labels == LEFT_LUNG), 2) & ~p.hard_negatives
    assert -900 <= np.median(p.hu[lung]) <= -700
    # Vessels without contrast: the centrelines of the larger intrapulmonary vessels.
    vals = []
    for t in p.trees:
        big = t.radius > 3.5
        mid = (t.start[big] + t.end[big]) / 2
        ijk = np.rint((np.linalg.inv(p.direction * np.asarray(p.spacing)) @ (mid - np.asarray(p.origin)).T).T).astype(int)
        ok = ((ijk >= 0) & (ijk < np.array(p.hu.shape[::-1]))).all(1)
        for i, j, k in ijk[ok]:
            if p.labels[k, j, i] in (RIGHT_LUNG, LEFT_LUNG):
                vals.append(p.hu[k, j, i])
    assert len(vals) >= 5 and 20 <= np.median(vals) <= 60
    # Fat: the subcutaneous fat peak of the noise-free image.
    body = (p.hu > -500) & (p.labels == 0)
    soft = p.hu[body & (p.hu > -200) & (p.hu < -50)]
    hist, edges = np.histogram(soft, bins=np.arange(-200, -49, 2))
    mode = edges[np.argmax(hist)] + 1
    assert -120 <= mode <= -80
    assert -120 <= p.meta["tissue_hu"]["fat"] <= -80


def test_padding_and_noise() -> None:
    padded = next(s for s in range(40) if scan_protocol(s).padding is not None)
    plain = next(s for s in range(40) if scan_protocol(s).padding is None)
    p = small(padded, 64, 8)
    pad = p.meta["padding"]
    assert pad in (-2000, -3024)
    assert (p.hu[:, 0, 0] == pad).all() and (p.hu[:, -1, -1] == pad).all()
    assert (p.hu == pad).mean() > 0.15
    q = small(plain, 64, 8)
    assert q.hu.min() >= -1024
    clean = generate(plain, matrix=64, slices=8, noise=False)
    sigma = float(np.std(q.hu.astype(float) - clean.hu))
    assert 0.5 * q.meta["noise_hu"] < sigma < 1.5 * q.meta["noise_hu"]


def test_hard_negatives_and_nifti(tmp_path: Path) -> None:
    p = generate(4, matrix=64, slices=20, hard_negatives=True)
    assert p.hard_negatives is not None and p.hard_negatives.any()
    assert not (p.hard_negatives & (p.labels == NODULE)).any()
    assert small(4, 64, 20).hard_negatives is None
    p.write_nifti(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz", tmp_path / "h.nii.gz")
    img, lab = nib.load(tmp_path / "i.nii.gz"), nib.load(tmp_path / "l.nii.gz")
    np.testing.assert_allclose(img.affine, p.affine_ras, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(lab.dataobj).transpose(2, 1, 0), p.labels)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), p.hu)
    hn = np.asarray(nib.load(tmp_path / "h.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(hn > 0, p.hard_negatives)
    with pytest.raises(ValueError):
        small(4, 64, 20).write_nifti(tmp_path / "a.nii", tmp_path / "b.nii", tmp_path / "c.nii")


def test_preview_png(tmp_path: Path) -> None:
    from ai.phantoms.preview import render_preview

    out = render_preview(generate(4, matrix=64, slices=30, hard_negatives=True), tmp_path / "p.png")
    assert out.stat().st_size > 10_000


def test_calcified_nodules_come_in_patterns_with_the_calcification_inside() -> None:
    """Diffuse, central and eccentric calcification, about as often as drawn; a partly calcified nodule is soft
    tissue around a calcified part that lies wholly inside it, and which pattern a nodule gets draws nothing from
    the phantom's own stream."""
    from collections import Counter

    from ai.phantoms.lesions import CALCIFICATION, _calcification, make_blob

    rng = np.random.default_rng(11)
    seen: Counter[str] = Counter()
    for i in range(300):
        shape = ["sphere", "ellipsoid", "lobulated"][i % 3]
        blob = make_blob(rng, shape, np.pi / 6 * rng.uniform(4, 12) ** 3, centre=rng.uniform(-150, 150, 3))
        hu, core_hu, core = _calcification(blob, 600.0)
        assert _calcification(blob, 600.0)[:2] == (hu, core_hu)  # its own stream, seeded by the nodule
        if core is None:
            seen["diffuse"] += 1
            assert hu == 600.0
            continue
        assert -20 <= hu <= 80 and core_hu == 600.0
        off = float(np.linalg.norm(core.centre - blob.centre)) / blob.bound
        seen["central" if off < 0.15 else "eccentric"] += 1
        pts = core.surface(200)
        inside = blob.sdf(*(pts[:, k].astype(np.float32) for k in range(3)))
        assert (inside > 0).all(), (shape, float(inside.min()))
        assert 0.25 < core.volume() ** (1 / 3) / blob.volume() ** (1 / 3) < 0.65
    for pattern, p in CALCIFICATION.items():
        assert abs(seen[pattern] / 300 - p) < 0.08, seen
