"""The job queue and the delivery outbox, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine, update

from storage.models import Job, utcnow
from storage.states import JobState
from storage.outbox import (
    awaiting_commitment,
    begin_commitment,
    claim_due,
    outputs_for,
    record_committed,
    record_failure,
    record_sent,
    reset_deliveries,
)
from storage.queue import (
    DeliveryTarget,
    OutputRecord,
    claim_job,
    end_job,
    finish_job,
    heartbeat,
    job_state,
    requeue_job,
)
from storage.instances import record_instance
from storage.listings import list_jobs
from storage.series import complete_series, open_series
from tests.helpers import rec


def queue_jobs(engine: Engine, n: int) -> list[int]:
    ids = []
    for i in range(n):
        record_instance(engine, rec(f"9.{i}", series=f"1.2.{i}"))
    for s in open_series(engine):
        job = complete_series(engine, s.id, seen_count=s.instance_count, seen_last_received_at=s.last_received_at, reason="quiet_period")
        assert job is not None
        ids.append(job)
    return ids


def test_each_job_is_claimed_by_exactly_one_worker(engine: Engine) -> None:
    ids = queue_jobs(engine, 6)
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := claim_job(engine, name, lease_seconds=60)) is not None:
            with lock:
                claimed.append((name, job.id))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for _, j in claimed) == sorted(ids)  # none twice, none lost
    assert {j.state for j in list_jobs(engine)} == {"running"}


def test_urgent_jobs_go_first(engine: Engine) -> None:
    ids = queue_jobs(engine, 3)
    with engine.begin() as conn:
        conn.execute(update(Job.__table__).where(Job.__table__.c.id == ids[2]).values(priority=10))
    assert [claim_job(engine, "w", 60).id for _ in ids] == [ids[2], ids[0], ids[1]]  # type: ignore[union-attr]


def test_expired_lease_is_reclaimed_and_the_old_worker_cannot_finish(engine: Engine) -> None:
    [job_id] = queue_jobs(engine, 1)
    first = claim_job(engine, "dead", lease_seconds=60)
    assert first is not None and not first.reclaimed
    assert claim_job(engine, "other", lease_seconds=60) is None  # lease still valid
    with engine.begin() as conn:  # the dead worker's last heartbeat was long ago
        conn.execute(update(Job.__table__).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    second = claim_job(engine, "alive", lease_seconds=60)
    assert second is not None and second.id == job_id and second.reclaimed and second.attempts == 2
    assert not heartbeat(engine, job_id, "dead")
    assert not finish_job(engine, job_id, "dead", timings={}, model=None, output_dir=None, outputs=[], targets=[])
    assert heartbeat(engine, job_id, "alive", stage="infer")
    assert finish_job(engine, job_id, "alive", timings={"infer": 1.0}, model="m 1", output_dir="1", outputs=[], targets=[])
    assert job_state(engine, job_id) == ("done", None)


def test_a_job_that_keeps_killing_its_worker_fails(engine: Engine) -> None:
    [job_id] = queue_jobs(engine, 1)
    for i in range(2):
        assert claim_job(engine, f"w{i}", lease_seconds=60, max_attempts=2) is not None
        with engine.begin() as conn:
            conn.execute(update(Job.__table__).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    assert claim_job(engine, "w3", lease_seconds=60, max_attempts=2) is None
    state, error = job_state(engine, job_id)  # type: ignore[misc]
    assert state == "failed" and "stopped 2 times" in error
    assert requeue_job(engine, job_id)
    assert claim_job(engine, "w4", lease_seconds=60) is not None


def out(kind: str, variant: str = "") -> OutputRecord:
    return OutputRecord(kind, f"1/{variant}{kind}.dcm", "1.2.3", f"2.{kind}.{variant or 0}", "2.9", "1.2.840.10008.1.2.1", variant)


def test_finishing_writes_the_outbox_and_deliveries_settle_the_job(engine: Engine) -> None:
    [job_id] = queue_jobs(engine, 1)
    claim_job(engine, "w", 60)
    targets = [DeliveryTarget("pacs"), DeliveryTarget("viewer", variant="all-frames", storage_commitment=True)]
    outputs = [out("seg"), out("sr"), out("preview"), out("seg", "all-frames")]
    assert finish_job(engine, job_id, "w", timings={}, model="m 1", output_dir="1", outputs=outputs, targets=targets)
    assert job_state(engine, job_id) == ("delivering", None)
    assert [o.kind for o in outputs_for(engine, job_id)] == ["seg", "sr", "preview"]
    variant = outputs_for(engine, job_id, "all-frames")
    assert sorted((o.kind, o.variant) for o in variant) == [("preview", ""), ("seg", "all-frames"), ("sr", "")]

    due = {d.destination: d for d in claim_due(engine, lease_seconds=60)}
    assert set(due) == {"pacs", "viewer"} and due["pacs"].attempts == 1
    assert claim_due(engine, lease_seconds=60) == []  # leased: nobody else sends them meanwhile
    record_failure(engine, due["pacs"].id, "connection refused", utcnow() - timedelta(seconds=1))
    begin_commitment(engine, due["viewer"].id, "2.25.77")
    record_sent(engine, due["viewer"].id, 3, commitment_uid="2.25.77", commitment_deadline=utcnow() + timedelta(seconds=60))
    again = claim_due(engine, lease_seconds=60)
    assert [(d.destination, d.attempts) for d in again] == [("pacs", 2)]
    record_sent(engine, again[0].id, 3)
    assert job_state(engine, job_id) == ("delivering", None)  # the viewer has not confirmed yet
    assert awaiting_commitment(engine, "2.25.unknown") is None
    waiting = awaiting_commitment(engine, "2.25.77")
    assert waiting is not None and waiting.id == due["viewer"].id
    assert record_committed(engine, waiting.id, "2.25.77")
    assert not record_committed(engine, waiting.id, "2.25.77")  # a repeated report changes nothing
    assert job_state(engine, job_id) == ("done", None)

    assert reset_deliveries(engine, job_id) == 2  # dicomnode retry
    assert job_state(engine, job_id) == ("delivering", None)
    for d in claim_due(engine, lease_seconds=60):
        record_failure(engine, d.id, "0xA700 Refused: out of resources", None)
    assert job_state(engine, job_id) == ("delivery_failed", None)


def test_ended_jobs_keep_their_reason(engine: Engine) -> None:
    a, b = queue_jobs(engine, 2)
    claim_job(engine, "w", 60)
    claim_job(engine, "w", 60)
    assert end_job(engine, a, "w", JobState.FAILED, "the series cannot be reconstructed: 2 slices missing", {})
    assert end_job(engine, b, "w", JobState.IGNORED, "no model applies", {})
    assert job_state(engine, a) == ("failed", "the series cannot be reconstructed: 2 slices missing")
    assert job_state(engine, b) == ("ignored", "no model applies")
