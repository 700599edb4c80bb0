"""``dicomnode phantom|train|infer|models``: making, training, running and checking models from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.cli.common import EXIT_FAILED, EXIT_OK, configure_logging
from dicomnode.errors import ConfigError
from dicomnode.jobs.models import SHIPPED_BUNDLES


def cmd_phantom(args: argparse.Namespace) -> int:
    from ai.phantoms import generate
    from dicomnode.testing.synthetic import write_phantom

    configure_logging(args.log_level or "WARNING")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seed, args.seed + args.count):
        ph = generate(
            seed, matrix=args.matrix, slices=args.slices, max_nodules=args.max_nodules,
            healthy_fraction=args.healthy_fraction, hard_negatives=args.hard_negatives,
        )
        px, _, dz = ph.spacing
        nz, ny, nx = ph.hu.shape
        where = []
        if args.format in ("nifti", "both"):
            name = out / f"phantom_{seed:04d}"
            hard = name.with_name(name.name + "_hardneg.nii.gz") if args.hard_negatives else None
            ph.write_nifti(name.with_name(name.name + "_image.nii.gz"), name.with_name(name.name + "_labels.nii.gz"), hard)
            where.append("NIfTI" + (" (with hard negatives)" if hard else ""))
        if args.format in ("dicom", "both"):
            write_phantom(ph, out / f"phantom_{seed:04d}_dicom")
            where.append("DICOM")
        found = ", ".join(f"{n.kind} {n.site} {n.diameter_mm:.1f} mm {n.side}" for n in ph.nodules) or "none"
        print(f"phantom {seed}: {nx}x{ny}x{nz} ({px:.2f} x {px:.2f} x {dz:.2f} mm, {ph.position}) as {' and '.join(where)}; "
              f"nodules: {found}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from ai.training import TrainConfig, train

    configure_logging(args.log_level or "INFO")
    pz, py, px = args.patch
    sx, sy, sz = args.spacing
    cfg = TrainConfig(
        data=args.data, out=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        patch=(pz, py, px), batch_size=args.batch_size, lr=args.lr, workers=args.workers,
        seed=args.seed, resume=not args.no_resume, task=args.task, sampling=args.sampling,
        val_fraction=args.val_fraction, amp=not args.no_amp, spacing=(sx, sy, sz),
        flip=args.flip, hard_negative_fraction=args.hard_negatives, val_every=args.val_every,
    )
    if args.labels:
        cfg.labels = _labels(args.labels)
    if args.channels:
        cfg.channels = tuple(args.channels)
    result = train(cfg, progress=not args.quiet)
    last = result["history"][-1] if result["history"] else {}
    print(f"trained {result['steps']} step(s); last epoch: {json.dumps(last)}; bundle in {args.out}")
    return EXIT_OK


def _labels(text: str) -> dict[int, str]:
    """``"1=right lung,2=left lung,3=nodule"`` as ``{1: "right lung", ...}``."""
    out: dict[int, str] = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ConfigError(f"--labels {text!r}: use VALUE=NAME pairs separated by commas, e.g. 1=lung,2=nodule")
        out[int(value)] = name.strip()
    return out


def cmd_infer(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.cli.infer import infer

    configure_logging(args.log_level or "WARNING")
    with tqdm(total=0, unit="window", desc="inference", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = infer(Path(args.input), Path(args.out), args.model, args.device, progress, models_dir=_models_dir(args))
    for m in summary["measurements"]:
        print(f"{m['name']}: {m['volume_ml']:.1f} mL")
    for f in summary["findings"]:
        where = f" ({f['organ']})" if f["organ"] else ""
        axes = f", {f['long_axis_mm']} x {f['short_axis_mm']} mm on slice {f['axis_slice']}" if f["long_axis_mm"] else ""
        print(f"{f['name']}{where}: {f['volume_ml']:.2f} mL{axes}")
    print(f"wrote labels.nii.gz, measurements.json and overlay.png to {args.out}")
    return EXIT_OK


def _models_dir(args: argparse.Namespace) -> Path:
    from dicomnode.cli.common import _config

    return _config(args).models_dir


def _nnunet(d: Path) -> tuple[list[str], str]:
    """An nnU-Net v2 folder's problems (empty: none) and a one-line summary (folds, labels)."""
    import json as _json

    from ai.nnunet_runner import fold_names, label_names, problems

    found = problems(d)
    if found:
        return found, ""
    labels = label_names(_json.loads((d / "dataset.json").read_text()))
    names = ", ".join(f"{v}={n}" for v, n in sorted(labels.items()) if v)
    return [], f"fold(s) {', '.join(fold_names(d))}; labels {names}"


