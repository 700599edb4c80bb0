"""Fit the default chest-CT bundle's nodule candidate classifier (:mod:`ai.candidates`) on the CPU.

The network's nodule components are *candidates*; a small classifier on
their shape, density, surroundings and position decides which are nodules
(the false-positive reduction stage of a classic CAD system).  It needs no
GPU: the network runs once per phantom, and the classifier is a logistic
regression or gradient-boosted trees (``--model boosted``, the default bundle's
since 0.5.5) on fifteen features.

Three steps, each its own subcommand, so that the expensive one runs once:

1. ``collect``: phantoms of the training family (seeds never used to train
   the network, nor for its validation or held-out evaluation), the bundle's
   network on each, and what the features need saved per case under
   ``--scratch`` (the argmax label map, the nodule probability, the image
   and the truth), several processes at once;
2. ``fit``: candidates of every collected case at the candidate settings,
   their features and whether each touches a true nodule; the logistic
   regression fitted on the ``--fit`` seeds, and the cut and the scan score's
   calibration chosen on the ``--val`` seeds only, printed as a table;
3. ``--write BUNDLE`` (with ``fit``) puts the classifier, its cut and the
   scan score's calibration into the bundle's manifest;
4. ``fit-dots``: the same for the dot filter's candidates
   (:mod:`ai.dot_candidates`: round spots the network left out), fitted on
   the ``--fit`` seeds with the network's candidates excluded, its cut chosen
   on the ``--val`` seeds with the network's classifier on.

The independent family (``bench/evalset``) is never read here.

The cut is the lowest that leaves at most ``--max-fp`` false positives
per validation scan (0.25, half the issue's target: the independent family
showed 2.7 times the training family's false positives in 0.4.0), a rule
fixed before the independent family was run.

Example (the run recorded in the model card; about 25 minutes on 2 cores)::

    python scripts/train_candidate_classifier.py collect --scratch /tmp/cc --seeds 6000:6060 --procs 2
    python scripts/train_candidate_classifier.py collect --scratch /tmp/cc --seeds 3000:3128 --procs 2
    python scripts/train_candidate_classifier.py fit --scratch /tmp/cc --fit 3000:3128 --val 6000:6060 \\
        --write ai/bundles/chest-ct-lungs-nodules

The dot filter's trial (docs/models.md; not shipped), after collecting seeds 3128:3256 too::

    python scripts/train_candidate_classifier.py fit-dots --scratch /tmp/cc --fit 3000:3256 --val 6000:6060
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NODULE = 3
logger = logging.getLogger("train_candidate_classifier")


def manifest_json(m: dict[str, Any]) -> str:
    """``m`` as indented JSON with each list of numbers on one line (a classifier's trees are thousands of them)."""
    import re

    text = json.dumps(m, indent=2)
    return re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]", lambda mt: "[" + re.sub(r",\s+", ", ", mt.group(1)) + "]", text) + "\n"


def _seeds(text: str) -> list[int]:
    """``A:B`` (seeds A..B-1) or ``A,B,C``."""
    if ":" in text:
        a, _, b = text.partition(":")
        return list(range(int(a), int(b)))
    return [int(v) for v in text.split(",")]


def _engine(bundle: Path) -> Any:
    from ai.bundle import load_bundle
    from ai.engine import Engine

    return Engine(load_bundle(bundle), device="cpu")


_ENGINE: Any = None


