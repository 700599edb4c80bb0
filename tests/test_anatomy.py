"""The anatomy gate: two plausible lungs on the right sides, partial coverage, a head is no chest; the manifest keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ai.anatomy import AnatomySpec, assess, edge_sides
from ai.bundle import BundleError, load_bundle
from ai.engine import Engine
from ai.measure import LesionVolume
from ai.phantoms import LEFT_LUNG, NODULE, RIGHT_LUNG, generate
from ai.shape import ShapeRule

BUNDLE = Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules"
NAMES = {1: "right lung", 2: "left lung", 3: "nodule"}
SPEC = AnatomySpec(labels=(1, 2), paired=(1, 2), volume_ml=(500.0, 4500.0), min_extent_mm=100.0, partial_min_ml=100.0)


def chest(seed: int, matrix: int = 96) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A head-first supine phantom's label map (1 right lung, 2 left lung, 3 nodule; the lungs include their nodules'
    places only as label 3) and its spacing.  Its direction is the identity: the x index runs to the patient's left."""
    ph = generate(seed, matrix=matrix, slice_mm=(2.5, 5.0))
    assert ph.position == "HFS" and np.array_equal(ph.direction, np.eye(3)), ph.position
    labels = np.zeros_like(ph.labels)
    for value in (RIGHT_LUNG, LEFT_LUNG, NODULE):
        labels[ph.labels == value] = value
    return labels, ph.spacing


