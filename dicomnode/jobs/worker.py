"""The job runner: takes each queued job through reconstruction, inference, outputs and the outbox.

A :class:`JobRunner` claims jobs from the database (see :mod:`storage.queue`),
so several runners, threads or hosts can share one queue.  While a job runs,
a heartbeat renews its lease and records the stage; if the worker dies, the
lease expires and another worker reclaims the job.  Each stage's time is
recorded on the job.

A series that cannot become a volume (missing or duplicate slices, mixed
orientations, unreadable files) fails with the reason in words and its
files are moved to a quarantine entry of their own (:mod:`storage.quarantine`).  A series no model
applies to is marked ``ignored``.  Models stay loaded between jobs.

torch is imported only when the first job runs, so the receiver does not
pay for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine

from dicomnode.audit import audit
from dicomnode.background import BackgroundLoop
from dicomnode.config import Config, Destination
from dicomnode.errors import DicomNodeError, VolumeError
from dicomnode.jobs.gpu import GPUAdmission
from dicomnode.jobs.models import ModelRegistry
from dicomnode.metrics import Metrics
from dicomnode.redaction import describe_exception
from dicomnode.routing import Plan, PlanAction, Router
from storage.errors import StorageError
from storage.quarantine import locate_files, quarantine_files, supersede
from storage.queue import (
    ClaimedJob,
    DeliveryTarget,
    OutputRecord,
    claim_job,
    defer_job,
    end_job,
    finish_job,
    heartbeat,
    job_state,
    job_timeline,
    series_files,
)
from storage.models import utcnow
from storage.states import CompletionReason, JobState, OutputKind, Stage

if TYPE_CHECKING:
    from ai.bundle import Bundle
    from ai.engine import Result
    from dicomnode.outputs.writer import OutputFile
    from dicomnode.volume.reconstruct import Volume

logger = logging.getLogger(__name__)

_R = TypeVar("_R")
ALL_FRAMES = "all-frames"  # output variant for destinations that keep empty SEG frames
MODEL_TEXT = 128  # jobs.model holds at most this many characters (PostgreSQL enforces it): several models' names are cut


def worker_name(suffix: str = "") -> str:
    """``host:pid[:suffix]``: who holds a job, for leases and for people reading ``dicomnode jobs``."""
    return f"{socket.gethostname()}:{os.getpid()}" + (f":{suffix}" if suffix else "")


class _Heartbeat(BackgroundLoop):
    """Renews a job's lease in the background and records its stage."""

    def __init__(self, engine: Engine, job_id: int, worker: str, interval: float) -> None:
        super().__init__(f"heartbeat-{job_id}", interval, first_wait=True)
        self.engine, self.job_id, self.worker = engine, job_id, worker
        self.lost = False
        self.current: Stage | None = None  # the stage the job is in

    def __enter__(self) -> _Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stage(self, name: Stage) -> None:
        """Record that the job entered stage ``name`` (and renew the lease now)."""
        self.current = name
        self.step()

    def step(self) -> bool:
        """Renew the lease; a lease another worker took is remembered in :attr:`lost`."""
        try:
            if not heartbeat(self.engine, self.job_id, self.worker, self.current):
                self.lost = True
        except StorageError as exc:  # a busy database: the next beat will do
            logger.warning("job %d: heartbeat failed: %s", self.job_id, exc)
        return False


@dataclass
class _Stages:
    """Seconds per stage, in order."""

    timings: dict[str, float]
    hb: _Heartbeat
    model: str | None = None  # "name version" of the model that ran

    def run(self, name: Stage, fn: Callable[[], _R]) -> _R:
        self.hb.stage(name)
        t = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[name] = round(time.perf_counter() - t, 3)


class LeaseLost(DicomNodeError):
    """Another worker took the job over (this one was too slow to renew its lease)."""