def _collect_one(job: tuple[int, int, str, str]) -> str:
    """Generate phantom ``seed``, run the network on it and save what the features need."""
    global _ENGINE
    seed, matrix, scratch, bundle = job
    out = Path(scratch) / f"train-{seed}.npz"
    if out.exists():
        return f"{seed} cached"
    import torch

    torch.set_num_threads(1)
    from ai.phantoms import generate

    if _ENGINE is None:
        _ENGINE = _engine(Path(bundle))
    t = time.perf_counter()
    case = generate(seed, matrix=matrix)
    res = _ENGINE.run(case.hu.astype(np.float32), tuple(case.spacing), np.asarray(case.direction), keep_probabilities=True)
    probs = res.probabilities
    nodules = [{"centre_mm": list(map(float, n.centre_mm)), "diameter_mm": float(n.diameter_mm), "kind": str(n.kind.value),
                "site": str(n.site.value), "volume_mm3": float(n.volume_mm3)} for n in case.nodules]
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp, argmax=probs.argmax(0).astype(np.uint8), nodule=probs[NODULE].astype(np.float16),
        hu=np.clip(case.hu, -32768, 32767).astype(np.int16), truth=case.labels.astype(np.uint8),
        spacing=np.asarray(case.spacing, dtype=np.float64), direction=np.asarray(case.direction, dtype=np.float64),
        nodules=np.asarray(json.dumps(nodules)),
    )
    os.replace(tmp, out)
    return f"{seed} {time.perf_counter() - t:.1f} s"


def collect(args: argparse.Namespace) -> None:
    """Run the network on phantoms of the training family, several processes at once."""
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    jobs = [(s, args.matrix, str(args.scratch), str(args.bundle)) for s in _seeds(args.seeds)]
    with get_context("spawn").Pool(args.procs) as pool:
        for done, msg in enumerate(pool.imap_unordered(_collect_one, jobs), start=1):
            logger.info("[%d/%d] seed %s", done, len(jobs), msg)


# The candidate settings: the network's nodule components at a lower threshold than 0.4.1's label threshold
# (0.35) and with looser border and shape rules, so that the classifier sees (and may keep) more of them.
CANDIDATE_SETTINGS = {"threshold": 0.1, "within_fraction": 0.0, "max_elongation": 4.0}


def _variant(engine: Any, threshold: float, within_fraction: float, max_elongation: float) -> Any:
    """``engine`` with the candidate settings and no candidate classifier (the network is shared)."""
    from bench.quality import nodule_rules

    pp = {k: v for k, v in engine.bundle.postprocessing.items() if k != "candidates"}
    return engine.with_postprocessing(nodule_rules(pp, within_fraction, max_elongation, label_thresholds={str(NODULE): threshold}))


