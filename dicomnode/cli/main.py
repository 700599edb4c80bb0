"""Command-line interface: ``dicomnode serve|echo|send|convert`` here; ``jobs|retry|worker`` in
:mod:`dicomnode.cli.jobs`; ``phantom|train|infer|models`` in :mod:`dicomnode.cli.models`.

Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dicomnode import __version__
from dicomnode.cli.common import EXIT_FAILED, EXIT_OK, _config, configure_logging
from dicomnode.cli.fetch import add_fetch_command
from dicomnode.cli.jobs import add_job_commands
from dicomnode.cli.models import add_model_commands
from dicomnode.cli.quarantine import add_quarantine_commands
from dicomnode.cli.users import add_user_commands
from dicomnode.config import Destination
from dicomnode.errors import ConfigError, DicomNodeError
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
    configure_logging(args.log_level or cfg.log_level, cfg.log_format, cfg.node.audit_path, cfg.node.storage_dir)
    logger.info("dicomnode %s starting (config: %s)", __version__, cfg.source or "embedded defaults")
    Node(cfg).serve_forever(ready_file=args.ready_file)
    return EXIT_OK


def _destination(args: argparse.Namespace, target: str) -> Destination:
    from dicomnode.net.scu import parse_peer

    if "@" in target:
        return parse_peer(target)
    try:
        dest = _config(args).destination(target)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or give the peer as AE@HOST:PORT") from exc
    if dest.url is not None:
        raise ConfigError(f"destination {target!r} is a DICOMweb destination ({dest.url}); echo and send speak DIMSE")
    return dest


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
    add_fetch_command(sub, common)
    add_quarantine_commands(sub, common)
    add_user_commands(sub, common)

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
    add_model_commands(sub, common)
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