def head(
    shape: tuple[int, int, int] = (60, 128, 128), spacing_xyz: tuple[float, float, float] = (1.5, 1.5, 3.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head: HU (a skull-shaped bone shell with brain inside, air around it and a small air cavity, a sinus), and the
    air a chest model takes for lung in it (the shipped model's: a layer of air hugging the skull, and the sinus), and
    the sinus alone."""
    sx, sy, sz = spacing_xyz
    z, y, x = (np.indices(shape).astype(np.float32) - np.array(shape, np.float32)[:, None, None, None] / 2)
    r = np.sqrt((x * sx / 75) ** 2 + (y * sy / 90) ** 2 + (z * sz / 100) ** 2)
    hu = np.full(shape, -1000.0, np.float32)
    hu[r <= 1.0] = 1000.0
    hu[r <= 0.93] = 35.0
    sinus = (x * sx / 12) ** 2 + ((y * sy + 60) / 10) ** 2 + ((z * sz + 10) / 12) ** 2 <= 1
    hu[sinus] = -950.0
    taken = sinus | ((r > 1.0) & (r <= 1.1))
    return hu + np.random.default_rng(0).normal(0, 10, shape).astype(np.float32), taken, sinus


@pytest.mark.parametrize("seed", [0, 10])
def test_a_chest_phantom_is_applicable(seed: int) -> None:
    labels, spacing = chest(seed)
    v = assess(labels, spacing, np.eye(3), SPEC, NAMES)
    assert v.applicable and not v.partial, v.reason
    assert v.reason.startswith("plausible: 'right lung'")
    right, left = v.organs
    assert right.centre_lps_mm[0] < left.centre_lps_mm[0] and right.extent_mm > 100 and 0.2 < right.fill < 0.8


def test_sides_come_from_the_direction_matrix() -> None:
    """The same patient stored with x running to the patient's right is as plausible; a mirrored labelling is not."""
    labels, spacing = chest(1)
    flipped = labels[:, :, ::-1]
    assert assess(flipped, spacing, np.diag([-1.0, 1.0, 1.0]), SPEC, NAMES).applicable
    v = assess(flipped, spacing, np.eye(3), SPEC, NAMES)
    assert not v.applicable and "label 'right lung' lies on the patient's left of label 'left lung'" in v.reason
    assert edge_sides(np.diag([-1.0, 1.0, 1.0])) == [("inferior", "superior"), ("anterior", "posterior"), ("left", "right")]


def test_a_chest_cut_to_the_apex_is_applicable_and_partial() -> None:
    labels, spacing = chest(9)
    zs = np.flatnonzero((labels == 1).any(axis=(1, 2)))
    apex = labels[zs[0] + int(0.7 * (zs[-1] - zs[0])) :]  # the upper 30 % of the lungs: the scan starts mid-chest
    v = assess(apex, spacing, np.eye(3), SPEC, NAMES)
    assert v.applicable and v.partial, v.reason
    assert v.cut_off == ("'right lung' at the inferior edge", "'left lung' at the inferior edge")
    assert "partial coverage" in v.reason
    sliver = labels[zs[-1] - 1 :]  # the top two slices of the apices: no measurable lung
    v = assess(sliver, spacing, np.eye(3), SPEC, NAMES)
    assert not v.applicable and v.partial and "for an organ cut by the scan range" in v.reason


def test_an_apex_tip_grazing_the_first_slice_is_no_partial_scan() -> None:
    labels, spacing = chest(0)
    zs = np.flatnonzero((labels == 1).any(axis=(1, 2)) | (labels == 2).any(axis=(1, 2)))
    for start in (zs[0], zs[-1]):  # the scan range starts exactly at one end of the lungs, then just past it
        cropped = labels[start:] if start == zs[0] else labels[: start + 1]
        v = assess(cropped, spacing, np.eye(3), SPEC, NAMES)
        assert v.applicable and not v.partial, v.reason
    cropped = labels[zs[0] + 4 :]  # four slices (10-20 mm) into the lungs: that is cut
    assert assess(cropped, spacing, np.eye(3), SPEC, NAMES).partial


def test_a_single_lung_is_not_applicable() -> None:
    labels, spacing = chest(0)
    labels[labels == 2] = 0
    v = assess(labels, spacing, np.eye(3), SPEC, NAMES)
    assert not v.applicable and "label 'left lung' is absent" in v.reason


def test_a_head_is_no_chest() -> None:
    """Air around a skull and in a sinus, taken for lung: a shell rather than an organ, or far too little."""
    _, taken, sinus = head()
    spacing = (1.5, 1.5, 3.0)
    labels = np.zeros(taken.shape, np.uint8)
    labels[:, :, :64][taken[:, :, :64]] = 1  # split at the midline, as a right/left lung model would
    labels[:, :, 64:][taken[:, :, 64:]] = 2
    v = assess(labels, spacing, np.eye(3), SPEC, NAMES)
    assert not v.applicable and "label 'right lung' fills" in v.reason and "of its bounding box" in v.reason, v.reason
    v = assess(labels * sinus, spacing, np.eye(3), SPEC, NAMES)  # only the sinus, split in two
    assert not v.applicable and not v.partial
    assert v.reason.startswith("no plausible right lung and left lung: label 'right lung' ") and "mL (expected 500-4500 mL)" in v.reason
    lung = np.zeros(taken.shape, np.uint8)
    lung[20:30, 50:70, 30:55] = 1  # 33.75 mL of "lung" in the middle of the head
    v = assess(lung, spacing, np.eye(3), AnatomySpec(labels=(1,), volume_ml=(1000.0, 4500.0)), {1: "lung"})
    assert not v.applicable and v.reason == "no plausible lung: label 'lung' 33.8 mL (expected 1000-4500 mL)"


def test_the_shipped_model_is_gated_and_its_lungs_contain_their_nodules() -> None:
    """The shipped bundle's own gate: a head is not applicable; on a chest the lungs include the nodules inside them."""
    engine = Engine(load_bundle(BUNDLE), device="cpu")
    res = engine.run(head()[0], (1.5, 1.5, 3.0), np.eye(3))
    assert res.anatomy is not None and not res.anatomy.applicable, res.anatomy
    assert "outside the body's outline" in res.anatomy.reason or "fills" in res.anatomy.reason, res.anatomy.reason
    ph = generate(4251, matrix=128, slice_mm=(2.5, 4.0))  # prone, six nodules of 8-27 mm, never seen in training
    res = engine.run(ph.hu.astype(np.float32), ph.spacing, ph.direction)
    assert res.anatomy is not None and res.anatomy.applicable and not res.anatomy.partial, res.anatomy
    right, left, nodule = res.measurements
    assert nodule.lesions and all(les.organ in (1, 2) for les in nodule.lesions)
    for lung in (right, left):
        own = np.count_nonzero(res.labels == lung.value) * np.prod(ph.spacing) / 1000
        inside = sum(les.voxel_volume_ml for les in nodule.lesions if les.organ == lung.value)
        assert lung.volume_ml == pytest.approx(own + lung.contained_ml) and lung.contained_ml == pytest.approx(inside)
    assert right.contained_ml + left.contained_ml > 0


def _three_labels(tmp_path: Path, **keys: Any) -> Path:
    """A 3-label chest bundle (1 right lung, 2 left lung, 3 nodule) with a fixed network, and ``keys`` in its manifest."""
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, -x, -x, -x], dim=1)

    torch.jit.script(Fixed()).save(str(tmp_path / "model.ts"))
    m: dict[str, Any] = {
        "name": "chest-3", "version": "1", "task": "segmentation",
        "inference": {"roi_size": [16, 16, 16]},
        "labels": [{"value": 1, "name": "right lung"}, {"value": 2, "name": "left lung"}, {"value": 3, "name": "nodule", "lesion": True}],
        "postprocessing": {"min_size_mm3": 10, "within": {"3": [1, 2]}, "lesion_shape": {"3": {"max_elongation": 3, "max_length_mm": 60}}},
        "measurement": {"contains": {"1": [3], "2": [3]}, "lesion_volume": {"method": "auto", "core": 0}},
        "anatomy": {"paired": [1, 2], "volume_ml": [500, 4500], "min_extent_mm": 100},
        "weights": {"format": "torchscript", "file": "model.ts"},
    }
    for key, value in keys.items():
        section, _, name = key.partition("__")
        if name:
            m[section][name] = value
        else:
            m[section] = value
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    return tmp_path


def test_a_three_label_manifest_loads(tmp_path: Path) -> None:
    b = load_bundle(_three_labels(tmp_path))
    assert b.lesion_shape == {3: ShapeRule(max_elongation=3.0, max_length_mm=60.0, min_fill=0.3, vessel_radius_mm=1.5)}
    assert b.contains == {1: (3,), 2: (3,)} and b.lesion_volume == LesionVolume(method="auto", core=0.0)
    assert b.anatomy == AnatomySpec(labels=(1, 2), paired=(1, 2), volume_ml=(500.0, 4500.0), min_extent_mm=100.0, partial_min_ml=50.0)
    shipped = load_bundle(BUNDLE)  # the default model carries all of it
    assert shipped.anatomy is not None and shipped.anatomy.paired == (1, 2) and 3 in shipped.lesion_shape
    assert shipped.contains == {1: (3,), 2: (3,)} and shipped.scan_score is not None and shipped.scan_score.label == 3


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"postprocessing__lesion_shape": {"7": {"max_elongation": 3}}}, "postprocessing.lesion_shape: '7' is not a label of this bundle (labels 1, 2, 3)"),
        ({"postprocessing__lesion_shape": {"1": {}}}, "postprocessing.lesion_shape: label 1 is not a lesion label"),
        ({"postprocessing__lesion_shape": {"3": {"max_elongation": 0.5}}}, "postprocessing.lesion_shape['3'].max_elongation must be a number > 1"),
        ({"postprocessing__lesion_shape": {"3": {"elongation": 3}}}, "postprocessing.lesion_shape['3']: unknown key 'elongation'"),
        ({"postprocessing__lesion_shape": {"3": {"min_fill": 2}}}, "min_fill must be at most 1"),
        ({"postprocessing__within": {"3": [1, 9]}}, "postprocessing.within['3']: 9 is not a label of this bundle"),
        ({"postprocessing__within": {"3": []}}, "must be a label or a non-empty list of labels"),
        ({"postprocessing__min_size_mm3": -1}, "postprocessing.min_size_mm3 must be a number >= 0"),
        ({"postprocessing__within_fraction": {"3": 1.5}}, "postprocessing.within_fraction['3'] must be a number from 0 to 1"),
        ({"postprocessing__within_fraction": {"2": 0.5}}, "postprocessing.within_fraction['2']: the label has no postprocessing.within entry"),
        ({"postprocessing__within_fraction": [0.5]}, "postprocessing.within_fraction must map a label"),
        ({"measurement__contains": {"3": [1]}}, "measurement.contains: label 3 is a lesion label"),
        ({"measurement__contains": {"1": [2]}}, "measurement.contains['1']: label 2 is not a lesion label"),
        ({"measurement__lesion_volume": {"method": "magic"}}, "measurement.lesion_volume.method must be one of auto, grown, partial_volume, probability, voxels"),
        ({"measurement__lesion_volume": {"shell_mm": 0}}, "measurement.lesion_volume.shell_mm must be a number > 0"),
        ({"measurement__lesion_volume": {"open_mm": -1}}, "measurement.lesion_volume.open_mm must be a number >= 0 (0: no opening)"),
        ({"measurement__lesion_volume": {"open_fraction": 2}}, "measurement.lesion_volume.open_fraction must be a number within 0..1"),
        ({"measurement__lesion_volume": {"small_core": "dim"}}, "measurement.lesion_volume.small_core must be one of none, brightest"),
        ({"measurement__lesion_volume": {"open_rim": "wide"}}, "measurement.lesion_volume.open_rim must be one of ball, adjacent"),
        ({"measurement__lesion_volume": {"open_contrast": -1}}, "measurement.lesion_volume.open_contrast must be a number >= 0"),
        ({"measurement__lesion_volume": {"grow_max_mm": -1}}, "measurement.lesion_volume.grow_max_mm must be a number >= 0"),
        ({"measurement__lesion_volume": {"grow_on_share": 0}}, "measurement.lesion_volume.grow_on_share must be a share within 0..1"),
        ({"measurement__lesion_volume": {"surface_cut": "yes"}}, "measurement.lesion_volume.surface_cut must be true or false"),
        ({"measurement__lesion_volume": {"shell_edge_only": 1}}, "measurement.lesion_volume.shell_edge_only must be true or false"),
        ({"measurement__lesion_volume": {"calcium": "high"}}, "measurement.lesion_volume.calcium must be a number"),
        ({"measurement__volumes": {}}, "measurement: unknown key 'volumes'"),
        ({"anatomy__volume_ml": [4500, 500]}, "anatomy.volume_ml must be [min, max] mL with 0 <= min < max"),
        ({"anatomy__paired": [1, 1]}, "anatomy.paired must be two different labels [right, left]"),
        ({"anatomy__paired": [1, 3]}, "anatomy.paired: label 3 is a lesion label"),
        ({"anatomy": {"volume_ml": [1, 2]}}, "anatomy needs the organ labels"),
        ({"anatomy__min_fill": 1.5}, "anatomy.min_fill must be a fraction 0-1"),
        ({"anatomy__min_inside_body": -0.1}, "anatomy.min_inside_body must be a fraction 0-1"),
        ({"anatomy__side": "left"}, "anatomy: unknown key 'side'"),
    ],
)
def test_bad_new_keys_are_refused_in_words(tmp_path: Path, keys: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError) as err:
        load_bundle(_three_labels(tmp_path, **keys))
    assert message in str(err.value)


