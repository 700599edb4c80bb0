"""Lesion volume settings compared on the same network outputs: the bundle's own, and variants of it.

Choosing a ``measurement.lesion_volume`` setting means measuring the same
label maps with each candidate: the network, its candidates and the
classifier do not change, so they run once per scan and their label map
and nodule probability are cached (keyed by the generator's sources and by
the bundle's weights and manifest less its ``measurement``).  Each setting
then re-measures every scan (:func:`ai.measure.measure`), and the table
gives, per setting, the found nodules of 6 mm or more within +-15 % of the
true volume, by kind, and how many volumes changed against the bundle's own
setting (the reference, measured in the same run), with the nodules that
crossed the +-15 % line.

Tune on the training family's validation seeds (6000+, ``--family train``)
and check on others (3000+); ``--family eval`` scores the frozen independent
family, which is for a last look at a choice made, never for choosing.

Usage::

    python bench/volume_sweep.py --first-seed 6000 --count 60 \\
        --variant 'no calcium={"calcium": null}' --variant 'reach 6={"grow_max_mm": 6}'

``--quick`` is a smoke run on one small scan.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from ai.bundle import load_bundle  # noqa: E402
from ai.engine import Engine  # noqa: E402
from ai.lesion_volume import LesionVolume  # noqa: E402
from bench.common import out_dir, use_quick_out  # noqa: E402
from bench.model_quality import DEFAULT, _source_digest, eval_cases, nodule_lesions, run, train_cases  # noqa: E402
from bench.quality import NODULE, Scores, TrueNodule, score_case  # noqa: E402

KINDS = ("solid", "part-solid", "ground-glass", "calcified")


@functools.lru_cache(maxsize=None)
def _bundle_digest(bundle: Path) -> str:
    """A digest of what makes a bundle's label maps: its weights and its manifest less ``measurement``."""
    digest = hashlib.sha256()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("measurement", None)
    digest.update(json.dumps(manifest, sort_keys=True).encode())
    for path in sorted(bundle.glob("model.*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def outputs(engine: Engine, bundle: Path, family: str, cases: Iterator[Any], matrix: int) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """Each case with the network's label map and nodule probability, from the cache when this bundle made them."""
    generator = "ai.phantoms" if family == "train" else "bench.evalset"
    for i, case in enumerate(cases):
        key = case.seed if getattr(case, "seed", None) is not None else i  # the frozen family's cases come in a fixed order
        name = f"{family}-{key}-{matrix}-{_source_digest(generator)}-{_bundle_digest(bundle)}.npz"
        path = out_dir() / "volume-sweep-cache" / name
        if not path.exists():
            res, _ = run(engine, case)
            assert res.labels is not None and res.probabilities is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, labels=res.labels.astype(np.uint8), prob=res.probabilities[NODULE].astype(np.float16))
            tmp.replace(path)
        with np.load(path) as data:
            yield case, data["labels"], data["prob"]


def big(scores: Scores) -> list[TrueNodule]:
    """Found nodules of 6 mm or more with a measured volume."""
    return [n for n in scores.nodules if n.diameter_mm >= 6 and n.found and n.measured_mm3 is not None]


def error(n: TrueNodule) -> float:
    assert n.measured_mm3 is not None
    return n.measured_mm3 / n.volume_mm3 - 1.0


def sweep(engine: Engine, bundle: Path, family: str, cases: Iterator[Any], matrix: int,
          settings: dict[str, LesionVolume]) -> dict[str, Scores]:
    """Every setting's scores on the same label maps."""
    scores = {name: Scores(name) for name in settings}
    for case, labels, prob in outputs(engine, bundle, family, cases, matrix):
        probs = np.zeros((NODULE + 1, *labels.shape), np.float32)
        probs[NODULE] = prob
        image = case.hu.astype(np.float32)
        for name, lv in settings.items():
            score_case(scores[name], case, labels, None, nodule_lesions(engine, case, labels, probs, image, lv))
    return scores


def report(scores: dict[str, Scores], reference: str) -> str:
    """The table, and the nodules whose volume crossed the +-15 % line against the reference."""
    lines = ["| setting | found nodules >= 6 mm | within +-15 % | " + " | ".join(KINDS) + " | volumes changed | crossed the line |",
             "|---|---|---|" + "---|" * len(KINDS) + "---|---|"]
    crossed: list[str] = []
    for name, s in scores.items():
        found = big(s)
        within = [abs(error(n)) <= 0.15 for n in found]
        kinds = []
        for kind in KINDS:
            k = [abs(error(n)) <= 0.15 for n in found if n.kind == kind]
            kinds.append(f"{sum(k)}/{len(k)}" if k else "-")
        changed, gained, lost = 0, 0, 0
        # The same true nodules in the same order, found by the same label maps; only the measurements differ.
        ref_found = {id(a) for a in big(scores[reference])}
        this_found = {id(n) for n in found}
        pairs = [(a, n) for a, n in zip(scores[reference].nodules, s.nodules) if id(a) in ref_found and id(n) in this_found]
        for a, n in pairs:
            if abs(error(a) - error(n)) > 1e-9:
                changed += 1
                was, now = abs(error(a)) <= 0.15, abs(error(n)) <= 0.15
                if was != now:
                    gained, lost = gained + now, lost + was
                    crossed.append(f"- {name}: scan {n.case}, {n.kind} {n.site} {n.diameter_mm:.1f} mm, "
                                   f"{error(a):+.0%} -> {error(n):+.0%}")
        mark = " (reference)" if name == reference else ""
        share = f"{np.mean(within):.3f}" if within else "-"
        lines.append(f"| {name}{mark} | {len(found)} | {share} | " + " | ".join(kinds)
                     + f" | {changed} | +{gained} / -{lost} |")
    return "\n".join(lines + ([""] + crossed if crossed else []))


def parse_variant(text: str, base: LesionVolume) -> tuple[str, LesionVolume]:
    """``name={"key": value, ...}``: the bundle's setting with those keys changed (null: None)."""
    name, _, changes = text.partition("=")
    if not changes:
        raise SystemExit(f"--variant {text!r}: expected name={{json}}")
    try:
        return name, dataclasses.replace(base, **json.loads(changes))
    except (json.JSONDecodeError, TypeError) as exc:
        raise SystemExit(f"--variant {text!r}: {exc}") from exc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=DEFAULT)
    ap.add_argument("--family", choices=["train", "eval"], default="train")
    ap.add_argument("--first-seed", type=int, default=6000, help="training family: first seed (default: %(default)s, validation)")
    ap.add_argument("--count", type=int, default=60, help="training family: scans (default: %(default)s)")
    ap.add_argument("--matrix", type=int, default=256, help="rows and columns of the scans (default: %(default)s)")
    ap.add_argument("--variant", action="append", default=[], metavar='NAME={"key": value}',
                    help="a lesion_volume setting to compare: the bundle's with these keys changed (repeatable)")
    ap.add_argument("--quick", action="store_true", help="smoke run: one small scan")
    args = ap.parse_args()
    if args.quick:
        use_quick_out()
        args.count, args.matrix = 1, 128
    engine = Engine(load_bundle(args.bundle), device="auto")
    base = dataclasses.replace(engine.bundle.lesion_volume, thresholds=engine.tail_thresholds())
    settings = {"bundle": base}
    for text in args.variant or (['voxels={"method": "voxels"}'] if args.quick else []):
        name, lv = parse_variant(text, base)
        settings[name] = lv
    if args.family == "train":
        cases = train_cases(args.first_seed, args.count, args.matrix)
        what = f"training family, seeds {args.first_seed}-{args.first_seed + args.count - 1}"
    else:
        cases = eval_cases(args.matrix, 1 if args.quick else None)
        what = "independent family (bench/evalset, frozen): a last look, never for choosing"
    scores = sweep(engine, args.bundle, args.family, cases, args.matrix, settings)
    print(f"\nbundle {args.bundle.name}, {what}, {args.matrix}x{args.matrix} scans\n")
    print(report(scores, "bundle"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
