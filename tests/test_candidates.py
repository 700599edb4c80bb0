"""Lesion candidates judged by the bundle's candidate classifier (ai/candidates.py): features, verdicts, manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ai.bundle import BundleError, load_bundle
from ai.candidates import FEATURES, CandidateError, CandidateModel, features, from_manifest, judge, with_probabilities
from tests.test_anatomy import _three_labels

ROOT = Path(__file__).resolve().parents[1]
SPACING = (2.0, 1.5, 1.5)  # z, y, x mm


def _chest() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two lungs (labels 1 and 2) in soft tissue; a 10 mm round nodule in the right one and a vessel tube across the left.

    Both lesions are labelled 3 with probability 0.9: only their shape and surroundings tell them apart.
    """
    z, y, x = np.mgrid[:40, :64, :96]
    labels = np.zeros(z.shape, np.uint8)
    lung = (z >= 4) & (z < 36) & (y >= 8) & (y < 56)
    labels[lung & (x >= 6) & (x < 44)] = 1  # array x grows to the patient's left (LPS): low x is the right lung
    labels[lung & (x >= 52) & (x < 90)] = 2
    image = np.where(labels > 0, -850.0, 40.0).astype(np.float32)
    pz, py, px = z * SPACING[0], y * SPACING[1], x * SPACING[2]
    nodule = (pz - 40) ** 2 + (py - 48) ** 2 + (px - 37) ** 2 <= 5.0**2
    tube = ((py - 48) ** 2 + (pz - 40) ** 2 <= 2.0**2) & (x >= 54) & (x < 88)
    for mask in (nodule, tube):
        labels[mask] = 3
        image[mask] = 30.0
    prob = np.where(labels == 3, 0.9, 0.01).astype(np.float32)
    return labels, image, prob


def _model(cut: float = 0.5) -> CandidateModel:
    names = ("log_elongation", "attached")
    return CandidateModel(names, (0.0, 0.0), (1.0, 1.0), (-3.0, -3.0), 1.5, cut)


def test_features_tell_a_round_nodule_from_a_vessel() -> None:
    labels, image, prob = _chest()
    comps, x = features(labels, 3, prob, image, SPACING, np.eye(3), [1, 2])
    assert x.shape == (2, len(FEATURES)) and np.isfinite(x).all()
    rows = {("right" if box[2].start + np.argwhere(comp)[:, 2].mean() < 48 else "left"): dict(zip(FEATURES, row))
            for (box, comp), row in zip(comps, x)}
    nod, ves = rows["right"], rows["left"]
    assert nod["log_volume"] == pytest.approx(np.log(4 / 3 * np.pi * 125), abs=0.3)  # 10 mm across, on a 1.5-2 mm grid
    assert np.exp(nod["log_elongation"]) < 1.4 < 4 < np.exp(ves["log_elongation"])
    assert nod["border_lung"] == 1.0 and nod["attached"] == 0.0  # in air all round
    assert nod["contrast_noise"] == 50.0  # 880 HU over a noiseless lung: clipped
    assert nod["peak"] == pytest.approx(0.9) and nod["slice_mm"] == 2.0
    assert 0.0 < nod["height"] < 1.0 and 0.0 <= nod["medial"] <= 1.0
    # The mediastinum is the gap between the lungs (x 44-51): the nodule's centre (x 24.7) is 29 mm from it and the
    # tube's (x 70.5) 29 mm too, on the feature's grid of every second voxel.
    assert nod["mediastinum_mm"] == pytest.approx((44 - 24.7) * 1.5, abs=3.0)
    assert ves["mediastinum_mm"] == pytest.approx((70.5 - 51) * 1.5, abs=3.0)


def test_the_mediastinum_is_between_the_lungs_whichever_side_each_lies() -> None:
    from ai.candidates import MEDIASTINUM_CLIP_MM, mediastinum

    labels, image, prob = _chest()
    med = mediastinum(labels, 1, 2)
    assert med[20, 30].nonzero()[0].tolist() == list(range(44, 52)) and not (med & (labels > 0)).any()
    assert not med[:, :8].any() and not med[:2].any()  # rows without both lungs have none
    assert np.array_equal(mediastinum(labels[:, :, ::-1], 1, 2), med[:, :, ::-1])  # a feet-first or prone scan
    _, x = features(labels, 3, prob, image, SPACING, np.eye(3), [1])  # one organ: no mediastinum to find
    assert (x[:, FEATURES.index("mediastinum_mm")] == MEDIASTINUM_CLIP_MM).all()


