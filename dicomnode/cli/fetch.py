"""``dicomnode fetch``: pull a study, or backfill a date range, from a configured source PACS.

The source sends the instances by C-MOVE to the node's own AE title; the
running node (``serve``) receives them at its listener, so they are stored,
completed, selected and processed exactly as if they had been pushed.  A
backfill asks the source for the studies of a date range, skips those the
node already holds (so an interrupted backfill resumes where it stopped, and
each study is processed once) and fetches at most ``--limit`` new ones.
Studies are named by their position and date, not by UID.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from dicomnode.audit import audit
from dicomnode.cli.common import EXIT_FAILED, EXIT_OK, _config, configure_logging
from dicomnode.errors import ConfigError, NetworkError

logger = logging.getLogger(__name__)


def _day(text: str) -> str:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` as DICOM's ``YYYYMMDD``."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).strftime("%Y%m%d")
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}")


def _held(engine: Any, study_uid: str) -> bool:
    """Whether the node holds series of this study already (a resumed backfill skips it)."""
    from storage.study import study_series

    return bool(study_series(engine, study_uid))


def cmd_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.net.fetching import fetch_study, holds_study, list_studies
    from storage.database import migrate, open_engine
    from storage.fetches import record_fetch

    configure_logging(args.log_level or "WARNING")
    cfg = _config(args)
    source = cfg.source_named(args.source)
    if (args.study is None) == (args.since is None):
        raise ConfigError("give --study STUDY_UID (one study) or --since DATE (a backfill), not both")
    me, timeout = cfg.node.ae_title, args.timeout
    engine = open_engine(cfg.node.database_url, sqlite_synchronous=cfg.node.sqlite_synchronous)
    migrate(engine)
    if args.study is not None:
        if not holds_study(cfg, source, args.study, timeout):
            print(f"{source.name} holds no study with that Study Instance UID (its search found none)", file=sys.stderr)
            return EXIT_FAILED
        studies = [args.study]
    else:
        until = args.until or date.today().strftime("%Y%m%d")
        found = list_studies(cfg, source, since=args.since, until=until, modality=args.modality, timeout=timeout)
        studies = [s.study_uid for s in found]
        print(f"{source.name}: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'} from {args.since} to {until}"
              + (f" with {args.modality}" if args.modality else ""))
    fetched = skipped = failures = 0
    with tqdm(total=len(studies), unit="study", desc=f"<- {source.name}", disable=args.quiet or len(studies) < 2) as bar:
        for i, study in enumerate(studies, start=1):
            bar.update(1)
            if args.limit is not None and fetched >= args.limit:
                break
            if args.since is not None and _held(engine, study):
                skipped += 1
                continue
            label = f"study {i} of {len(studies)}"
            try:
                record_fetch(engine, study, source.name)  # its jobs will say they came from this source
                done = fetch_study(cfg, source, study, series=args.series or [], modality=args.modality, body_part=args.body_part,
                                   timeout=timeout)
                if done is None:
                    tqdm.write(f"{label}: no series of {args.modality or 'any modality'}"
                               f"{' / ' + args.body_part if args.body_part else ''} at {source.name}; skipped")
                    skipped += 1
                    continue
                out, series = done
            except NetworkError as exc:
                failures += 1
                audit("fetch", source=source.name, outcome="failed", error=str(exc))
                tqdm.write(f"{label}: {exc}", file=sys.stderr)
                if args.study is not None:
                    return EXIT_FAILED
                continue
            audit("fetch", source=source.name, outcome="moved", instances=out.completed, failed=out.failed, series=series or None)
            if out.completed == 0 and out.failed == 0:
                failures += 1
                tqdm.write(f"{label}: {source.name} sent nothing (it holds no instances of it{' in those series' if series else ''})",
                           file=sys.stderr)
                continue
            fetched += 1
            tqdm.write(f"{label}: {out.completed} instance(s) sent to {me} by {source.name}"
                       + (f", {out.failed} failed" if out.failed else "") + (f", {out.warning} with warnings" if out.warning else ""))
            if out.failed:
                failures += 1
    print(f"fetched {fetched} stud{'y' if fetched == 1 else 'ies'}; {skipped} skipped (already in the node or no matching series); "
          f"{failures} with failures. The running node stores and processes what arrived (see 'dicomnode jobs').")
    return EXIT_OK if not failures else EXIT_FAILED


def add_fetch_command(sub: Any, common: Callable[..., None]) -> None:
    """Add ``fetch`` to the CLI's subcommands."""
    p = sub.add_parser(
        "fetch",
        help="pull a study, or backfill a date range, from a configured source PACS",
        description=(
            "Ask a [[sources]] PACS to send a study (or its series of a modality and body part) to this node by "
            "C-MOVE; the running node receives, stores and processes them as if they had been pushed. The source must "
            "know this node's AE title (node.ae_title) with its host and port as a move destination. A DICOMweb source "
            "(kind = \"dicomweb\") is searched by QIDO-RS and read by WADO-RS, and what it sends is stored through the "
            "node's own listener (a stream cut short stores nothing). With --since, "
            "backfill: every study of the date range (C-FIND), skipping those the node already holds, so a "
            "backfill that was interrupted resumes and processes each study once."
        ),
    )
    common(p)
    p.add_argument("--from", dest="source", required=True, help="the name of a [[sources]] entry")
    p.add_argument("--study", help="the Study Instance UID to fetch")
    p.add_argument("--series", action="append", help="only this Series Instance UID (repeatable; with --study)")
    p.add_argument("--since", type=_day, help="backfill: first study date (YYYY-MM-DD)")
    p.add_argument("--until", type=_day, help="backfill: last study date (default: today)")
    p.add_argument("--modality", help="only studies and series of this modality, e.g. CT")
    p.add_argument("--body-part", help="only series with this BodyPartExamined, e.g. CHEST")
    p.add_argument("--limit", type=int, help="backfill: fetch at most this many new studies")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout for queries in seconds (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch)
