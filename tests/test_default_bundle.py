"""The shipped default bundle loads in all three formats and finds the lungs of an unseen phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ai.bundle import check_bundle, load_bundle
from ai.engine import Engine
from ai.phantoms import LEFT_LUNG, RIGHT_LUNG, generate
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
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-4, rtol=0)


def test_default_bundle_segments_an_unseen_phantom() -> None:
    ph = generate(4242, matrix=128, slice_mm=(2.5, 4.0))
    res = Engine(load_bundle(BUNDLE), device="cpu").run(ph.hu.astype(np.float32), ph.spacing, ph.direction)
    assert res.labels is not None
    dice = dice_per_label(res.labels, ph.labels, {RIGHT_LUNG: "right lung", LEFT_LUNG: "left lung"})
    assert dice["right lung"] > 0.9 and dice["left lung"] > 0.9, dice
    assert res.anatomy is not None and res.anatomy.applicable


CLASSIFIER = BUNDLE.parent / "chest-ct-nodule-classifier"


def test_classifier_bundle_is_valid_and_formats_agree() -> None:
    b = check_bundle(CLASSIFIER)
    assert b.task == "classification" and [lb.name for lb in b.labels] == ["no nodule", "nodule present"]
    assert b.intended_use == "demonstration; not for diagnosis" and "CHEST" in b.body_parts
    assert sum(p.stat().st_size for p in CLASSIFIER.iterdir() if p.is_file()) < 20e6
    x = torch.randn(1, 1, *b.roi_size)
    with torch.inference_mode():
        ts = b.predictor(torch.device("cpu"))(x)
        onnx = load_bundle(CLASSIFIER).__class__(**{**vars(b), "weights_format": "onnx", "weights_file": CLASSIFIER / "model.onnx"}).predictor(torch.device("cpu"))(x)
    torch.testing.assert_close(onnx, ts, atol=1e-3, rtol=1e-5)


def test_classifier_tells_a_scan_with_large_nodules_from_one_without() -> None:
    engine = Engine(load_bundle(CLASSIFIER), device="cpu")
    with_nodules = generate(1009, matrix=128)  # six nodules of 10-22 mm, never seen in training
    without = generate(1109, matrix=128, max_nodules=0)
    p_with = engine.run(with_nodules.hu.astype(np.float32), with_nodules.spacing, np.eye(3)).class_probabilities
    p_without = engine.run(without.hu.astype(np.float32), without.spacing, np.eye(3)).class_probabilities
    assert abs(sum(p_with.values()) - 1) < 1e-5
    assert p_with["nodule present"] > 0.5 > p_without["nodule present"]
