"""The shipped default bundle loads in all three formats, finds both lungs of an unseen phantom and scores scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ai.bundle import check_bundle, load_bundle
from ai.engine import Engine
from ai.phantoms import LEFT_LUNG, NODULE, RIGHT_LUNG, generate
from ai.training.tasks.segmentation import dice_per_label

BUNDLE = Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules"


def test_default_bundle_is_valid_and_small() -> None:
    b = check_bundle(BUNDLE)
    assert b.intended_use == "demonstration; not for diagnosis"
    assert "CT" in b.modalities and "CHEST" in b.body_parts
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) < 20e6
    x = torch.randn(1, 1, *b.roi_size)
    outs = []
    for fmt, file in (("state_dict", "model.pt"), ("torchscript", "model.ts"), ("onnx", "model.onnx")):
        alt = load_bundle(BUNDLE).__class__(**{**vars(b), "weights_format": fmt, "weights_file": BUNDLE / file})
        with torch.inference_mode():
            outs.append(alt.predictor(torch.device("cpu"))(x))
    # Logits reach about +-20; float32 sums in a different order differ in the 5th significant digit.
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-4, rtol=1e-4)


def test_default_bundle_segments_an_unseen_phantom() -> None:
    ph = generate(4242, matrix=128, slice_mm=(2.5, 4.0))
    res = Engine(load_bundle(BUNDLE), device="cpu").run(ph.hu.astype(np.float32), ph.spacing, ph.direction)
    assert res.labels is not None
    dice = dice_per_label(res.labels, ph.labels, {RIGHT_LUNG: "right lung", LEFT_LUNG: "left lung"})
    assert dice["right lung"] > 0.9 and dice["left lung"] > 0.9, dice
    assert res.anatomy is not None and res.anatomy.applicable


def test_scan_score_agrees_with_the_reported_nodules() -> None:
    """The bundle's "nodule present" probability (its scan_score) follows the nodules it reports, on two unseen phantoms.

    It is the calibrated probability of the most probable kept nodule, as the candidate classifier judged it.

    A scan with six nodules of 8-27 mm reads above 0.5; a scan with no reported nodule reads below it (the shipped
    model does report false positives on healthy scans: see its model card).
    """
    engine = Engine(load_bundle(BUNDLE), device="cpu")
    score = engine.bundle.scan_score
    assert score is not None and score.label == NODULE
    with_nodules = generate(4251, matrix=128, slice_mm=(2.5, 4.0))  # prone, six nodules of 8-27 mm
    healthy = generate(4240, matrix=128, slice_mm=(2.5, 4.0))  # feet-first prone, arterial contrast, no nodule
    assert with_nodules.nodules and not healthy.nodules
    for ph in (with_nodules, healthy):
        res = engine.run(ph.hu.astype(np.float32), ph.spacing, ph.direction, keep_probabilities=True)
        p = res.class_probabilities
        assert list(p) == ["no nodule", "nodule present"] and abs(sum(p.values()) - 1) < 1e-6
        assert res.labels is not None and res.probabilities is not None
        reported = [m for m in res.measurements if m.value == NODULE][0].lesions
        kept = res.candidates[NODULE]  # the candidate classifier's probabilities of the nodules it kept
        assert bool(kept) == bool(reported) and all(k >= engine.bundle.candidates[NODULE].cut for k in kept)
        assert p["nodule present"] == score.probability(max(kept, default=0.0))
        assert sorted({les.probability for les in reported}) == sorted(set(kept))  # each reported nodule carries its own
        if not reported:
            assert p["nodule present"] == score.probability(0.0) < 0.5
        if ph is with_nodules:
            assert p["nodule present"] > 0.5