def test_above_blood_is_a_candidates_density_against_the_mediastinums_blood() -> None:
    from ai.candidates import BLOOD_DEFAULT_HU, blood_hu

    labels, image, prob = _chest()
    assert blood_hu(labels, image, [1, 2]) == 40.0  # the soft tissue between the lungs, unenhanced
    _, x = features(labels, 3, prob, image, SPACING, np.eye(3), [1, 2])
    assert np.allclose(x[:, FEATURES.index("above_blood")], 30.0 - 40.0)
    enhanced = image.copy()
    med = (labels == 0) & (np.arange(96)[None, None, :] >= 44) & (np.arange(96)[None, None, :] < 52)
    enhanced[med] = 250.0  # contrast in the heart and great vessels
    enhanced[med & (np.arange(64)[None, :, None] < 20)] = -100.0  # and fat, which is not blood
    assert blood_hu(labels, enhanced, [1, 2]) == 250.0
    _, x = features(labels, 3, prob, enhanced, SPACING, np.eye(3), [1, 2])
    assert np.allclose(x[:, FEATURES.index("above_blood")], 30.0 - 250.0)  # far below the blood: no vessel
    assert blood_hu(labels, image, [1]) == BLOOD_DEFAULT_HU  # one lung: no mediastinum to read


def test_judge_sends_the_vessel_back_to_its_lung_and_keeps_the_nodule() -> None:
    labels, image, prob = _chest()
    out, kept = judge(labels, 3, prob, image, SPACING, np.eye(3), [1, 2], _model())
    assert len(kept) == 1 and kept[0].probability > 0.5 and kept[0].holds((20, 32, 25))  # the nodule's centre
    right, left = out[:, :, :48], out[:, :, 48:]
    assert (right == 3).sum() == (labels[:, :, :48] == 3).sum()  # the nodule is untouched
    assert not (left == 3).any() and (left == 2).sum() == (labels[:, :, 48:] > 0).sum()  # the tube is lung again
    none, kept_none = judge(labels, 3, prob, image, SPACING, np.eye(3), [1, 2], _model(cut=1.0))
    assert kept_none == [] and not (none == 3).any()


def test_a_kept_candidate_keeps_its_core_and_its_lesions_carry_its_probability() -> None:
    from ai.measure import measure

    labels, image, prob = _chest()
    labels[labels == 3] = 1
    z, y, x = np.mgrid[:40, :64, :96]
    dist = np.sqrt(((z - 20) * 2.0) ** 2 + ((y - 32) * 1.5) ** 2 + ((x - 25) * 1.5) ** 2)
    prob = np.clip(1.0 - dist / 12.0, 0, 1).astype(np.float32)  # a loose candidate out to 0.1 (10.8 mm), its core to 0.35 (7.8 mm)
    labels[(prob >= 0.1) & (labels == 1)] = 3
    model = CandidateModel(("peak",), (0.0,), (1.0,), (4.0,), 0.0, 0.5, core_threshold=0.35)
    out, kept = judge(labels, 3, prob, image, SPACING, np.eye(3), [1, 2], model)
    assert len(kept) == 1 and (out == 3).sum() == ((prob >= 0.35) & (labels == 3)).sum() < (labels == 3).sum()
    assert set(np.unique(out[(labels == 3) & (prob < 0.35)])) == {1}  # the loose rim is lung again
    ms = measure(out, (1.5, 1.5, 2.0), {1: "right lung", 2: "left lung", 3: "nodule"}, lesion_values=[3])
    [nodules] = [m for m in with_probabilities(ms, {3: kept}) if m.value == 3]
    assert [les.probability for les in nodules.lesions] == [kept[0].probability]
    assert all(les.probability is None for m in ms for les in m.lesions)  # measuring alone knows no classifier