def _candidate_labels(z: Any, engine: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A collected case's label map at the candidate settings (no image: nothing is judged), its nodule probability and spacing."""
    argmax, p3 = z["argmax"], z["nodule"].astype(np.float32)
    scores = np.zeros((4, *argmax.shape), dtype=np.float32)
    for k in range(3):
        scores[k][argmax == k] = 1.0
    scores[NODULE] = p3
    spacing = tuple(float(v) for v in z["spacing"])
    labels, _ = engine.postprocess(scores, spacing)
    return labels, p3, spacing


def case_candidates(path: Path, engine: Any) -> dict[str, Any]:
    """The candidates of one collected case: features, whether each touches a true nodule, and which find each nodule."""
    import cc3d

    z = np.load(path)
    labels, p3, spacing = _candidate_labels(z, engine)
    return _network_candidates(z, labels, p3, spacing, cc3d.connected_components(z["truth"] == NODULE, connectivity=26))


def _network_candidates(z: Any, labels: np.ndarray, p3: np.ndarray, spacing: tuple[float, ...], truth_cc: np.ndarray) -> dict[str, Any]:
    """:func:`case_candidates` of a case already read and labelled (``truth_cc``: its true nodules' components)."""
    from ai.candidates import features
    from bench.quality import nodule_component

    comps, x = features(labels, NODULE, p3, z["hu"], spacing[::-1], z["direction"], [1, 2])
    hits = [set(int(v) for v in np.unique(truth_cc[box][comp]) if v) for box, comp in comps]
    nodules = []
    for n in json.loads(str(z["nodules"])):
        comp = nodule_component(truth_cc, spacing, n["centre_mm"], n["diameter_mm"])
        n["found_by"] = [i for i, h in enumerate(hits) if comp and comp in h]
        n["labelled"] = bool(comp)
        nodules.append(n)
    return {"x": x, "positive": np.array([bool(h) for h in hits], dtype=bool), "nodules": nodules}


def _code_version() -> str:
    """A digest of the feature code, so that cached candidate tables follow it."""
    import hashlib

    from ai import candidates

    return hashlib.sha256(Path(candidates.__file__).read_bytes()).hexdigest()[:8]


def _load(scratch: Path, seeds: list[int], engine: Any, setting: str) -> list[dict[str, Any]]:
    """The candidates of each collected seed at one setting (cached beside the case: features take a second a case)."""
    import pickle

    out = []
    for seed in seeds:
        path, table = scratch / f"train-{seed}.npz", scratch / f"candidates-{seed}-{setting}.pkl"
        if table.exists() and table.stat().st_mtime >= path.stat().st_mtime:
            out.append(pickle.loads(table.read_bytes()))
        elif path.exists():
            out.append(case_candidates(path, engine))
            table.write_bytes(pickle.dumps(out[-1]))
    return out


def evaluate(cases: list[dict[str, Any]], probs: list[np.ndarray], cut: float) -> dict[str, float]:
    """Sensitivity (>= 6 mm: all; part-solid and ground-glass), false positives per scan and the share with <= 1, at ``cut``."""
    big = [(n, p) for c, p in zip(cases, probs) for n in c["nodules"] if n["diameter_mm"] >= 6.0]
    found = [bool(any(p[i] >= cut for i in n["found_by"])) for n, p in big]
    return _rates([n for n, _ in big], found, [int(np.sum((p >= cut) & ~c["positive"])) for c, p in zip(cases, probs)])


def _rates(big: list[dict[str, Any]], found: list[bool], fps: list[int]) -> dict[str, float]:
    """The figures of :func:`evaluate` from each nodule >= 6 mm found or not and each scan's false positives."""
    solid = [f for n, f in zip(big, found) if n["kind"] == "solid"]
    sub = [f for n, f in zip(big, found) if n["kind"] in ("part-solid", "ground-glass")]
    return {"sens": float(np.mean(found)) if found else float("nan"), "solid": float(np.mean(solid)) if solid else float("nan"),
            "sub": float(np.mean(sub)) if sub else float("nan"), "fp": float(np.mean(fps)), "le1": float(np.mean([f <= 1 for f in fps])),
            "n": len(found)}


def scan_peaks(probs: list[np.ndarray], cut: float) -> list[float]:
    """Per scan, the probability of its most probable candidate kept at ``cut`` (0 when none): the scan score's evidence."""
    return [float(p[p >= cut].max()) if (p >= cut).any() else 0.0 for p in probs]


def fit(args: argparse.Namespace) -> None:
    """Fit the classifier on ``--fit`` seeds, choose the cut on ``--val`` seeds, print the trade-off."""
    from ai.candidates import FEATURES
    from ai.scan_score import fit_platt
    from bench.quality import auc

    base = _engine(args.bundle)
    engine = _variant(base, args.threshold, args.within_fraction, args.max_elongation)
    t = time.perf_counter()
    setting = f"t{args.threshold:g}-w{args.within_fraction:g}-e{args.max_elongation:g}-{_code_version()}"
    train, val = _load(args.scratch, _seeds(args.fit), engine, setting), _load(args.scratch, _seeds(args.val), engine, setting)
    logger.info("%d fitting and %d validation cases read in %.0f s", len(train), len(val), time.perf_counter() - t)
    names = [f for f in FEATURES if f not in args.drop]
    cols = [FEATURES.index(f) for f in names]
    if not any(len(c["x"]) for c in train):
        raise SystemExit(f"no candidates in the fitting cases {args.fit} under {args.scratch}: collect them first")
    x = np.vstack([c["x"][:, cols] for c in train if len(c["x"])])
    y = np.concatenate([c["positive"] for c in train if len(c["x"])]).astype(float)
    model = _boosted(x, y, names) if args.model == "boosted" else _logistic(x, y, names, args.l2)
    head = f"\n{len(y)} fitting candidates ({int(y.sum())} touch a nodule); "
    if model.trees is not None:
        print(head + f"{len(model.trees.trees)} boosted trees of at most {BOOSTED['max_leaf_nodes']} leaves")
    else:
        print(head + "weights on standardised features:\n")
        for f, wi in sorted(zip(names, model.weights), key=lambda t: -abs(t[1])):
            print(f"  {f:16s} {wi:+.3f}")

    def probs_of(cases: list[dict[str, Any]]) -> list[np.ndarray]:
        return [model.probability(c["x"][:, cols]) if len(c["x"]) else np.zeros(0) for c in cases]

    vp = probs_of(val)
    print(f"\nvalidation seeds {args.val} ({len(val)} scans), candidates at threshold {args.threshold}, border share "
          f"{args.within_fraction}, elongation {args.max_elongation}\n")
    print("| cut | sensitivity >= 6 mm | solid | part-solid/GGO | FP per scan | scans with <= 1 FP | scan AUC |")
    print("|---|---|---|---|---|---|---|")
    truth = [any(n["labelled"] for n in c["nodules"]) for c in val]
    for cut in args.cuts:
        r = evaluate(val, vp, cut)
        print(f"| {cut:g} | {r['sens']:.3f} ({r['n']}) | {r['solid']:.3f} | {r['sub']:.3f} | {r['fp']:.2f} | {r['le1']:.2f} | "
              f"{auc(list(zip(scan_peaks(vp, cut), truth))):.3f} |")
    grid = np.round(np.arange(0.02, 1.0, 0.02), 2)
    cut = args.cut if args.cut is not None else float(next((c for c in grid if evaluate(val, vp, c)["fp"] <= args.max_fp), grid[-1]))
    r = evaluate(val, vp, cut)
    print(f"\nchosen cut {cut:g}" + ("" if args.cut is not None else f" (the lowest with at most {args.max_fp:g} false positives per "
          f"validation scan)") + f": sensitivity >= 6 mm {r['sens']:.3f}, solid {r['solid']:.3f}, part-solid/GGO {r['sub']:.3f}, "
          f"{r['fp']:.2f} FP per scan, {r['le1']:.2f} of scans with <= 1")
    if args.write is None:
        return
    chosen = dataclasses.replace(model, cut=cut, core_threshold=args.core_threshold)
    a, bb = fit_platt(scan_peaks(vp, cut), truth)
    manifest_path = args.write / "manifest.json"
    m = json.loads(manifest_path.read_text())
    fitted = (f"scripts/train_candidate_classifier.py fit --model {args.model} --fit {args.fit} --val {args.val} --threshold {args.threshold:g} "
              f"--within-fraction {args.within_fraction:g} --max-elongation {args.max_elongation:g} --max-fp {args.max_fp:g}: "
              f"training-family seeds {args.fit} "
              f"(fit), {args.val} (cut: " + (f"given, {cut:g})" if args.cut is not None else f"the lowest with <= {args.max_fp:g} FP per scan)"))
    m["postprocessing"]["label_thresholds"] = {str(NODULE): args.threshold}
    m["postprocessing"]["within_fraction"] = {str(NODULE): args.within_fraction}
    m["postprocessing"]["lesion_shape"][str(NODULE)]["max_elongation"] = args.max_elongation
    m["postprocessing"]["candidates"] = {str(NODULE): chosen.as_manifest(fitted)}
    m["scan_score"]["calibration"] = {"a": round(a, 3), "b": round(bb, 3), "fitted_on": f"{fitted}; the most probable kept candidate"}
    manifest_path.write_text(manifest_json(m))
    logger.info("wrote %s: cut %g, scan score calibration a=%.3f b=%.3f", manifest_path, cut, a, bb)


# Gradient-boosted trees (``fit --model boosted``): chosen on the validation seeds 6000:6060 among 4-31 leaves,
# 100-400 trees and learning rates 0.05-0.1, by sensitivity at the cut rule's 0.25 false positives per scan.
BOOSTED = {"max_leaf_nodes": 16, "max_iter": 100, "learning_rate": 0.05, "l2_regularization": 1.0, "random_state": 0}


def _logistic(x: np.ndarray, y: np.ndarray, names: list[str], l2: float) -> Any:
    """A logistic regression on the features standardised over the fitting candidates (the bias is not penalised)."""
    from ai.candidates import CandidateModel
    from ai.scan_score import fit_logistic

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    *weights, b = fit_logistic(np.hstack([(x - mean) / scale, np.ones((len(x), 1))]), y, np.append(np.full(len(names), l2), 0.0))
    return CandidateModel(tuple(names), tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, weights)), b, 0.5)


