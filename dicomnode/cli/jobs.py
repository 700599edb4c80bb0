"""``dicomnode jobs|retry|worker``: the job queue from the command line."""

from __future__ import annotations

import logging

import argparse
import json
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from dicomnode.cli.common import EXIT_FAILED, EXIT_OK, _config, configure_logging
from storage.states import JobState

JOB_STATES = list(JobState)

logger = logging.getLogger(__name__)


def _engine(args: argparse.Namespace) -> Any:
    from storage.database import migrate, open_engine

    cfg = _config(args)
    engine = open_engine(cfg.node.database_url, sqlite_synchronous=cfg.node.sqlite_synchronous)
    migrate(engine)
    return engine


def cmd_jobs(args: argparse.Namespace) -> int:
    from storage.outbox import list_deliveries
    from storage.listings import list_jobs

    configure_logging(args.log_level or "WARNING")
    engine = _engine(args)
    jobs = list_jobs(engine, state=args.state, limit=args.limit, job_id=args.job)
    deliveries: dict[int, list[Any]] = {}
    for d in list_deliveries(engine, job_id=args.job, limit=max(100, args.limit * 4)):
        deliveries.setdefault(d.job_id, []).append(d)
    if args.json:
        print(json.dumps([{**j.as_json(), "deliveries": [d.as_json() for d in deliveries.get(j.id, [])]} for j in jobs], indent=2))
        return EXIT_OK
    if not jobs:
        print("no such job" if args.job else "no jobs")
        return EXIT_OK if not args.job else EXIT_FAILED
    print(f"{'JOB':>5} {'SERIES':>6} {'VER':>3} {'STATE':<15} {'MOD':<4} {'IMAGES':>6} {'COMPLETED BY':<21} {'CREATED (UTC)':<19} DELIVERIES / ERROR")
    for j in jobs:
        sent = " ".join(f"{d.destination}:{d.state}" + (f"({d.attempts})" if d.attempts > 1 else "") for d in deliveries.get(j.id, []))
        print(
            f"{j.id:>5} {j.series_id:>6} {j.version:>3} {j.state:<15} {(j.modality or '-'):<4} {j.instance_count:>6} "
            f"{j.completion_reason:<21} {j.created_at:%Y-%m-%d %H:%M:%S} {' '.join(x for x in (sent, j.error or '') if x)}"
        )
        if args.job:
            print(f"  model: {j.model or '-'}; worker: {j.worker or '-'}; attempts: {j.attempts}; stage: {j.stage or '-'}")
            print(f"  from: {j.calling_ae or '-'}" + (f" (fetched from source {j.fetched_from})" if j.fetched_from else ""))
            if j.selection:
                print(f"  series {j.selection}: {j.selection_reason or '-'}")
            for k, v in (j.timings or {}).items():
                print(f"  {k:<22} {v:8.2f} s")
            for d in deliveries.get(j.id, []):
                print(f"  -> {d.destination}: {d.state}, {d.attempts} attempt(s), {d.sent_count} sent" + (f"; {d.last_error}" if d.last_error else ""))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from storage.retry import RetryOutcome, retry_job

    configure_logging(args.log_level or "WARNING")
    done = retry_job(_engine(args), args.job, args.rerun)
    message = {
        RetryOutcome.NO_JOB: f"retry: there is no job {args.job}",
        RetryOutcome.RUNNING: f"retry: job {args.job} is running; wait for it to finish",
        RetryOutcome.REQUEUED: f"job {args.job} queued again; a running node will process it and deliver the results",
        RetryOutcome.RESENT: f"job {args.job}: {done.deliveries} deliver{'y' if done.deliveries == 1 else 'ies'} "
        "will be sent again by the running node",
        RetryOutcome.NO_DELIVERIES: f"retry: job {args.job} has no deliveries (no destinations were configured when it ran); use --rerun",
    }[done.outcome]
    print(message)
    return EXIT_OK if done.outcome in (RetryOutcome.REQUEUED, RetryOutcome.RESENT) else EXIT_FAILED


def cmd_worker(args: argparse.Namespace) -> int:
    from dicomnode.jobs.delivery import Sender
    from dicomnode.jobs.gpu import GPUAdmission
    from dicomnode.jobs.worker import JobRunner, worker_name
    from storage.database import migrate, open_engine

    cfg = _config(args)
    configure_logging(args.log_level or cfg.log_level, cfg.log_format, cfg.node.audit_path, cfg.node.storage_dir)
    engine = open_engine(cfg.node.database_url, sqlite_synchronous=cfg.node.sqlite_synchronous)
    migrate(engine)
    sender = Sender(engine, cfg)
    threads = args.threads or cfg.worker.threads
    gpu = GPUAdmission(cfg.worker.gpu_concurrency, cfg.worker.gpu_memory_mb)
    runners = [
        JobRunner(engine, cfg, name=worker_name(str(i) if threads > 1 else ""), on_finished=sender.wake, gpu=gpu)
        for i in range(threads)
    ]
    done = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for r in runners:
        r.start()
    if not args.no_deliver:
        sender.start()
    logger.info("worker %s: %d runner(s) polling the queue%s", worker_name(""), len(runners), "" if args.no_deliver else ", delivering")
    while not done.wait(1.0):
        pass
    for r in runners:
        r.stop()
    sender.stop()
    return EXIT_OK


def add_job_commands(sub: Any, common: Callable[..., None]) -> None:
    """Add ``jobs``, ``retry`` and ``worker`` to the CLI's subcommands."""
    p = sub.add_parser(
        "jobs",
        help="list jobs (one per completed series version) and their deliveries",
        description=(
            "List the most recent jobs with their series, state, how the series was completed, where the "
            "results went and any error. With a JOB number, also its model, stage timings and delivery attempts."
        ),
    )
    common(p)
    p.add_argument("job", nargs="?", type=int, help="show this job in detail")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "retry",
        help="send a job's results again, or run a failed job again",
        description=(
            "For a job whose results were made, send them again to every destination (the output UIDs are the "
            "same, so the PACS sees a re-send, not new objects). For a failed or ignored job, queue it again. "
            "A running node (serve or worker) does the work."
        ),
    )
    common(p)
    p.add_argument("job", type=int, help="job number (see 'dicomnode jobs')")
    p.add_argument("--rerun", action="store_true", help="run the whole job again, not only its delivery")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser(
        "worker",
        help="run job workers and the sender without a DICOM listener (for extra worker hosts)",
        description=(
            "Claim jobs from the shared database, run the models, write the outputs and deliver them. Start "
            "this on other hosts that share the node's PostgreSQL database and storage folder."
        ),
    )
    common(p)
    p.add_argument("--threads", type=int, help="jobs at once (default: worker.threads)")
    p.add_argument("--no-deliver", action="store_true", help="only run jobs; another process delivers")
    p.set_defaults(func=cmd_worker)
