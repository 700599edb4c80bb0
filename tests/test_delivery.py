"""Delivery from the outbox to real peers: dcmtk storescp, a PACS that is down, Storage Commitment."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dicomnode.config import Config, DeliveryConfig, Destination, NodeConfig
from dicomnode.dicom.status import REFUSED_OUT_OF_RESOURCES
from dicomnode.jobs.delivery import Sender, backoff
from dicomnode.node import Node
from storage.database import migrate, open_engine
from storage.outbox import list_deliveries, outputs_for
from storage.queue import DeliveryTarget, OutputRecord, claim_job, finish_job, job_state
from storage.instances import record_instance
from storage.series import complete_series, open_series
from tests.helpers import rec, wait_for
from tests.peers import CommitmentPACS, StoreSCP, free_port

FAST = DeliveryConfig(backoff_seconds=0.1, backoff_max_seconds=0.2, max_attempts=3, poll_seconds=0.05, network_timeout=5)


def finished_job(engine: Engine, storage_dir: Path, files: list[Path], destinations: tuple[Destination, ...]) -> int:
    """A job that has written ``files`` as its outputs and queued one delivery per destination."""
    record_instance(engine, rec("9.1"))
    [s] = open_series(engine)
    job_id = complete_series(engine, s.id, seen_count=1, seen_last_received_at=s.last_received_at, reason="quiet_period")
    assert job_id is not None and claim_job(engine, "w", 60) is not None
    records = []
    for i, f in enumerate(files):
        dst = storage_dir / "outputs" / str(job_id) / f"out{i}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
        from pydicom import dcmread

        ds = dcmread(dst, stop_before_pixels=True)
        records.append(OutputRecord("seg", str(dst.relative_to(storage_dir)), ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.file_meta.TransferSyntaxUID))
    targets = [DeliveryTarget(d.name, "", d.storage_commitment) for d in destinations]
    assert finish_job(engine, job_id, "w", timings={}, model="m 1", output_dir=str(job_id), outputs=records, targets=targets)
    return job_id


@pytest.fixture
def setup(tmp_path: Path, make_series: Callable[..., list[Path]]) -> Iterator[Callable[..., tuple[Config, Engine, int]]]:
    engines: list[Engine] = []

    def _setup(*destinations: Destination, delivery: DeliveryConfig = FAST) -> tuple[Config, Engine, int]:
        storage = tmp_path / "storage"
        cfg = Config(
            node=NodeConfig(storage_dir=storage, database_url=f"sqlite:///{storage / 'db.sqlite'}"),
            destinations=destinations, delivery=delivery,
        )
        storage.mkdir(exist_ok=True)
        engine = open_engine(cfg.node.database_url)
        migrate(engine)
        engines.append(engine)
        files = make_series("out", slices=3, rows=16, columns=16)
        return cfg, engine, finished_job(engine, cfg.node.storage_dir, files, destinations)

    yield _setup
    for e in engines:
        e.dispose()


def state(engine: Engine, job_id: int) -> str:
    return job_state(engine, job_id)[0]  # type: ignore[index]


def test_backoff_doubles_up_to_the_maximum() -> None:
    cfg = DeliveryConfig(backoff_seconds=10, backoff_max_seconds=60)
    assert [backoff(cfg, a) for a in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_a_pacs_that_is_down_gets_the_results_once_it_is_back(setup: Callable[..., tuple[Config, Engine, int]], tmp_path: Path) -> None:
    port = free_port()
    dest = Destination("pacs", "PACS", "127.0.0.1", port)
    cfg, engine, job_id = setup(dest, delivery=replace(FAST, max_attempts=20))
    sender = Sender(engine, cfg)
    assert sender.run_once() == 1  # first attempt: nobody listens
    [d] = list_deliveries(engine, job_id)
    assert d.state == "pending" and d.attempts == 1 and "cannot connect" in (d.last_error or "")
    assert state(engine, job_id) == "delivering"
    pacs = StoreSCP(tmp_path / "pacs", port=port).start()
    try:
        sender.start()
        wait_for(lambda: state(engine, job_id) == "done", 30, what="the delivery")
        sender.stop()
        assert len(pacs.files()) == 3  # every output once: no duplicates
        [d] = list_deliveries(engine, job_id)
        assert d.state == "done" and d.attempts >= 2 and d.sent_count == 3 and d.last_error is None
    finally:
        sender.stop()
        pacs.stop()


def test_after_the_last_attempt_the_job_shows_delivery_failed(setup: Callable[..., tuple[Config, Engine, int]]) -> None:
    cfg, engine, job_id = setup(Destination("pacs", "PACS", "127.0.0.1", free_port()), delivery=replace(FAST, max_attempts=2))
    sender = Sender(engine, cfg)
    sender.start()
    try:
        wait_for(lambda: state(engine, job_id) == "delivery_failed", 20, what="delivery_failed")
    finally:
        sender.stop()
    [d] = list_deliveries(engine, job_id)
    assert d.attempts == 2 and d.last_error.startswith("after 2 attempt(s): cannot connect to PACS@127.0.0.1")  # type: ignore[union-attr]


def test_a_destination_removed_from_the_config_fails_readably(setup: Callable[..., tuple[Config, Engine, int]]) -> None:
    cfg, engine, job_id = setup(Destination("old", "OLD", "127.0.0.1", 104))
    Sender(engine, replace(cfg, destinations=())).run_once()
    [d] = list_deliveries(engine, job_id)
    assert d.state == "failed" and d.last_error == "destination 'old' is no longer configured"


def test_storage_commitment_on_the_same_association(setup: Callable[..., tuple[Config, Engine, int]]) -> None:
    pacs = CommitmentPACS(report="same")
    try:
        cfg, engine, job_id = setup(Destination("cpacs", "CPACS", "127.0.0.1", pacs.port, storage_commitment=True))
        Sender(engine, cfg).run_once()
        assert state(engine, job_id) == "done"
        assert pacs.actions == 1 and len(pacs.stored) == 3
    finally:
        pacs.stop()


def test_objects_the_pacs_did_not_commit_are_sent_again(setup: Callable[..., tuple[Config, Engine, int]], make_series: Callable[..., list[Path]]) -> None:
    from pydicom import dcmread

    lost = str(dcmread(make_series("out", slices=3, rows=16, columns=16)[0]).SOPInstanceUID)
    pacs = CommitmentPACS(report="same", fail={lost})
    try:
        cfg, engine, job_id = setup(
            Destination("cpacs", "CPACS", "127.0.0.1", pacs.port, storage_commitment=True), delivery=replace(FAST, max_attempts=2)
        )
        sender = Sender(engine, cfg)
        sender.start()
        wait_for(lambda: state(engine, job_id) == "delivery_failed", 20, what="delivery_failed")
        sender.stop()
        assert pacs.actions == 2
        [d] = list_deliveries(engine, job_id)
        assert "did not commit 1 object(s) (e.g. the SEG (object " in (d.last_error or "") or "no Storage Commitment" in (d.last_error or "")
        assert lost not in (d.last_error or "")
    finally:
        pacs.stop()


def test_no_commitment_report_means_sending_again(setup: Callable[..., tuple[Config, Engine, int]]) -> None:
    pacs = CommitmentPACS(report="never")
    try:
        cfg, engine, job_id = setup(
            Destination("cpacs", "CPACS", "127.0.0.1", pacs.port, storage_commitment=True),
            delivery=replace(FAST, max_attempts=2, commitment_timeout_seconds=1),
        )
        sender = Sender(engine, cfg)
        sender.start()
        wait_for(lambda: state(engine, job_id) == "delivery_failed", 30, what="delivery_failed")
        sender.stop()
        [d] = list_deliveries(engine, job_id)
        assert pacs.actions == 2 and "no Storage Commitment report from cpacs within 1 s" in (d.last_error or "")
    finally:
        pacs.stop()


def test_storage_commitment_report_on_a_new_association_to_the_node(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    pacs = CommitmentPACS(report="new")
    try:
        node = node_factory(extra_toml=(
            "[worker]\nenabled = false\n[delivery]\nbackoff_seconds = 0.1\npoll_seconds = 0.05\n"
            f'[[destinations]]\nname = "cpacs"\nae_title = "CPACS"\nhost = "127.0.0.1"\nport = {pacs.port}\nstorage_commitment = true\n'
        ))
        pacs.reply_to = ("127.0.0.1", node.cfg.node.port, node.cfg.node.ae_title)
        files = make_series("out", slices=2, rows=16, columns=16)
        job_id = finished_job(node.engine, node.cfg.node.storage_dir, files, node.cfg.destinations)
        node.sender.wake()
        wait_for(lambda: state(node.engine, job_id) == "done", 20, what="the commitment report")
        assert pacs.actions == 1 and len(pacs.stored) == 2
    finally:
        pacs.stop()


def test_a_refused_object_is_named_by_kind_and_position_not_by_uid_or_file(setup: Callable[..., tuple[Config, Engine, int]]) -> None:
    pacs = CommitmentPACS(store_status=REFUSED_OUT_OF_RESOURCES)
    try:
        cfg, engine, job_id = setup(Destination("cpacs", "CPACS", "127.0.0.1", pacs.port))
        Sender(engine, cfg).run_once()
    finally:
        pacs.stop()
    [d] = list_deliveries(engine, job_id)
    assert d.state == "pending" and d.last_error == (
        f"cpacs (CPACS@127.0.0.1:{pacs.port}) refused the SEG (object 1 of 3): 0xA700 Refused: out of resources: no room for <uid>"
    )
    assert not any(o.sop_instance_uid in d.last_error for o in outputs_for(engine, job_id))


def test_missing_output_files_are_named_by_kind_and_position(setup: Callable[..., tuple[Config, Engine, int]]) -> None:
    cfg, engine, job_id = setup(Destination("pacs", "PACS", "127.0.0.1", free_port()))
    second = outputs_for(engine, job_id)[1]
    (cfg.node.storage_dir / second.path).unlink()
    Sender(engine, cfg).run_once()
    [d] = list_deliveries(engine, job_id)
    assert d.state == "failed" and d.last_error == "output file(s) missing: the SEG (object 2 of 3)"