def cmd_models(args: argparse.Namespace) -> int:
    from ai.bundle import BundleError, check_bundle, load_bundle
    from dicomnode.jobs.models import ModelFormat, bundle_path, install_model, model_format

    configure_logging(args.log_level or "WARNING")
    if args.action == "import":
        dest, fmt = install_model(
            Path(args.path), args.name, _models_dir(args), replace=args.replace, task=args.task, fast=args.fast,
        )
        print(f"installed {args.name} ({fmt.value}) in {dest}; name it in [worker] models or a routing rule to run it")
        return EXIT_OK
    if args.action == "list":
        roots = [Path(args.dir)] if args.dir else [_models_dir(args), SHIPPED_BUNDLES]
        found = 0
        for root in roots:
            for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
                where = "" if args.dir else "shipped" if root == SHIPPED_BUNDLES else "installed"
                if model_format(d) is ModelFormat.NNUNET:
                    bad, summary = _nnunet(d)
                    found += not bad
                    print(f"{d.name:<40} {'BROKEN: ' + '; '.join(bad) if bad else 'nnU-Net v2: ' + summary} {where}")
                    continue
                try:
                    b = load_bundle(d)
                except BundleError as exc:
                    kind = model_format(d)
                    print(f"{d.name:<40} BROKEN ({kind.value if kind else 'unknown format'}{', ' + where if where else ''}): {exc}")
                    continue
                found += 1
                label = d.name if d.name == b.name else f"{d.name} ({b.name})"
                print(f"{label:<40} {b.version:<10} {b.task:<15} {','.join(b.modalities) or '-':<6} {b.weights_format:<12} {where}")
        if not found:
            print(f"no valid model under {', '.join(map(str, roots))}")
        return EXIT_OK
    args.bundle = str(bundle_path(args.bundle, _models_dir(args)))
    if model_format(Path(args.bundle)) is ModelFormat.NNUNET:  # no manifest: nnU-Net's own files say it all
        bad, summary = _nnunet(Path(args.bundle))
        if bad:
            print(f"dicomnode models {args.action}: {Path(args.bundle).name}: " + "; ".join(bad), file=sys.stderr)
            return EXIT_FAILED
        print(f"{Path(args.bundle).name}: nnU-Net v2 model, run by nnU-Net's own predictor; {summary}")
        return EXIT_OK
    if args.action == "check" and model_format(Path(args.bundle)) is ModelFormat.TOTALSEGMENTATOR_TASK:
        return _check_totalseg(Path(args.bundle))
    if args.action == "show":
        b = load_bundle(Path(args.bundle))
        print(f"{b.name} {b.version} ({b.task}, {b.weights_format} weights)")
        print(f"  modalities: {', '.join(b.modalities) or 'any'}; body parts: {', '.join(b.body_parts) or 'any'}")
        if b.source == "monai-bundle":  # its own preprocessing runs, not the node's
            from ai.monai_runner import describe

            print(f"  runs {describe(b.path)}")
        else:
            print(f"  input: spacing {b.spacing or 'native'} mm, orientation {b.orientation}, normalization {b.normalization}")
        print(f"  inference: ROI {b.roi_size}, overlap {b.overlap}, batch {b.batch_size}")
        for lb in b.labels:
            code = f"SNOMED CT {lb.snomed_code} {lb.snomed_meaning}" if lb.snomed_code else "no code"
            print(f"  label {lb.value}: {lb.name} ({code}), colour {lb.color}{', lesion' if lb.lesion else ''}")
        for value, model in sorted(b.candidates.items()):  # what decides which lesion candidates are reported
            how = f"gradient-boosted trees ({len(model.trees.trees)})" if model.trees is not None else "logistic regression"
            print(f"  label {value} candidates: {how} on {len(model.features)} features ({', '.join(model.features)}), "
                  f"kept at probability {model.cut:g} or more")
        if b.scan_score is not None:
            sc = b.scan_score
            print(f"  scan score: '{sc.present}' / '{sc.absent}' from label {sc.label}'s most probable lesion, "
                  f"calibrated a={sc.a:g} b={sc.b:g}")
        print(f"  intended use: {b.intended_use or '(not stated)'}")
        return EXIT_OK
    from ai.monai_bundle import is_monai_bundle
    from ai.monai_runner import explain

    if is_monai_bundle(Path(args.bundle)):  # build its own transforms, network and inferer; name what fails
        problems = explain(Path(args.bundle))
        if problems:
            print(f"dicomnode models check: {Path(args.bundle).name}: " + "; ".join(problems), file=sys.stderr)
            return EXIT_FAILED
    try:
        b = check_bundle(Path(args.bundle))
    except BundleError as exc:
        print(f"dicomnode models check: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{b.name} {b.version}: OK ({b.weights_format} weights load, a {b.roi_size} window gives {b.out_channels} channels)")
    return EXIT_OK