def _boosted(x: np.ndarray, y: np.ndarray, names: list[str]) -> Any:
    """Gradient-boosted trees on the raw features (scikit-learn fits them; :mod:`ai.boosted_trees` runs them)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ai.boosted_trees import from_sklearn
    from ai.candidates import CandidateModel

    if len(np.unique(y)) < 2:
        raise SystemExit("boosted trees need candidates that touch a nodule and candidates that do not: collect more seeds")
    fitted = HistGradientBoostingClassifier(**BOOSTED).fit(x, y.astype(int))
    return CandidateModel(tuple(names), (), (), (), 0.0, 0.5, trees=from_sklearn(fitted))


DOT_SEARCH = {"min_dot": 30.0, "max_candidates": 300}  # the bundle's settings too: the fit and the cut see what the engine will


def dot_case(path: Path, engine: Any, search: Any) -> dict[str, Any]:
    """The dot filter's candidates of one collected case beyond the network's candidates (at the candidate settings):
    features over DOT_FEATURES, whether each touches a true nodule, and which find each nodule; with the network's."""
    import cc3d

    from ai.dot_candidates import propose
    from ai.postprocess import dilate_box
    from bench.quality import nodule_component

    z = np.load(path)
    labels, p3, spacing = _candidate_labels(z, engine)
    truth_cc = cc3d.connected_components(z["truth"] == NODULE, connectivity=26)
    net = _network_candidates(z, labels, p3, spacing, truth_cc)
    exclude = dilate_box(labels == NODULE, (1, 1, 1))  # as the engine: the network's candidates and a voxel around
    g, regions, x = propose(labels, NODULE, p3, z["hu"], spacing[::-1], z["direction"], [1, 2], exclude, search)
    hits = []
    for box, comp in regions:  # a grid region touches a nodule when its source voxels do
        assert g is not None
        sbox, mask = g.to_source(box, comp)
        hits.append(set(int(v) for v in np.unique(truth_cc[sbox][mask]) if v))
    for n in net["nodules"]:
        which = nodule_component(truth_cc, spacing, n["centre_mm"], n["diameter_mm"])
        n["dot_by"] = [i for i, h in enumerate(hits) if which and which in h]
    return {"x": x, "positive": np.array([bool(h) for h in hits], dtype=bool), "nodules": net["nodules"],
            "net_x": net["x"], "net_positive": net["positive"]}


