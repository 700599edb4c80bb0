"""Prometheus metrics of one node process, in its own registry (no global state).

Counters and histograms are updated where things happen (the listener, the
workers, the sender); job and delivery counts by state, the queue depth and
GPU memory are read when Prometheus scrapes, so they are right even when
other worker hosts share the database.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from storage.database import as_utc, read_transaction
from storage.models import Delivery, Job, table_of, utcnow
from storage.states import TIMED_STAGES, JobState

BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _DatabaseCollector(Collector):
    """Jobs and deliveries by state, queue depth and age, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("dicomnode_jobs", "Jobs by state", labels=["state"])
        deliveries = GaugeMetricFamily("dicomnode_deliveries", "Deliveries by state", labels=["state"])
        depth = GaugeMetricFamily("dicomnode_queue_depth", "Jobs waiting for a worker")
        age = GaugeMetricFamily("dicomnode_queue_oldest_seconds", "Age of the oldest job waiting for a worker")
        j, d = table_of(Job), table_of(Delivery)
        with read_transaction(self.engine) as conn:
            by_state: dict[str, int] = dict(conn.execute(select(j.c.state, func.count()).group_by(j.c.state)).all())
            d_state: dict[str, int] = dict(conn.execute(select(d.c.state, func.count()).group_by(d.c.state)).all())
            oldest: datetime | None = conn.execute(
                select(func.min(j.c.created_at)).where(j.c.state == JobState.QUEUED)
            ).scalar_one_or_none()
        for state in JobState:
            jobs.add_metric([state], by_state.get(state, 0))
        for name, n in d_state.items():
            deliveries.add_metric([name], n)
        depth.add_metric([], by_state.get(JobState.QUEUED, 0))
        age.add_metric([], (utcnow() - as_utc(oldest)).total_seconds() if oldest else 0.0)
        yield from (jobs, deliveries, depth, age)


class _GPUCollector(Collector):
    """CUDA memory, only once a worker in this process has loaded torch (the receiver never does)."""

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        used = GaugeMetricFamily("dicomnode_gpu_memory_bytes", "CUDA memory allocated by this process", labels=["device"])
        peak = GaugeMetricFamily("dicomnode_gpu_memory_peak_bytes", "Peak CUDA memory allocated by this process", labels=["device"])
        for i in range(torch.cuda.device_count()):
            used.add_metric([str(i)], torch.cuda.memory_allocated(i))
            peak.add_metric([str(i)], torch.cuda.max_memory_allocated(i))
        yield from (used, peak)


class Metrics:
    """The metrics of one process.

    Parameters
    ----------
    engine : sqlalchemy.Engine, optional
        When given, job and delivery counts come from this database at scrape time.
    known_aes : iterable of str, optional
        The AE titles the configuration names.  Calling AE labels take only
        these values (any other as ``other``): a peer chooses its AE title,
        and must not be able to create time series at will.
    """

    def __init__(self, engine: Engine | None = None, known_aes: Iterable[str] = ()) -> None:
        self.known_aes = frozenset(a.strip() for a in known_aes)
        self.registry = CollectorRegistry()
        self.instances = Counter(
            "dicomnode_instances_received", "Instances stored and acknowledged", ["calling_ae"], registry=self.registry
        )
        self.refused = Counter(
            "dicomnode_instances_refused", "Instances refused with a failure status", ["calling_ae"], registry=self.registry
        )
        self.stage_seconds = Histogram(
            "dicomnode_stage_seconds",
            "Seconds per stage: receive (first to last instance), complete (last instance to job), queue, "
            "reconstruct, infer, write, deliver (job finished to PACS confirmed)",
            ["stage", "model", "calling_ae"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.peer_violations = Counter(
            "dicomnode_peer_violations", "Connections cut for breaking a bound (pdu_too_long, stalled, command_too_long, "
            "tls_handshake, too_many_connections, instance_too_large)", ["kind"], registry=self.registry,
        )
        self.uid_conflicts = Counter(
            "dicomnode_uid_conflicts", "Instances refused because a SOP or Series Instance UID is stored for another "
            "patient or study (kind: sop, series)", ["kind"], registry=self.registry,
        )
        self.jobs_finished = Counter(
            "dicomnode_jobs_finished", "Jobs that reached an end state in this process", ["state", "model"], registry=self.registry
        )
        self.delivery_attempts = Counter(
            "dicomnode_delivery_attempts", "Delivery attempts by outcome", ["destination", "outcome"], registry=self.registry
        )
        self.registry.register(_GPUCollector())
        if engine is not None:
            self.registry.register(_DatabaseCollector(engine))

    def ae(self, calling_ae: str | None) -> str:
        """The label for a calling AE title: itself when configured, else ``other`` (``-`` when unknown)."""
        if not calling_ae:
            return "-"
        title = calling_ae.strip()
        return title if title in self.known_aes else "other"

    def observe_stages(self, timings: dict[str, float], model: str | None, calling_ae: str | None) -> None:
        """Record the stage timings of one job."""
        for stage in TIMED_STAGES:
            if stage in timings:
                self.stage_seconds.labels(stage, model or "-", self.ae(calling_ae)).observe(timings[stage])

    def refused_total(self) -> int:
        """Instances refused since this process started, over every calling AE (for ``/healthz``)."""
        return int(sum(s.value for m in self.refused.collect() for s in m.samples if s.name.endswith("_total")))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return bytes(generate_latest(self.registry))