def _check_totalseg(folder: Path) -> int:
    """``models check`` of an installed TotalSegmentator task: TotalSegmentator importable, every weights folder there."""
    from ai.bundle import BundleError, load_bundle
    from ai.errors import AIError
    from ai.totalseg_bundle import missing_folders, read_record, weight_folders

    try:
        record = read_record(folder)
        task, fast = str(record["task"]), bool(record.get("fast", False))
        missing = missing_folders(folder, task, fast)
        b = load_bundle(folder)
    except (AIError, BundleError) as exc:
        print(f"dicomnode models check: {folder.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if missing:
        print(f"dicomnode models check: {folder.name}: TotalSegmentator task {task} lacks weights: {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    coded = sum(1 for lb in b.labels if lb.snomed_code)
    print(
        f"{b.name}: OK (TotalSegmentator task {task}{' fast' if fast else ''}, run by TotalSegmentator's own API offline; "
        f"weights {', '.join(weight_folders(task, fast))}; {len(b.labels)} classes, {coded} with standard codes)"
    )
    return EXIT_OK


# ------------------------------------------------------------------- parser


def add_model_commands(sub: Any, common: Callable[..., None]) -> None:
    """Add ``phantom``, ``train``, ``infer`` and ``models`` to the CLI's subcommands."""
    p = sub.add_parser(
        "phantom",
        help="write a procedural chest-CT phantom as a DICOM series (for demos and tests)",
        description=(
            "Generate a chest-CT phantom (body, ribs, spine, heart, aorta, right and left lungs with fissures, "
            "pulmonary vessel and bronchial trees, 0-6 solid, part-solid, ground-glass or calcified nodules of "
            "3-30 mm, confounders such as emphysema or effusion, a scanner's kernel, noise and patient position) "
            "and write it as a DICOM CT series, or as NIfTI image/label pairs for training (labels: 1 right lung, "
            "2 left lung, 3 nodule). The same seed gives the same phantom."
        ),
    )
    common(p, config=False)
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first phantom (default: %(default)s)")
    p.add_argument("--count", type=int, default=1, help="how many phantoms, seeds seed..seed+count-1 (default: 1)")
    p.add_argument("--matrix", type=int, default=512, help="rows and columns (default: %(default)s)")
    p.add_argument("--slices", type=int, help="number of slices (default: 260-320 mm of chest)")
    p.add_argument("--max-nodules", type=int, default=6, help="1 to N nodules in a scan that has any (default: %(default)s; 0: none)")
    p.add_argument(
        "--healthy-fraction", type=float, default=1 / 3, metavar="F",
        help="share of scans with no nodule at all (default: 1/3)",
    )
    p.add_argument(
        "--hard-negatives", action="store_true",
        help="also write phantom_NNNN_hardneg.nii.gz: vessels, airway walls, fissures and confounders, for "
        "'dicomnode train --hard-negatives'",
    )
    p.add_argument(
        "--format", choices=["dicom", "nifti", "both"], default="dicom",
        help="phantom_NNNN_dicom/ series, phantom_NNNN_image/labels.nii.gz pairs for training, or both",
    )
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser(
        "train",
        help="train a segmentation or classification model on NIfTI image/label pairs and export it as a bundle",
        description=(
            "Train a MONAI 3D UNet (Dice+CE, AdamW, cosine schedule, AMP on CUDA) on *_image.nii.gz / "
            "*_labels.nii.gz pairs, validating each epoch and checkpointing (re-running resumes). Exports a "
            "bundle with state_dict, TorchScript and ONNX weights. Run it under 'torchrun --nproc_per_node N' "
            "for DDP."
        ),
    )
    common(p, config=False)
    p.add_argument("--data", required=True, help="folder of *_image.nii.gz / *_labels.nii.gz pairs")
    p.add_argument("--out", required=True, help="bundle folder to write (checkpoints go in OUT/checkpoints)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96], metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5], metavar=("X", "Y", "Z"))
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-fraction", type=float, default=0.2,
        help="fraction of the pairs held out for the per-epoch validation Dice (default: %(default)s)",
    )
    from ai.training.task import TaskChoices  # the registered tasks, discovered only when --task is checked

    p.add_argument(
        "--task", choices=TaskChoices(), default="segmentation", metavar="TASK",
        help="a registered training task (%(choices)s): segmentation (lungs and nodules, a UNet on patches) or "
        "classification (nodule present/absent per volume; --patch is then the whole-volume input size)",
    )
    p.add_argument("--channels", type=int, nargs="+", help="network channels per level (default: 16 32 64 128)")
    p.add_argument(
        "--sampling", choices=["components", "voxels"], default="components",
        help="where foreground patches centre: on a label, then one of its connected components, chosen uniformly "
        "(small lesions are seen as often as large ones), or on a random foreground voxel (default: %(default)s)",
    )
    p.add_argument(
        "--labels", metavar="V=NAME,...",
        help="label values and names of the label maps, e.g. '1=right lung,2=left lung,3=nodule' "
        "(default: 1=right lung,2=left lung,3=nodule); names 'lung', 'right lung', 'left lung' and 'nodule' get SNOMED CT codes",
    )
    p.add_argument(
        "--flip", action="store_true",
        help="left-right flip augmentation (off by default: it would teach that the right lung may lie on the left; "
        "use it only when no label names a side)",
    )
    p.add_argument(
        "--hard-negatives", type=float, default=0.0, metavar="FRACTION",
        help="fraction of patches centred on hard negatives from *_hardneg.nii.gz beside each pair "
        "(vessels, airways, fissures: what a nodule detector must leave alone; default: %(default)s)",
    )
    p.add_argument(
        "--val-every", type=int, default=1, metavar="N",
        help="validate every N epochs and after the last (validation of whole volumes is slow on a CPU; default: %(default)s)",
    )
    p.add_argument("--no-resume", action="store_true", help="start again even if OUT has a checkpoint")
    p.add_argument(
        "--no-amp", action="store_true",
        help="train in fp32 on CUDA too (by default CUDA uses automatic mixed precision; the CPU is always fp32)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "infer",
        help="run a model on a DICOM series folder or a NIfTI file",
        description=(
            "Segment a volume with a model bundle (default: the shipped chest-CT lungs+nodules model) and "
            "write labels.nii.gz (same grid as the input), measurements.json and overlay.png to OUT."
        ),
    )
    common(p)
    p.add_argument("input", help="DICOM series folder, or a .nii/.nii.gz file")
    p.add_argument("--model", help="a model's name (installed with 'models import' in the configured models_dir, or shipped), "
                   "or a model folder: dicomnode bundle, MONAI bundle or nnU-Net v2")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "models",
        help="list, show or check model bundles",
        description=(
            "Model bundles are directories with a manifest.json and weights (TorchScript, a state_dict of a "
            "named MONAI architecture, or ONNX); MONAI Model Zoo bundles load too. 'import' installs one in the "
            "node's model directory; 'list' shows the installed and shipped ones; 'check' validates a model, "
            "loads its weights and runs one window through it, and explains what is wrong if anything is."
        ),
    )
    common(p, config=False)
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = msub.add_parser(
        "import", help="install a model folder in the node's model directory",
        description=(
            "Validate a model folder (a dicomnode bundle, a MONAI Model Zoo bundle or an nnU-Net v2 trained-model "
            "folder) and copy it into the node's model directory ([worker] models_dir, under the storage folder) as "
            "NAME. The copy is renamed into place, so a running worker never sees half a model. An installed model "
            "runs when [worker] models or a routing rule names it. A TotalSegmentator weights folder (what its own tools "
            "download, e.g. ~/.totalsegmentator/nnunet/results) installs one task with --task: only the weights that "
            "task needs are copied, and it runs through TotalSegmentator's own API, offline."
        ),
    )
    m.add_argument("path", help="the model folder")
    m.add_argument("--name", required=True, help="the name to install it under (letters, digits, '.', '_', '-')")
    m.add_argument("--replace", action="store_true", help="swap out an installed model of that name")
    m.add_argument(
        "--task", help="for a TotalSegmentator weights folder: the task to install (total, lung_vessels, lung_nodules ...); "
        "only the weights it needs are copied",
    )
    m.add_argument("--fast", action="store_true", help="with --task: TotalSegmentator's fast (3 mm) variant of the task")
    m = msub.add_parser("list", help="the installed and shipped models (or the bundles in --dir)")
    m.add_argument("--dir", help="list the bundles in this directory instead")
    m = msub.add_parser("show", help="what a model is and does")
    m.add_argument("bundle", help="an installed or shipped model's name, or a model folder")
    m = msub.add_parser("check", help="validate a model and run one window through it")
    m.add_argument("bundle", help="an installed or shipped model's name, or a model folder")
    for m in msub.choices.values():
        m.add_argument("--config", "-c", type=Path, help="TOML configuration file: where installed models live ([worker] models_dir)")
    p.set_defaults(func=cmd_models)