class JobRunner(BackgroundLoop):
    """Runs jobs from the queue in a background thread.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The node's database.
    cfg : Config
        Worker, outputs, routing and destination settings.
    name : str
        This worker's name in the job rows (default ``host:pid``).
    on_finished : callable, optional
        Called after each job that queued deliveries (to wake the sender).
    metrics : Metrics, optional
        Stage timings and job outcomes are recorded here.
    gpu : GPUAdmission, optional
        Shared by the runners of a process: GPU runs at once and their declared memory.
    models : ModelRegistry, optional
        Shared by the runners of a process: each model is loaded once.
    """

    def __init__(
        self, engine: Engine, cfg: Config, name: str | None = None, on_finished: Callable[[], None] | None = None,
        metrics: Metrics | None = None, gpu: GPUAdmission | None = None, models: ModelRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.metrics = metrics
        self.gpu = gpu or GPUAdmission(cfg.worker.gpu_concurrency, cfg.worker.gpu_memory_mb)
        self.models = models or ModelRegistry(cfg.worker.device, cfg.worker.models, models_dir=cfg.models_dir)
        self.router = Router(cfg.rules, cfg.routing, [d.name for d in cfg.destinations])
        self.name = name or worker_name()
        self.on_finished = on_finished
        super().__init__(f"dicomnode-worker-{self.name}", cfg.worker.poll_seconds)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the current job (whose lease another worker takes over if this one is killed)."""
        super().stop(timeout)

    def step(self) -> bool:
        """Run one job; ``False`` when the queue is empty."""
        return self.run_once()

    def run_once(self) -> bool:
        """Claim and run one job; ``False`` when the queue is empty."""
        w = self.cfg.worker
        job = claim_job(self.engine, self.name, w.lease_seconds, max_attempts=w.max_job_attempts)
        if job is None:
            return False
        if job.reclaimed:
            logger.warning("job %d: reclaimed after its previous worker stopped (attempt %d)", job.id, job.attempts)
        self.process(job)
        return True

    # --------------------------------------------------------------- routing
    def plan(self, job: ClaimedJob) -> Plan[Bundle]:
        """Which models run and where results go (see :class:`dicomnode.routing.Router`)."""
        return self.router.plan(job.facts, self.models.bundle, self.models.candidates)

    def _destinations(self, plan: Plan[Bundle]) -> list[Destination]:
        return [d for d in self.cfg.destinations if d.name in plan.destinations]

    # ------------------------------------------------------------------ jobs
    def _source_paths(self, job: ClaimedJob) -> dict[str, tuple[Path, str]]:
        """SOP instance UID -> (file, SOP class); a file may be in the quarantine after an earlier failure."""
        node = self.cfg.node
        files = series_files(self.engine, job.series_id)
        where = locate_files(self.engine, job.series_id, [rel for _, rel, _ in files], node.incoming_dir, node.quarantine_dir)
        return {sop_uid: (where[rel], sop_class) for sop_uid, rel, sop_class in files}

    def process(self, job: ClaimedJob) -> None:
        """Run one claimed job to its end state."""
        timings: dict[str, float] = job_timeline(self.engine, job.id)
        with _Heartbeat(self.engine, job.id, self.name, max(1.0, self.cfg.worker.lease_seconds / 4)) as hb:
            stages = _Stages(timings, hb)
            sources = self._source_paths(job)
            paths = {uid: p for uid, (p, _) in sources.items()}
            try:
                self._process(job, sources, stages)
            except VolumeError as exc:  # the series, not the node, is at fault: quarantine it
                self._fail_bad_series(job, paths, f"the series cannot be reconstructed: {exc}", timings)
            except LeaseLost:
                logger.warning("job %d: lease lost to another worker; abandoning this run", job.id)
            except _Deferred as why:
                logger.debug("job %d waits for its study: %s", job.id, why)
                return
            except Exception as exc:  # a bug or a broken model: fail readably, keep the files
                stage = hb.current or "start"
                logger.exception("job %d failed in stage %s", job.id, stage)
                # The exception's text may come from a library and quote a UID or a file path: one masked line.
                error = f"internal error in stage {stage}: {describe_exception(exc, [self.cfg.node.storage_dir])}"
                end_job(self.engine, job.id, self.name, JobState.FAILED, error, timings)
        state = job_state(self.engine, job.id)
        audit("job", job=job.id, series=job.series_id, version=job.version, calling_ae=job.facts.calling_ae, worker=self.name,
              state=state[0] if state else None, model=stages.model, reason=state[1] if state else None)
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(state[0] if state else "?", stages.model or "-").inc()
            self.metrics.observe_stages(timings, stages.model, job.facts.calling_ae)

    def _selected(self, job: ClaimedJob, stages: _Stages, model: Bundle) -> bool:
        """Wait for the study, then whether this series is the one its acquisition is processed from.

        Raises :class:`_Deferred` when the study is still arriving; ends the
        job ``ignored`` with the reason when another series is chosen.
        """
        from dicomnode.selection import choose, study_wait
        from storage.study import record_selection, study_associations, study_series

        study = study_series(self.engine, job.study_uid)
        me = next((s for s in study if s.id == job.series_id), None)
        if me is None:
            return True
        cfg = self.cfg.selection
        if model.preferred_kernels and not cfg.kernels_configured:  # the model's own preference, unless configured
            cfg = dataclasses.replace(cfg, kernels=model.preferred_kernels)
        wait, why = study_wait(me, study, utcnow(), cfg, len(study_associations(self.engine, job.study_uid)))
        if wait > 0:
            defer_job(self.engine, job.id, self.name, wait, f"waiting for the study: {why}")
            raise _Deferred(why)
        choice = choose(me, study, cfg)
        record_selection(self.engine, me.id, "chosen" if choice.chosen else "skipped", choice.reason)
        if not choice.chosen:
            logger.info("job %d skipped: %s", job.id, choice.reason)
            end_job(self.engine, job.id, self.name, JobState.IGNORED, f"not selected: {choice.reason}", stages.timings)
        return choice.chosen

    def _fail_bad_series(self, job: ClaimedJob, paths: dict[str, Path], reason: str, timings: dict[str, float]) -> None:
        node = self.cfg.node
        live = [p for p in paths.values() if p.exists() and node.incoming_dir in p.parents]
        try:  # each failure in an entry of its own (files already held stay in their entry)
            if live:
                entry = quarantine_files(
                    self.engine, live, series_id=job.series_id, job_id=job.id, reason=reason,
                    incoming_dir=node.incoming_dir, quarantine_dir=node.quarantine_dir,
                )
                reason += f" ({entry.file_count} file(s) moved to the quarantine, entry {entry.id})"
        except StorageError as exc:
            reason += f" (quarantine failed: {exc})"
        logger.warning("job %d failed: %s", job.id, reason)
        end_job(self.engine, job.id, self.name, JobState.FAILED, reason, timings)

    def _process(self, job: ClaimedJob, sources: dict[str, tuple[Path, str]], stages: _Stages) -> None:
        from dicomnode.volume.reconstruct import VolumePolicy, reconstruct

        paths = {uid: p for uid, (p, _) in sources.items()}
        plan = self.plan(job)
        destinations = self._destinations(plan)
        if plan.action == PlanAction.IGNORE:
            logger.info("job %d ignored: %s", job.id, plan.reason)
            end_job(self.engine, job.id, self.name, JobState.IGNORED, plan.reason, stages.timings)
            return
        if not paths:
            raise VolumeError("the series has no stored instances")
        incomplete = job.completion_reason == CompletionReason.INCOMPLETE_TIMEOUT
        if plan.action == PlanAction.RUN and incomplete and not self.cfg.series.process_incomplete:
            # Results from part of a series would be wrong (a missed nodule, a cut lung) and a re-send would add
            # a second result series: wait for the rest instead; its arrival re-opens the series.
            why = (
                f"not processed: the series is incomplete ({job.completion_detail or 'instances are missing'}); "
                "send the missing instances (the series completes again and is processed) or set series.process_incomplete = true"
            )
            logger.warning("job %d not processed: its series is incomplete", job.id)
            end_job(self.engine, job.id, self.name, JobState.INCOMPLETE, why, stages.timings)
            return
        if plan.action == PlanAction.RUN and self.cfg.selection.enabled and not self._selected(job, stages, plan.models[0]):
            return
        if plan.action == PlanAction.FORWARD:  # no model: send the instances on, unchanged
            forwarded = [
                OutputRecord(OutputKind.SOURCE, str(p.relative_to(self.cfg.node.storage_dir)), sop_class, uid, job.series_uid, "")
                for uid, (p, sop_class) in sources.items()
            ]
            self._finish(job, stages, None, None, forwarded, [DeliveryTarget(d.name, "", d.storage_commitment) for d in destinations])
            return
        policy = VolumePolicy(gap_factor=self.cfg.series.gap_factor)
        vol: Volume = stages.run(Stage.RECONSTRUCT, lambda: reconstruct(list(paths.values()), policy))
        primary = plan.models[0]
        segmenters = " + ".join(f"{b.name} {b.version}" for b in plan.models if b.task == "segmentation")
        stages.model = (segmenters or f"{primary.name} {primary.version}")[:MODEL_TEXT]
        result, others = stages.run(Stage.INFER, lambda: self._infer(primary, plan.models[1:], vol))
        if stages.hb.lost:
            raise LeaseLost(f"job {job.id}")
        stages.timings.update({f"model_{k}": round(v, 3) for k, v in result.timings.items()})
        if result.anatomy is not None and not result.anatomy.applicable:
            # The model ran, but the anatomy it needs is not there (e.g. a head CT labelled CHEST):
            # nothing goes to the PACS, and the series is not at fault, so nothing is quarantined.
            logger.info("job %d not applicable: %s", job.id, result.anatomy.reason)
            end_job(self.engine, job.id, self.name, JobState.NOT_APPLICABLE, result.anatomy.reason, stages.timings)
            return
        from dicomnode.outputs.writer import OutputOptions, write_outputs

        root = self.cfg.node.storage_dir
        out_dir = self.cfg.node.outputs_dir / str(job.id)
        o = self.cfg.outputs
        base = OutputOptions(
            seg=o.seg, sr=o.sr, preview=o.preview, kos=o.kos, fractional=o.fractional, max_key_images=o.max_key_images,
            seg_series_number=o.seg_series_number, sr_series_number=o.sr_series_number,
            preview_series_number=o.preview_series_number, kos_series_number=o.kos_series_number,
            number_by_source=o.number_by_source,
            series_description_prefix=o.series_description_prefix, multi_model_seg=o.multi_model_seg,
        )
        notes = source_notes(job, len(vol.sop_uids))
        in_order = [paths[uid] for uid in vol.sop_uids]
        key = f"{job.series_uid}/{job.version}"
        records: list[OutputRecord] = []
        all_frames = o.seg and any(d.keep_empty_frames for d in destinations)

        def write() -> None:
            for f in write_outputs(in_order, vol, result, primary, out_dir, job_key=key, options=base, notes=notes, others=others):
                records.append(_record(f, root, ""))
            if all_frames:
                opts = OutputOptions(**{**vars(base), "sr": False, "preview": False, "kos": False, "keep_empty_frames": True})
                for f in write_outputs(in_order, vol, result, primary, out_dir / ALL_FRAMES, job_key=key, options=opts, others=others):
                    records.append(_record(f, root, ALL_FRAMES))

        stages.run(Stage.WRITE, write)
        targets = [
            DeliveryTarget(d.name, ALL_FRAMES if d.keep_empty_frames and all_frames else "", d.storage_commitment)
            for d in destinations
        ]
        self._finish(job, stages, stages.model, str(out_dir.relative_to(root)), records, targets)

    def _finish(
        self, job: ClaimedJob, stages: _Stages, model: str | None, out_dir: str | None,
        records: list[OutputRecord], targets: list[DeliveryTarget],
    ) -> None:
        if not finish_job(
            self.engine, job.id, self.name, timings=stages.timings, model=model, output_dir=out_dir, outputs=records, targets=targets,
        ):
            raise LeaseLost(f"job {job.id}")
        try:  # the series is good now: earlier quarantines of it are superseded
            node = self.cfg.node
            supersede(self.engine, job.series_id, job.version, node.incoming_dir, node.quarantine_dir)
        except StorageError as exc:  # they stay held, for a person or retention
            logger.warning("job %d: earlier quarantine entries of series %d stay held: %s", job.id, job.series_id, exc)
        logger.info(
            "job %d done: %d output(s) for %d destination(s); %s", job.id, len(records), len(targets),
            ", ".join(f"{k} {v:.2f} s" for k, v in stages.timings.items() if not k.startswith("model_")) or "forwarded",
        )
        if targets and self.on_finished is not None:
            self.on_finished()

    def _run_model(self, bundle: Bundle, vol: Volume) -> Result:
        model = self.models.engine(bundle)
        if model.device.type != "cuda":
            return model.run(vol.array, vol.spacing, vol.direction)
        with self.gpu.admit(bundle.gpu_memory_mb, f"{bundle.name}"):
            return model.run(vol.array, vol.spacing, vol.direction)

    def _infer(self, primary: Bundle, others: tuple[Bundle, ...], vol: Volume) -> tuple[Result, list[tuple[Bundle, Result]]]:
        """The first model's result (with the classifiers' classes and the lobes of its findings) and the other segmentations."""
        from ai.engine import ClassScores
        from ai.placement import lobe_labels, place_in_lobes

        res = self._run_model(primary, vol)
        segmentations: list[tuple[Bundle, Result]] = []
        for b in others:
            if b.task == "classification":  # reported under its own name, not the segmentation model's
                probs = self._run_model(b, vol).class_probabilities
                res.classifications.append(ClassScores(b.name, b.version, probs, b.labels))
                continue
            r = self._run_model(b, vol)
            res.timings.update({f"{b.name}_{k}": v for k, v in r.timings.items()})
            if r.anatomy is not None and not r.anatomy.applicable:  # its anatomy is not there: the others still report
                logger.info("model %s not applicable to this series: %s", b.name, r.anatomy.reason)
                continue
            segmentations.append((b, r))
        for b, r in segmentations:
            lobes = lobe_labels(b)
            if lobes and r.labels is not None and res.findings:  # the first lobe model places the findings
                res.findings = place_in_lobes(res.findings, r.labels, lobes, vol.spacing, f"{b.name} {b.version}")
                break
        return res, segmentations


class _Deferred(Exception):
    """The job went back to the queue to wait for the rest of its study."""


def source_notes(job: ClaimedJob, slices: int) -> list[str]:
    """What the outputs must say about the source series: that it was incomplete, and where (else nothing)."""
    if job.completion_reason != CompletionReason.INCOMPLETE_TIMEOUT:
        return []
    detail = job.completion_detail or "instances were missing"
    return [
        f"The source series was incomplete when it was processed ({job.instance_count} instance(s) received, "
        f"{slices} slice(s) reconstructed; {detail}). Findings near a gap may be missed or cut."
    ]


def _record(f: OutputFile, root: Path, variant: str) -> OutputRecord:
    return OutputRecord(
        kind=OutputKind(f.kind), path=str(f.path.relative_to(root)), sop_class_uid=f.sop_class_uid,
        sop_instance_uid=f.sop_instance_uid, series_uid=f.series_instance_uid,
        transfer_syntax_uid=f.transfer_syntax_uid, variant=variant,
    )
