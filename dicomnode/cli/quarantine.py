"""``dicomnode quarantine list|release|purge``: the quarantine from the command line.

Entries are named by number, with the node's internal series and job
numbers: no UID, file name or patient attribute is printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from dicomnode.audit import audit
from dicomnode.cli.common import EXIT_OK, EXIT_USAGE, _config, configure_logging
from storage.states import QuarantineState

if TYPE_CHECKING:
    from storage.quarantine import QuarantineEntry

STATES_HELP = (
    "held: the files are in the quarantine, out of the live tree; "
    "released: put back by 'release' and the series queued again; "
    "superseded: a later job of the series succeeded (current files went back to the live tree, older copies deleted); "
    "purged: the files were deleted (by 'purge' or after retention.quarantine_days)"
)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from storage.database import migrate, open_engine

    cfg = _config(args)
    configure_logging(args.log_level or "WARNING", cfg.log_format, cfg.node.audit_path)
    engine = open_engine(cfg.node.database_url, sqlite_synchronous=cfg.node.sqlite_synchronous)
    migrate(engine)
    return cfg, engine


def age(seconds: float) -> str:
    """``3d 4h``, ``5h 12m``, ``7m``: how long ago, for people."""
    minutes = int(seconds // 60)
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def _as_json(e: QuarantineEntry) -> dict[str, object]:
    return {
        "id": e.id, "series_id": e.series_id, "job_id": e.job_id, "state": e.state.value, "reason": e.reason,
        "created_at": e.created_at.isoformat(), "ended_at": e.ended_at.isoformat() if e.ended_at else None,
        "files": e.file_count, "bytes": e.bytes,
    }


def cmd_list(args: argparse.Namespace) -> int:
    from storage.models import utcnow
    from storage.quarantine import held_summary, list_entries

    _cfg, engine = _open(args)
    entries = list_entries(engine, QuarantineState(args.state) if args.state else None, limit=args.limit)
    if args.json:
        print(json.dumps([_as_json(e) for e in entries], indent=2))
        return EXIT_OK
    if not entries:
        print("the quarantine is empty" if not args.state else f"no {args.state} quarantine entries")
        return EXIT_OK
    now = utcnow()
    print(f"{'ID':>5} {'SERIES':>6} {'JOB':>5} {'STATE':<10} {'AGE':>7} {'FILES':>5} {'SIZE':>9}  REASON")
    for e in entries:
        reason = e.reason if len(e.reason) <= 90 else e.reason[:87] + "..."
        print(
            f"{e.id:>5} {e.series_id:>6} {e.job_id if e.job_id is not None else '-':>5} {e.state.value:<10} "
            f"{age((now - e.created_at).total_seconds()):>7} {e.file_count:>5} {e.bytes / 1e6:>6.1f} MB  {reason}"
        )
    n, files, size = held_summary(engine)
    print(f"held now: {n} entr{'y' if n == 1 else 'ies'}, {files} file(s), {size / 1e6:.1f} MB")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from storage.quarantine import get_entry, release

    cfg, engine = _open(args)
    entry = get_entry(engine, args.id)
    done = release(engine, args.id, cfg.node.incoming_dir, cfg.node.quarantine_dir)
    audit("quarantine", action="release", entry=entry.id, series=entry.series_id, job=done.requeued_job,
          files=done.restored, removed=done.removed)
    print(
        f"released quarantine entry {entry.id} (series {entry.series_id}): {done.restored} file(s) back in the live tree"
        + (f", {done.removed} older cop{'y' if done.removed == 1 else 'ies'} removed (a later re-send replaced them)" if done.removed else "")
    )
    if done.requeued_job is not None:
        print(f"job {done.requeued_job} is queued again; a running node (serve or worker) processes it")
    else:
        print("the series' latest job did not fail, so nothing was queued (see 'dicomnode jobs')")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    from storage.models import utcnow
    from storage.quarantine import purge, purge_older_than

    cfg, engine = _open(args)
    if (args.id is None) == (args.older_than is None):
        print("quarantine purge: give an entry ID or --older-than DAYS (not both)")
        return EXIT_USAGE
    if args.id is not None:
        purged = [purge(engine, args.id, cfg.node.quarantine_dir)]
    else:
        purged = purge_older_than(engine, utcnow() - timedelta(days=args.older_than), cfg.node.quarantine_dir)
    for e in purged:
        audit("quarantine", action="purge", entry=e.id, series=e.series_id, files=e.file_count, bytes=e.bytes)
    print(
        f"purged {len(purged)} quarantine entr{'y' if len(purged) == 1 else 'ies'} "
        f"({sum(e.file_count for e in purged)} file(s), {sum(e.bytes for e in purged) / 1e6:.1f} MB deleted)"
    )
    return EXIT_OK


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("DAYS must be 0 or more")
    return value


def add_quarantine_commands(sub: Any, common: Callable[..., None]) -> None:
    """Add ``quarantine list|release|purge`` to the CLI's subcommands."""
    p = sub.add_parser(
        "quarantine",
        help="list, release or purge the quarantine (series a job could not process)",
        description=(
            "A series that cannot be processed (missing or duplicate slices, unreadable files...) has its files moved "
            "to a quarantine entry of its own, recorded with the job and the reason. States: " + STATES_HELP + "."
        ),
    )
    qsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    q = qsub.add_parser(
        "list",
        help="list quarantine entries, newest first",
        description="List quarantine entries: number, internal series and job numbers, state, age, files, size and "
        "the reason. States: " + STATES_HELP + ".",
    )
    common(q)
    q.add_argument("--state", choices=[s.value for s in QuarantineState], help="only entries in this state")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=cmd_list)

    q = qsub.add_parser(
        "release",
        help="put a held entry's files back and queue the series again",
        description=(
            "After fixing the cause (a model, a setting), put a held entry's files back into the live tree under the "
            "names their instance records keep, and queue the series' failed job again. Copies that a later re-send "
            "replaced are deleted (the live tree has the newer one). Refused for an entry that is not held, a series "
            "that retention purged (its instance records are gone), or while a job of the series runs."
        ),
    )
    common(q)
    q.add_argument("id", type=int, help="entry number (see 'dicomnode quarantine list')")
    q.set_defaults(func=cmd_release)

    q = qsub.add_parser(
        "purge",
        help="delete the files of a held entry, or of every entry older than DAYS",
        description=(
            "Delete the files of one held entry, or of every held entry created more than DAYS days ago, and mark them "
            "purged (the record stays). Retention does the same after retention.quarantine_days."
        ),
    )
    common(q)
    q.add_argument("id", type=int, nargs="?", help="entry number (see 'dicomnode quarantine list')")
    q.add_argument("--older-than", type=_days, metavar="DAYS", help="every held entry created more than DAYS days ago")
    q.set_defaults(func=cmd_purge)