def test_a_model_survives_its_manifest_entry() -> None:
    m = _model(0.3)
    again = from_manifest(json.loads(json.dumps(m.as_manifest("a test"))))
    assert again == m
    x = np.array([[0.0, 0.0], [2.0, 0.5]])
    assert again.probability(x) == pytest.approx(1 / (1 + np.exp(-np.array([1.5, 1.5 - 6 - 1.5]))))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": ["log_volume", "colour"]}, "unknown features ['colour']"),
        ({"weights": [1.0]}, "must have the same length"),
        ({"scale": [1.0, 0.0]}, "every scale must be positive"),
        ({"cut": 2}, "cut within 0..1"),
        ({"bias": None}, "needs features, mean, scale, weights, bias and cut"),
    ],
)
def test_bad_classifiers_are_refused_in_words(tmp_path: Path, change: dict[str, object], message: str) -> None:
    entry = {**_model().as_manifest("a test"), **change}
    with pytest.raises(CandidateError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        from_manifest(entry)
    with pytest.raises(BundleError, match="postprocessing.candidates"):
        load_bundle(_three_labels(tmp_path, postprocessing__candidates={"3": entry}))


def test_a_classifier_needs_the_organs_of_its_candidates(tmp_path: Path) -> None:
    entry = _model().as_manifest("a test")
    (tmp_path / "bare").mkdir()
    (tmp_path / "ok").mkdir()
    with pytest.raises(BundleError, match=r"postprocessing.candidates\['3'\]: the label needs a postprocessing.within entry"):
        load_bundle(_three_labels(tmp_path / "bare", postprocessing={"candidates": {"3": entry}}))
    assert load_bundle(_three_labels(tmp_path / "ok", postprocessing__candidates={"3": entry})).candidates == {3: _model()}


def test_the_shipped_bundle_judges_its_candidates() -> None:
    from tests.test_default_bundle import BUNDLE

    b = load_bundle(BUNDLE)
    assert set(b.candidates) == {3} and 0.0 < b.candidates[3].cut < 1.0
    assert set(b.candidates[3].features) <= set(FEATURES)


def test_the_fitting_script_runs_end_to_end(tmp_path: Path) -> None:
    """scripts/train_candidate_classifier.py: collect two small phantoms, fit on one, choose the cut on the other, write."""
    scratch, bundle = tmp_path / "cases", tmp_path / "bundle"
    from tests.test_default_bundle import BUNDLE

    bundle.mkdir()
    for f in BUNDLE.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    script = [sys.executable, str(ROOT / "scripts" / "train_candidate_classifier.py")]
    run = subprocess.run([*script, "collect", "--scratch", str(scratch), "--seeds", "4240,4251", "--matrix", "128", "--procs", "2",
                          "--bundle", str(bundle)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in scratch.glob("*.npz")) == ["train-4240.npz", "train-4251.npz"]
    run = subprocess.run([*script, "fit", "--scratch", str(scratch), "--fit", "4240,4251", "--val", "4240,4251", "--cut", "0.4",
                          "--write", str(bundle), "--bundle", str(bundle)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| cut | sensitivity >= 6 mm |" in run.stdout
    written = load_bundle(bundle)
    assert written.candidates[3].cut == 0.4 and "4240,4251" in json.loads((bundle / "manifest.json").read_text())["scan_score"]["calibration"]["fitted_on"]
    run = subprocess.run([*script, "fit-dots", "--scratch", str(scratch), "--fit", "4240,4251", "--val", "4240,4251", "--cut", "0.6",
                          "--write", str(bundle), "--bundle", str(bundle)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| dot cut | sensitivity >= 6 mm |" in run.stdout
    written = load_bundle(bundle)
    assert written.dot_candidates[3].model.cut == 0.6 and written.candidates[3].cut == 0.4
    assert "dot filter" in json.loads((bundle / "manifest.json").read_text())["scan_score"]["calibration"]["fitted_on"]
    run = subprocess.run([*script, "fit", "--model", "boosted", "--scratch", str(scratch), "--fit", "4240,4251", "--val", "4240,4251",
                          "--cut", "0.3", "--write", str(bundle), "--bundle", str(bundle)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "boosted trees of at most 16 leaves" in run.stdout
    written = load_bundle(bundle)
    assert written.candidates[3].cut == 0.3 and written.candidates[3].trees is not None


def test_thousands_of_specks_cost_a_bounded_time() -> None:
    """A scan that breaks into thousands of candidates (noise, a hostile input) is judged on its most probable ones only."""
    from ai import candidates

    labels, image, prob = _chest()
    rng = np.random.default_rng(0)
    specks = (rng.uniform(size=labels.shape) < 0.02) & (labels == 1) & (np.indices(labels.shape)[2] < 20)
    labels[specks] = 3
    prob[specks] = 0.2
    n = int(specks.sum())
    assert n > 2 * candidates.MAX_CANDIDATES
    capped = candidates._at_most(labels, 3, prob, 50, [3])
    assert set(np.unique(capped[specks])) == {1, 3}  # specks left unjudged are lung again, not holes
    assert (capped[labels == 2] == 2).all()  # nothing else changes
    comps, x = features(capped, 3, prob, image, SPACING, np.eye(3), [1, 2])
    assert len(comps) == 50 and sorted(x[:, FEATURES.index("peak")])[-2:] == pytest.approx([0.9, 0.9])  # nodule and vessel kept
    _, kept = judge(labels, 3, prob, image, SPACING, np.eye(3), [1, 2], _model())
    assert len(kept) <= candidates.MAX_CANDIDATES


def test_models_show_says_what_decides_which_candidates_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """`dicomnode models show` on the shipped bundle names its candidate classifier, its cut and its scan score."""
    from dicomnode.cli.main import main

    bundle = load_bundle(ROOT / "ai" / "bundles" / "chest-ct-lungs-nodules")
    model = bundle.candidates[3]
    assert main(["models", "show", str(bundle.path)]) == 0
    out = capsys.readouterr().out
    kind = "gradient-boosted trees" if model.trees is not None else "logistic regression"
    assert f"label 3 candidates: {kind}" in out and f"on {len(model.features)} features" in out
    assert f"kept at probability {model.cut:g} or more" in out
    assert bundle.scan_score is not None and f"calibrated a={bundle.scan_score.a:g}" in out
