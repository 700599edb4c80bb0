"""Command-line interface: ``dicomnode serve|echo|send|jobs|retry|worker|convert|phantom|train|infer|models``.

Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dicomnode import __version__
from dicomnode.cli.common import EXIT_FAILED, EXIT_OK, _config, configure_logging
from dicomnode.cli.jobs import add_job_commands
from dicomnode.config import Destination
from dicomnode.errors import ConfigError, DicomNodeError
from dicomnode.jobs.models import SHIPPED_BUNDLES
from ai.errors import AIError
from storage.errors import StorageError

logger = logging.getLogger("dicomnode")





# ----------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.node import Node

    cfg = _config(args)
    if args.port is not None:
        from dataclasses import replace

        cfg = replace(cfg, node=replace(cfg.node, port=args.port))
    configure_logging(args.log_level or cfg.log_level, cfg.log_format, cfg.node.audit_path)
    logger.info("dicomnode %s starting (config: %s)", __version__, cfg.source or "embedded defaults")
    Node(cfg).serve_forever(ready_file=args.ready_file)
    return EXIT_OK


def _destination(args: argparse.Namespace, target: str) -> Destination:
    from dicomnode.net.scu import parse_peer

    if "@" in target:
        return parse_peer(target)
    try:
        return _config(args).destination(target)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or give the peer as AE@HOST:PORT") from exc


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.net.scu import echo

    configure_logging(args.log_level or "WARNING")
    dest = _destination(args, args.peer)
    rtt = echo(dest, calling_ae=args.calling_ae, timeout=args.timeout)
    print(f"C-ECHO {dest.ae_title}@{dest.host}:{dest.port}: success in {rtt * 1000:.1f} ms")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.net.scu import iter_dicom_files, send_files

    configure_logging(args.log_level or "WARNING")
    dest = _destination(args, args.to)
    files = list(iter_dicom_files(Path(p) for p in args.paths))
    if not files:
        print("send: no DICOM files found under the given paths", file=sys.stderr)
        return EXIT_FAILED
    with tqdm(total=len(files), unit="img", desc=f"-> {dest.ae_title}", disable=args.quiet) as bar:
        report = send_files(files, dest, calling_ae=args.calling_ae, timeout=args.timeout, on_progress=bar.update)
    rate = report.sent / report.seconds if report.seconds else 0.0
    print(f"sent {report.sent} of {len(files)} instance(s) to {dest.ae_title} in {report.seconds:.1f} s ({rate:.0f} img/s)")
    for path, why in report.failed[:20]:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    if len(report.failed) > 20:
        print(f"  ... and {len(report.failed) - 20} more failures", file=sys.stderr)
    return EXIT_OK if not report.failed else EXIT_FAILED


def cmd_convert(args: argparse.Namespace) -> int:
    import time

    from dicomnode.volume.reconstruct import VolumePolicy, reconstruct

    configure_logging(args.log_level or "WARNING")
    prefer: dict[str, object] = {}
    for rule in args.prefer:
        key, sep, value = rule.partition("=")
        if not sep or key.replace("-", " ") not in ("echo", "temporal position", "acquisition"):
            raise ConfigError(f"--prefer {rule!r}: use echo=N, temporal-position=N or acquisition=N")
        prefer[key.replace("-", " ")] = value
    policy = VolumePolicy(resample_nonuniform=args.resample_nonuniform, workers=args.workers, prefer=prefer)
    t0 = time.perf_counter()
    vol = reconstruct(Path(args.series), policy, progress=lambda msg: print(msg, file=sys.stderr))
    vol.write_nifti(Path(args.out))
    z, y, x = vol.array.shape
    print(
        f"wrote {args.out}: {x}x{y}x{z} voxels ({vol.array.dtype}), spacing "
        f"{vol.spacing[0]:.3f} x {vol.spacing[1]:.3f} x {vol.spacing[2]:.3f} mm, "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    for ex in vol.excluded:
        print(f"  left out {ex.count} image(s): {ex.reason}")
    return EXIT_OK


def cmd_phantom(args: argparse.Namespace) -> int:
    from ai.phantom import generate
    from dicomnode.testing.synthetic import write_phantom

    configure_logging(args.log_level or "WARNING")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seed, args.seed + args.count):
        ph = generate(seed, matrix=args.matrix, slices=args.slices, max_nodules=args.max_nodules)
        px, _, dz = ph.spacing
        nz, ny, nx = ph.hu.shape
        where = []
        if args.format in ("nifti", "both"):
            ph.write_nifti(out / f"phantom_{seed:04d}_image.nii.gz", out / f"phantom_{seed:04d}_labels.nii.gz")
            where.append("NIfTI")
        if args.format in ("dicom", "both"):
            write_phantom(ph, out / f"phantom_{seed:04d}_dicom")
            where.append("DICOM")
        sizes = ", ".join(f"{n.diameter_mm:.1f}" for n in ph.nodules) or "none"
        print(f"phantom {seed}: {nx}x{ny}x{nz} ({px:.2f} x {px:.2f} x {dz:.2f} mm) as {' and '.join(where)}; nodules (mm): {sizes}")
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
    )
    if args.channels:
        cfg.channels = tuple(args.channels)
    result = train(cfg, progress=not args.quiet)
    last = result["history"][-1] if result["history"] else {}
    print(f"trained {result['steps']} step(s); last epoch: {json.dumps(last)}; bundle in {args.out}")
    return EXIT_OK


def cmd_infer(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.cli.infer import infer

    configure_logging(args.log_level or "WARNING")
    with tqdm(total=0, unit="window", desc="inference", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = infer(Path(args.input), Path(args.out), args.model, args.device, progress)
    for m in summary["measurements"]:
        extra = f", {len(m['lesions'])} lesion(s)" if m["lesions"] else ""
        print(f"{m['name']}: {m['volume_ml']:.1f} mL{extra}")
    print(f"wrote labels.nii.gz, measurements.json and overlay.png to {args.out}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from ai.bundle import BundleError, check_bundle, load_bundle

    configure_logging(args.log_level or "WARNING")
    if args.action == "list":
        root = Path(args.dir)
        found = 0
        for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            try:
                b = load_bundle(d)
            except BundleError as exc:
                print(f"{d.name:<28} BROKEN: {exc}")
                continue
            found += 1
            print(f"{b.name:<28} {b.version:<10} {b.task:<15} {','.join(b.modalities) or '-':<6} {b.weights_format}")
        if not found:
            print(f"no valid bundle under {root}")
        return EXIT_OK
    if args.action == "show":
        b = load_bundle(Path(args.bundle))
        print(f"{b.name} {b.version} ({b.task}, {b.weights_format} weights)")
        print(f"  modalities: {', '.join(b.modalities) or 'any'}; body parts: {', '.join(b.body_parts) or 'any'}")
        print(f"  input: spacing {b.spacing or 'native'} mm, orientation {b.orientation}, normalization {b.normalization}")
        print(f"  inference: ROI {b.roi_size}, overlap {b.overlap}, batch {b.batch_size}")
        for lb in b.labels:
            code = f"SNOMED CT {lb.snomed_code} {lb.snomed_meaning}" if lb.snomed_code else "no code"
            print(f"  label {lb.value}: {lb.name} ({code}), colour {lb.color}{', lesion' if lb.lesion else ''}")
        print(f"  intended use: {b.intended_use or '(not stated)'}")
        return EXIT_OK
    try:
        b = check_bundle(Path(args.bundle))
    except BundleError as exc:
        print(f"dicomnode models check: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{b.name} {b.version}: OK ({b.weights_format} weights load, a {b.roi_size} window gives {b.out_channels} channels)")
    return EXIT_OK


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``dicomnode`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dicomnode",
        description=(
            "An AI DICOM node: receives series over DICOM (C-STORE), stores every instance durably, "
            "decides when each series is complete and queues a job for it."
        ),
        epilog="Run 'dicomnode COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            p.add_argument(
                "--config",
                "-c",
                type=Path,
                help="TOML configuration file (default: $DICOMNODE_CONFIG or config/dicomnode.toml; "
                "DICOMNODE_<SECTION>__<KEY> environment variables override it)",
            )
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity")

    p = sub.add_parser(
        "serve",
        help="run the node: DICOM listener, durable storage, series completion, jobs and delivery",
        description=(
            "Run the node in the foreground until SIGINT/SIGTERM. It listens for C-STORE and C-ECHO, "
            "acknowledges an instance only once it is fsynced to disk and committed to the database, "
            "and queues one job per completed series."
        ),
    )
    common(p)
    p.add_argument("--port", type=int, help="override node.port (0: let the OS choose)")
    p.add_argument("--ready-file", type=Path, help="write {port, pid} as JSON here once listening")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "echo",
        help="check that a DICOM peer answers (C-ECHO)",
        description="Send a C-ECHO to a peer and print the round-trip time. Exit status 0 on success.",
    )
    common(p)
    p.add_argument("peer", help="AE@HOST:PORT, or the name of a configured destination")
    p.add_argument("--calling-ae", default="DICOMNODE", help="our AE title (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default: %(default)s)")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser(
        "send",
        help="send DICOM files or folders to a peer (C-STORE)",
        description=(
            "Send every DICOM file found under PATH (files or folders, recursively) to a peer, as stored "
            "(no transcoding), with a progress bar. Exit status 1 if any instance failed."
        ),
    )
    common(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders")
    p.add_argument("--to", required=True, help="AE@HOST:PORT, or the name of a configured destination")
    p.add_argument("--calling-ae", default="DICOMNODE", help="our AE title (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_send)

    add_job_commands(sub, common)

    p = sub.add_parser(
        "convert",
        help="reconstruct a series folder into a NIfTI volume, to check it in any viewer",
        description=(
            "Reconstruct the 3D volume of a DICOM series (slices ordered by position, rescaled to physical "
            "units such as HU) and write it as NIfTI. Refuses missing or duplicate slices, mixed orientations "
            "and other defects with a readable reason; prints what was left out (e.g. localizers)."
        ),
    )
    common(p, config=False)
    p.add_argument("series", help="folder (or file) of one DICOM series")
    p.add_argument("out", help="output file, .nii or .nii.gz")
    p.add_argument("--resample-nonuniform", action="store_true", help="resample non-uniform slice spacing instead of refusing")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: all cores)")
    p.add_argument(
        "--prefer",
        action="append",
        default=[],
        metavar="KEY=N",
        help="which stack to keep when slice positions repeat: echo=N, temporal-position=N or acquisition=N "
        "(default: the largest stack)",
    )
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser(
        "phantom",
        help="write a procedural chest-CT phantom as a DICOM series (for demos and tests)",
        description=(
            "Generate a chest-CT phantom (body wall, fat, muscle, lungs, heart, spine, table, 0-6 nodules of "
            "3-25 mm, realistic HU with noise and blur) and write it as a DICOM CT series under OUT/dicom, "
            "optionally with NIfTI image/label files. The same seed gives the same phantom."
        ),
    )
    common(p, config=False)
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first phantom (default: %(default)s)")
    p.add_argument("--count", type=int, default=1, help="how many phantoms, seeds seed..seed+count-1 (default: 1)")
    p.add_argument("--matrix", type=int, default=512, help="rows and columns (default: %(default)s)")
    p.add_argument("--slices", type=int, help="number of slices (default: 260-320 mm of chest)")
    p.add_argument("--max-nodules", type=int, default=6, help="0 to N nodules each (default: %(default)s; 0: none)")
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
    common(p, config=False)
    p.add_argument("input", help="DICOM series folder, or a .nii/.nii.gz file")
    p.add_argument("--model", help="bundle name under ai/bundles, or a bundle folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser(
        "models",
        help="list, show or check model bundles",
        description=(
            "Model bundles are directories with a manifest.json and weights (TorchScript, a state_dict of a "
            "named MONAI architecture, or ONNX); MONAI Model Zoo bundles load too. 'check' validates a bundle, "
            "loads its weights and runs one window through it, and explains what is wrong if anything is."
        ),
    )
    common(p, config=False)
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = msub.add_parser("list", help="the bundles in a directory")
    m.add_argument("--dir", default=str(SHIPPED_BUNDLES), help="where bundles live (default: the shipped ones)")
    m = msub.add_parser("show", help="what a bundle is and does")
    m.add_argument("bundle", help="bundle directory")
    m = msub.add_parser("check", help="validate a bundle and run one window through it")
    m.add_argument("bundle", help="bundle directory")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dicomnode`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (DicomNodeError, StorageError, AIError) as exc:
        print(f"dicomnode {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