def test_organs_outside_the_body_outline_are_not_organs() -> None:
    """``inside_body``: lungs inside the chest wall count, air around a head does not, in any orientation."""
    from ai.anatomy import inside_body

    hu, taken, sinus = head()
    labels = np.where(taken & ~sinus, 1, np.where(sinus, 2, 0)).astype(np.uint8)  # 1: the air shell, 2: the sinus
    share = inside_body(hu, labels, [1, 2], np.eye(3), -500.0, (1.5, 1.5, 3.0))
    assert share[1] < 0.05 and share[2] > 0.95, share
    chest_hu = np.full((40, 64, 64), -1000.0, np.float32)
    chest_hu[:, 8:56, 8:56] = 40.0  # the body, touching neither edge in-plane
    chest_hu[:, 16:48, 12:30] = -850.0  # right lung
    chest_hu[:, 16:48, 34:52] = -850.0  # left lung
    lab = np.zeros(chest_hu.shape, np.uint8)
    lab[:, 16:48, 12:30] = 1
    lab[:, 16:48, 34:52] = 2
    assert inside_body(chest_hu, lab, [1, 2], np.eye(3), -500.0, (2.0, 2.0, 2.0)) == {1: 1.0, 2: 1.0}
    # A sagittal acquisition: the slices across S are then along another array axis; the answer is the same.
    sag_dir = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # x -> P, y -> S, z -> L
    share = inside_body(np.moveaxis(hu, 0, 1).copy(), np.moveaxis(labels, 0, 1).copy(), [1, 2], sag_dir, -500.0, (1.5, 3.0, 1.5))
    assert share[1] < 0.05 and share[2] > 0.95, share
    assert inside_body(chest_hu, lab, [3], np.eye(3), -500.0, (2.0, 2.0, 2.0)) == {}
    spec = AnatomySpec(labels=(1, 2), volume_ml=(1, 10**6), min_fill=0.0, min_inside_body=0.5)
    v = assess(labels, (1.5, 1.5, 3.0), np.eye(3), spec, {1: "right lung", 2: "left lung"}, inside={1: 0.02, 2: 0.98})
    assert not v.applicable and "'right lung' lies 98% outside the body's outline" in v.reason, v.reason
