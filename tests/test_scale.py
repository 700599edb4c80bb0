"""The node under load, scaled out on PostgreSQL, and after a worker is killed mid-job.

Load and scale-out use a forwarding rule (no model), so that they test the
queue, not the CPU; the crash test runs the real chest model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import text

from ai.phantoms import generate
from dicomnode.testing.synthetic import write_phantom
from storage.database import migrate, open_engine
from storage.listings import list_jobs
from storage.outbox import list_deliveries
from tests.helpers import NodeProcess, storescu, wait_for, write_config
from tests.peers import StoreSCP

FORWARD = '[[rules]]\nname = "forward all"\nmodels = []\n'


def destination(port: int) -> str:
    return f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {port}\n'


def sop_uids(files: list[Path]) -> list[str]:
    return [str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID) for f in files]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    p = StoreSCP(tmp_path / "pacs").start()
    yield p
    p.stop()


def test_eight_concurrent_senders_two_series_each(tmp_path: Path, make_series: Callable[..., list[Path]], pacs: StoreSCP) -> None:
    cfg = write_config(
        tmp_path, series="quiet_seconds = 2",
        extra="[worker]\nenabled = true\nthreads = 2\npoll_seconds = 0.2\n[delivery]\npoll_seconds = 0.2\n" + destination(pacs.port) + FORWARD,
    )
    node = NodeProcess(cfg, tmp_path / "node.log").start()
    try:
        batches = [make_series(f"load{i}a", slices=10) + make_series(f"load{i}b", slices=10) for i in range(8)]
        results: list[int] = []

        def send(files: list[Path], i: int) -> None:
            results.append(storescu(node.port, files, calling=f"MODALITY{i}").returncode)

        threads = [threading.Thread(target=send, args=(b, i)) for i, b in enumerate(batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [0] * 8
        engine = open_engine(f"sqlite:///{tmp_path / 'storage' / 'dicomnode.db'}")
        wait_for(lambda: len(pacs.files()) >= 160 and {j.state for j in list_jobs(engine, limit=100)} == {"done"}, 120,
                 what="every job delivered")
        jobs = list_jobs(engine, limit=100)
        assert len(jobs) == 16 and sorted(j.instance_count for j in jobs) == [10] * 16  # one job per series
        sent = sorted(sop_uids(pacs.files()))
        assert sent == sorted(u for b in batches for u in sop_uids(b))  # every instance, once
        engine.dispose()
        # The audit trail: who sent what, what ran, where it went; no patient data.
        trail = (tmp_path / "storage" / "audit.log").read_text()
        events = [json.loads(line) for line in trail.splitlines()]
        senders = {e["calling_ae"] for e in events if e["event"] == "association" and e["stored"] == 20}
        assert senders == {f"MODALITY{i}" for i in range(8)}
        assert sum(e["event"] == "job" and e["state"] == "delivering" for e in events) == 16
        assert sum(e["event"] == "delivery" and e["outcome"] == "sent" for e in events) == 16
        assert "Phantom" not in trail and "PHANTOM" not in trail
    finally:
        node.stop()


def test_two_worker_processes_share_a_postgresql_queue(
    tmp_path: Path, make_series: Callable[..., list[Path]], pacs: StoreSCP, postgres_url: str
) -> None:
    engine = open_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    # Every host has the same configuration (destinations and rules); the receiver runs no jobs, but its
    # sender delivers too: a host that did not know the destination would fail the deliveries it claims.
    receiver = write_config(tmp_path, series="quiet_seconds = 1", extra="[worker]\nenabled = false\n[delivery]\npoll_seconds = 0.1\n"
                            + destination(pacs.port) + FORWARD)
    sqlite = f'database_url = "sqlite:///{tmp_path / "storage" / "dicomnode.db"}"'
    receiver.write_text(receiver.read_text().replace(sqlite, f'database_url = "{postgres_url}"'))
    worker_cfg = tmp_path / "workers.toml"
    worker_cfg.write_text(receiver.read_text().replace("[worker]\nenabled = false", "[worker]\nenabled = true\npoll_seconds = 0.05"))
    # Both workers poll before the first job exists: on a loaded machine one of them could otherwise start
    # seconds later and find the queue drained.  The schema is made first, not by three processes at once.
    migrate(engine)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen([sys.executable, "-m", "dicomnode", "worker", "--config", str(worker_cfg)], stderr=open(log, "wb"))
        for log in logs
    ]
    try:
        wait_for(lambda: all("polling the queue" in log.read_text(errors="replace") for log in logs), 120, what="both workers up")
        # The receiver stays up to the end: stopped mid-delivery, a delivery it had claimed would wait for its
        # lease to expire before another host sends it (late, not lost; not what this test is about).
        node = NodeProcess(receiver, tmp_path / "node.log").start()
        files = [f for i in range(20) for f in make_series(f"scale{i}", slices=2)]
        try:
            assert storescu(node.port, files).returncode == 0
            wait_for(lambda: len(list_jobs(engine, limit=100)) == 20, 60, what="20 jobs")
            wait_for(lambda: {j.state for j in list_jobs(engine, limit=100)} == {"done"}, 120, what="20 jobs done")
        finally:
            node.stop()
        jobs = list_jobs(engine, limit=100)
        assert len(jobs) == 20 and all(j.attempts == 1 for j in jobs)  # none ran twice
        assert len({j.worker for j in jobs}) == 2  # both hosts took work
        received = sop_uids(pacs.files())
        assert set(received) == set(sop_uids(files))  # none lost
        # None sent twice by two hosts claiming one delivery.  Delivery is at least once: an attempt whose
        # response was lost (the PACS stalled under load) is retried, and only such a retry may repeat objects.
        retried = [d for d in list_deliveries(engine, limit=100) if d.attempts > 1]
        assert len(received) - len(set(received)) <= sum(d.sent_count for d in retried)
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
        engine.dispose()


def test_a_worker_killed_mid_job_is_replaced_and_the_job_delivered_once(tmp_path: Path, pacs: StoreSCP) -> None:
    files = write_phantom(generate(4242, matrix=160, slice_mm=(4.0, 5.0)), tmp_path / "ct")
    db = f'sqlite:///{tmp_path / "storage" / "dicomnode.db"}'
    receiver = write_config(tmp_path, series="quiet_seconds = 30")
    node = NodeProcess(receiver, tmp_path / "node.log").start()
    engine = open_engine(db)
    try:
        assert storescu(node.port, files).returncode == 0
        wait_for(lambda: len(list_jobs(engine)) == 1, 30, what="the job")
    finally:
        node.stop()
    cfg = tmp_path / "worker.toml"
    cfg.write_text(
        receiver.read_text().replace("[worker]\nenabled = false", '[worker]\nenabled = true\nlease_seconds = 5\npoll_seconds = 0.2\ndevice = "cpu"')
        + "[delivery]\npoll_seconds = 0.1\n" + destination(pacs.port)
    )

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "dicomnode", "worker", "--config", str(cfg)],
                                stderr=open(tmp_path / "worker.log", "ab"))

    first = start()
    try:
        wait_for(lambda: (list_jobs(engine)[0].stage or "") in ("reconstruct", "infer", "write"), 120, what="the job to be running")
        first.kill()  # kill -9, mid-job
        first.wait(10)
        [job] = list_jobs(engine)
        assert job.state == "running" and job.attempts == 1
        second = start()
        try:
            wait_for(lambda: list_jobs(engine)[0].state == "done", 180, what="the reclaimed job to be delivered")
        finally:
            second.terminate()
            second.wait(30)
        [job] = list_jobs(engine)
        assert job.attempts == 2 and job.worker is not None
        delivered = [dcmread(f, stop_before_pixels=True) for f in pacs.files()]
        uids = [str(d.SOPInstanceUID) for d in delivered]
        assert len(uids) == len(set(uids)) and {d.Modality for d in delivered} >= {"SEG", "SR"}  # once each
    finally:
        if first.poll() is None:
            first.kill()
        engine.dispose()
