"""The independent evaluation phantom family (bench/evalset): determinism, frozen checksums, label sanity.

The family is frozen before training: the checksums below pin the two smoke
cases, so any change to any module of bench/evalset fails here.  Do not
update them to make a change pass; a changed family is a new family.
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pytest

from bench.evalset import Case, frozen_set, generate_case, write_case
from bench.evalset.frozen import SMOKE_MATRIX

# sha256(hu.tobytes() + labels.tobytes()) of the smoke cases at SMOKE_MATRIX
SMOKE_CHECKSUMS = {
    9900: "df1e6e666ff26b693a2033a4eb7272cbad7622d2663a0db773b7fba6e23b5e59",
    9901: "afa65924a236e306784120da1e70e8444f187a4422e51ab7da21d429c3cd95aa",
}


@pytest.fixture(scope="module")
def smoke() -> dict[int, Case]:
    return {seed: generate_case(seed, healthy=healthy, matrix=SMOKE_MATRIX) for seed, healthy in frozen_set("smoke")}


def _lps_centroid(case: Case, label: int) -> np.ndarray:
    z, y, x = np.nonzero(case.labels == label)
    idx = np.array([x.mean(), y.mean(), z.mean()])
    return np.asarray(case.origin_lps) + case.direction @ (idx * np.asarray(case.spacing))


def test_frozen_lists() -> None:
    ev = frozen_set("eval")
    assert sum(1 for _, h in ev if not h) >= 24 and sum(1 for _, h in ev if h) >= 24
    assert len({s for s, _ in ev}) == len(ev)
    assert len(frozen_set("smoke")) == 2
    with pytest.raises(ValueError):
        frozen_set("train")


def test_same_seed_same_arrays(smoke: dict[int, Case]) -> None:
    seed, healthy = frozen_set("smoke")[0]
    again = generate_case(seed, healthy=healthy, matrix=SMOKE_MATRIX)
    assert np.array_equal(again.hu, smoke[seed].hu)
    assert np.array_equal(again.labels, smoke[seed].labels)
    assert [n.centre_mm for n in again.nodules] == [n.centre_mm for n in smoke[seed].nodules]


def test_frozen_checksums(smoke: dict[int, Case]) -> None:
    got = {seed: case.checksum() for seed, case in smoke.items()}
    assert got == SMOKE_CHECKSUMS, "bench/evalset changed: the family is frozen (see its docstring)"


def test_types_and_geometry(smoke: dict[int, Case]) -> None:
    for case in smoke.values():
        assert case.hu.dtype == np.int16 and case.labels.dtype == np.uint8
        assert case.hu.shape == case.labels.shape and case.hu.shape[1:] == (SMOKE_MATRIX, SMOKE_MATRIX)
        assert set(np.unique(case.labels)) <= {0, 1, 2, 3}
        d = case.direction
        assert np.allclose(d @ d.T, np.eye(3)) and np.isclose(np.linalg.det(d), 1.0)


def test_positions_cover_supine_and_prone(smoke: dict[int, Case]) -> None:
    positions = {case.meta["acquisition"]["position"] for case in smoke.values()}  # type: ignore[index]
    assert any(p.endswith("S") for p in positions) and any(p.endswith("P") for p in positions)


def test_right_lung_on_patient_right(smoke: dict[int, Case]) -> None:
    for case in smoke.values():
        right, left = _lps_centroid(case, 1), _lps_centroid(case, 2)
        assert right[0] < 0 < left[0], (case.meta["acquisition"], right, left)


def test_healthy_has_no_nodule(smoke: dict[int, Case]) -> None:
    for seed, healthy in frozen_set("smoke"):
        case = smoke[seed]
        if healthy:
            assert not case.nodules and not (case.labels == 3).any()
        else:
            assert case.nodules and (case.labels == 3).any()


def test_nodule_components_and_volumes(smoke: dict[int, Case]) -> None:
    for case in smoke.values():
        if not case.nodules:
            continue
        cc = cc3d.connected_components((case.labels == 3).astype(np.uint8), connectivity=26)
        voxel = float(np.prod(case.spacing))
        comps = []
        for n in case.nodules:
            i, j, k = (int(round(c / s)) for c, s in zip(n.centre_mm, case.spacing))
            assert case.labels[k, j, i] == 3, n
            comps.append(int(cc[k, j, i]))
            assert n.kind in ("solid", "part-solid", "ground-glass", "calcified")
            assert n.site in ("isolated", "juxtavascular", "juxtapleural") and n.side in ("right", "left")
            assert 3.5 <= n.diameter_mm <= 30
        assert int(cc.max()) == len(set(comps))  # one component per nodule, unless two touch
        assert len(set(comps)) >= len(case.nodules) - 1
        for n, c in zip(case.nodules, comps):
            if comps.count(c) > 1:
                continue
            labelled = float((cc == c).sum()) * voxel
            assert abs(labelled - n.volume_mm3) <= 0.3 * n.volume_mm3 + 3 * voxel, (n, labelled)


def test_write_case(tmp_path: Path, smoke: dict[int, Case]) -> None:
    import json

    import nibabel as nib

    seed, _ = frozen_set("smoke")[0]
    case = smoke[seed]
    paths = write_case(case, tmp_path, "c")
    img, lab = nib.load(str(paths[0])), nib.load(str(paths[1]))
    assert img.shape == case.hu.shape[::-1] and np.allclose(img.affine, lab.affine)
    assert np.array_equal(np.asarray(lab.dataobj).transpose(2, 1, 0), case.labels)
    doc = json.loads(paths[2].read_text())
    assert doc["checksum"] == case.checksum() and len(doc["nodules"]) == len(case.nodules)
    # RAS +x is towards the patient's right: the right lung's centroid has RAS x > 0 (LPS x < 0)
    z, y, x = np.nonzero(case.labels == 1)
    ras = img.affine @ np.array([x.mean(), y.mean(), z.mean(), 1.0])
    assert ras[0] > 0