_DOT_ENGINE: Any = None


def _dot_table(job: tuple[str, str, str]) -> str:
    """Compute one case's :func:`dot_case` table in a worker process (the engine loaded once per process)."""
    global _DOT_ENGINE
    import pickle

    import torch

    torch.set_num_threads(1)
    path, table, bundle = job
    if _DOT_ENGINE is None:
        base = _engine(Path(bundle))
        _DOT_ENGINE = (_variant(base, CANDIDATE_SETTINGS["threshold"], CANDIDATE_SETTINGS["within_fraction"],
                                CANDIDATE_SETTINGS["max_elongation"]), _dot_search())
    tmp = Path(table).with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(dot_case(Path(path), *_DOT_ENGINE)))
    os.replace(tmp, table)
    return Path(path).name


def _dot_search() -> Any:
    from ai.candidates import from_manifest
    from ai.dot_candidates import DOT_FEATURES, DotSettings

    placeholder = from_manifest({"features": ["dot"], "mean": [0], "scale": [1], "weights": [1], "bias": 0, "cut": 1}, known=DOT_FEATURES)
    return DotSettings(placeholder, min_dot=float(DOT_SEARCH["min_dot"]), max_candidates=int(DOT_SEARCH["max_candidates"]))


def _load_dots(scratch: Path, seeds: list[int], bundle: Path, procs: int) -> list[dict[str, Any]]:
    """:func:`dot_case` of each collected seed, cached beside it (computed by ``procs`` processes)."""
    import hashlib
    import pickle

    from ai import dot_candidates

    version = hashlib.sha256(Path(dot_candidates.__file__).read_bytes()).hexdigest()[:8] + _code_version()
    tables = {seed: scratch / f"dots-{seed}-{version}.pkl" for seed in seeds if (scratch / f"train-{seed}.npz").exists()}
    todo = [(str(scratch / f"train-{seed}.npz"), str(t), str(bundle)) for seed, t in tables.items() if not t.exists()]
    if todo:
        with get_context("spawn").Pool(procs) as pool:
            for done, name in enumerate(pool.imap_unordered(_dot_table, todo), start=1):
                logger.info("[%d/%d] dot filter candidates of %s", done, len(todo), name)
    return [pickle.loads(t.read_bytes()) for t in tables.values()]


def evaluate_both(cases: list[dict[str, Any]], net: list[np.ndarray], net_cut: float, dots: list[np.ndarray], cut: float) -> dict[str, float]:
    """:func:`evaluate` with the network's candidates kept at ``net_cut`` and the dot filter's at ``cut``."""
    big = [(n, a, d) for c, a, d in zip(cases, net, dots) for n in c["nodules"] if n["diameter_mm"] >= 6.0]
    found = [any(a[i] >= net_cut for i in n["found_by"]) or any(d[i] >= cut for i in n["dot_by"]) for n, a, d in big]
    fps = [int(np.sum((a >= net_cut) & ~c["net_positive"])) + int(np.sum((d >= cut) & ~c["positive"]))
           for c, a, d in zip(cases, net, dots)]
    return {**_rates([n for n, _, _ in big], found, fps), "added": float(np.mean([int(np.sum(d >= cut)) for d in dots]))}


def fit_dots(args: argparse.Namespace) -> None:
    """Fit the dot filter's classifier on ``--fit`` seeds; choose its cut on ``--val`` seeds with the network's classifier on."""
    from ai.candidates import FEATURES, CandidateModel
    from ai.dot_candidates import DOT_FEATURES
    from ai.scan_score import fit_logistic

    net = _engine(args.bundle).bundle.candidates[NODULE]
    search = _dot_search()
    t = time.perf_counter()
    train = _load_dots(args.scratch, _seeds(args.fit), args.bundle, args.procs)
    val = _load_dots(args.scratch, _seeds(args.val), args.bundle, args.procs)
    logger.info("%d fitting and %d validation cases read in %.0f s", len(train), len(val), time.perf_counter() - t)
    names = [f for f in DOT_FEATURES if f not in args.drop]
    cols = [DOT_FEATURES.index(f) for f in names]
    ncols = [FEATURES.index(f) for f in net.features]
    x = np.vstack([c["x"][:, cols] for c in train if len(c["x"])])
    y = np.concatenate([c["positive"] for c in train if len(c["x"])]).astype(float)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    penalty = np.append(np.full(len(names), args.l2), 0.0)
    *weights, b = fit_logistic(np.hstack([(x - mean) / scale, np.ones((len(x), 1))]), y, penalty)
    model = CandidateModel(tuple(names), tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, weights)), b, 1.0)
    print(f"\n{len(y)} fitting candidates of the dot filter ({int(y.sum())} touch a nodule); weights on standardised features:\n")
    for f, wi in sorted(zip(names, weights), key=lambda t: -abs(t[1])):
        print(f"  {f:16s} {wi:+.3f}")
    net_p = [net.probability(c["net_x"][:, ncols]) if len(c["net_x"]) else np.zeros(0) for c in val]
    dot_p = [model.probability(c["x"][:, cols]) if len(c["x"]) else np.zeros(0) for c in val]
    print(f"\nvalidation seeds {args.val} ({len(val)} scans): the network's candidates at its cut {net.cut:g}, and the dot filter's "
          f"at each cut (1: none)\n")
    print("| dot cut | sensitivity >= 6 mm | solid | part-solid/GGO | FP per scan | scans with <= 1 FP | dot candidates kept per scan |")
    print("|---|---|---|---|---|---|---|")
    without = evaluate_both(val, net_p, net.cut, dot_p, 1.01)
    for cut in [1.01, *args.cuts]:
        r = evaluate_both(val, net_p, net.cut, dot_p, cut)
        print(f"| {min(cut, 1):g} | {r['sens']:.3f} ({r['n']}) | {r['solid']:.3f} | {r['sub']:.3f} | {r['fp']:.2f} | {r['le1']:.2f} | "
              f"{r['added']:.2f} |")
    grid = np.round(np.arange(0.98, 0.0, -0.02), 2)
    allowed = [(r["sens"], c) for c in grid if (r := evaluate_both(val, net_p, net.cut, dot_p, c))["fp"] - without["fp"] <= args.max_added_fp]
    cut = args.cut if args.cut is not None else float(max(allowed)[1] if allowed else 1.0)  # most found; of those, the highest cut
    r = evaluate_both(val, net_p, net.cut, dot_p, cut)
    print(f"\nchosen cut {cut:g}" + ("" if args.cut is not None else f" (of the cuts adding at most {args.max_added_fp:g} false "
          f"positives per validation scan, the highest of those that find the most)") + f": sensitivity >= 6 mm {without['sens']:.3f} -> {r['sens']:.3f}, solid {r['solid']:.3f}, "
          f"part-solid/GGO {r['sub']:.3f}, {without['fp']:.2f} -> {r['fp']:.2f} FP per scan")
    if args.write is None:
        return
    fitted = (f"scripts/train_candidate_classifier.py fit-dots --fit {args.fit} --val {args.val}: the dot filter's candidates beyond the "
              f"network's on training-family seeds {args.fit} (fit), {args.val} (cut: " +
              (f"given, {cut:g})" if args.cut is not None else f"of those adding <= {args.max_added_fp:g} FP per scan, the highest finding the most)"))
    manifest_path = args.write / "manifest.json"
    m = json.loads(manifest_path.read_text())
    chosen = dataclasses.replace(model, cut=cut)
    # the scan score's evidence is now the most probable kept candidate of either source: its calibration is fitted again
    from ai.scan_score import fit_platt

    peaks = [max(a, d) for a, d in zip(scan_peaks(net_p, net.cut), scan_peaks(dot_p, cut))]
    a_, b_ = fit_platt(peaks, [any(n["labelled"] for n in c["nodules"]) for c in val])
    m["scan_score"]["calibration"] = {"a": round(a_, 3), "b": round(b_, 3),
                                      "fitted_on": f"{fitted}; the most probable kept candidate of the network's and the dot filter's"}
    m["postprocessing"]["dot_candidates"] = {str(NODULE): {
        "sigmas_mm": list(search.sigmas_mm), "grid_mm": search.grid_mm, "min_dot": search.min_dot, "max_candidates": search.max_candidates,
        "model": chosen.as_manifest(fitted)}}
    manifest_path.write_text(manifest_json(m))
    logger.info("wrote %s: dot filter cut %g", manifest_path, cut)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="run the network on training-family phantoms and save the case arrays")
    c.add_argument("--scratch", type=Path, required=True)
    c.add_argument("--seeds", required=True, help="A:B, seeds A..B-1 of the training family")
    c.add_argument("--matrix", type=int, default=256)
    c.add_argument("--procs", type=int, default=2)
    c.add_argument("--bundle", type=Path, default=ROOT / "ai" / "bundles" / "chest-ct-lungs-nodules")
    f = sub.add_parser("fit", help="fit the classifier, choose its cut on validation seeds, optionally write it")
    f.add_argument("--scratch", type=Path, required=True)
    f.add_argument("--fit", required=True, help="A:B, collected seeds to fit on")
    f.add_argument("--val", required=True, help="A:B, collected seeds to choose the cut on")
    f.add_argument("--threshold", type=float, default=CANDIDATE_SETTINGS["threshold"])
    f.add_argument("--within-fraction", type=float, default=CANDIDATE_SETTINGS["within_fraction"])
    f.add_argument("--max-elongation", type=float, default=CANDIDATE_SETTINGS["max_elongation"])
    f.add_argument("--core-threshold", type=float, default=0.35,
                   help="a kept candidate keeps its voxels of at least this probability (0.4.1's label threshold; default: %(default)s)")
    f.add_argument("--model", choices=["logistic", "boosted"], default="logistic",
                   help="a logistic regression, or gradient-boosted trees (BOOSTED; needs scikit-learn to fit) (default: %(default)s)")
    f.add_argument("--l2", type=float, default=1.0)
    f.add_argument("--drop", nargs="*", default=[], help="features to leave out")
    f.add_argument("--cuts", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    f.add_argument("--cut", type=float, help="the cut to write (default: the lowest cut that keeps --max-fp on the validation seeds)")
    f.add_argument("--max-fp", type=float, default=0.25,
                   help="false positives per validation scan that the chosen cut may leave (default: %(default)s, half the target: "
                        "the independent family showed 2.7 times the training family's in 0.4.0)")
    f.add_argument("--write", type=Path, help="a bundle folder whose manifest gets the classifier")
    f.add_argument("--bundle", type=Path, default=ROOT / "ai" / "bundles" / "chest-ct-lungs-nodules")
    d = sub.add_parser("fit-dots", help="fit the dot filter's classifier (ai.dot_candidates), choose its cut, optionally write it")
    d.add_argument("--scratch", type=Path, required=True)
    d.add_argument("--fit", required=True, help="A:B, collected seeds to fit on")
    d.add_argument("--val", required=True, help="A:B, collected seeds to choose the cut on")
    d.add_argument("--l2", type=float, default=1.0)
    d.add_argument("--procs", type=int, default=2, help="processes finding the candidates of uncached cases (default: %(default)s)")
    d.add_argument("--drop", nargs="*", default=[], help="features to leave out")
    d.add_argument("--cuts", type=float, nargs="*", default=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    d.add_argument("--cut", type=float, help="the cut to write (default: of the cuts adding at most --max-added-fp, the highest of those finding the most)")
    d.add_argument("--max-added-fp", type=float, default=0.1,
                   help="false positives per validation scan the dot filter may add (default: %(default)s)")
    d.add_argument("--write", type=Path, help="a bundle folder whose manifest gets the dot filter")
    d.add_argument("--bundle", type=Path, default=ROOT / "ai" / "bundles" / "chest-ct-lungs-nodules")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "collect":
        collect(args)
    elif args.cmd == "fit":
        fit(args)
    elif args.cmd == "fit-dots":
        fit_dots(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
