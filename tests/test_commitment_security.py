"""Storage Commitment reports that cannot be forged: hostile reporters against a live node.

A delivery waits for its report (the PACS stand-in never sends one by
itself); the test then plays the PACS, or a forger, on new associations to
the node's listener, and checks the status each reporter gets back, that the
delivery stays waiting until the genuine report, and what the logs and the
audit trail say.  The forgers know the real transaction UID (the worst case:
it leaked), so that the reporter and content checks are what stops them.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy import update

from dicomnode.dicom.status import (
    CLASS_INSTANCE_CONFLICT,
    INVALID_ARGUMENT_VALUE,
    NO_SUCH_EVENT_TYPE,
    NO_SUCH_SOP_INSTANCE,
    NOT_AUTHORIZED,
    SUCCESS,
)
from dicomnode.dicom.uids import derived_uid
from dicomnode.node import Node
from storage.database import write_transaction
from storage.models import Delivery, table_of, utcnow
from storage.outbox import DeliveryRow, list_deliveries
from storage.queue import job_state
from tests.helpers import wait_for
from tests.peers import CommitmentPACS, commitment_report, send_commitment_report
from tests.test_delivery import finished_job

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Awaiting:
    """A node whose delivery to ``pacs`` awaits its Storage Commitment report."""

    node: Node
    pacs: CommitmentPACS
    job_id: int

    @property
    def listener(self) -> tuple[str, int, str]:
        return ("127.0.0.1", self.node.cfg.node.port, self.node.cfg.node.ae_title)

    @property
    def request(self) -> Dataset:
        """The N-ACTION of the current attempt."""
        return self.pacs.requests[-1]

    def delivery(self) -> DeliveryRow:
        [d] = list_deliveries(self.node.engine, self.job_id)
        return d

    def job(self) -> str:
        return job_state(self.node.engine, self.job_id)[0]  # type: ignore[index]

    def report(self, report: Dataset, event_type: int = 1, *, ae: str = "CPACS", bind: str | None = None) -> int | None:
        return send_commitment_report(self.listener, report, event_type, calling_ae=ae, bind_address=bind)

    def still_waiting(self) -> bool:
        return self.delivery().state == "awaiting_commitment" and self.job() == "delivering"


def _node(node_factory: Callable[..., Node], pacs: CommitmentPACS) -> Node:
    return node_factory(extra_toml=(
        "[worker]\nenabled = false\n"
        "[delivery]\nbackoff_seconds = 0.1\npoll_seconds = 0.05\ncommitment_timeout_seconds = 600\nreport_wait_seconds = 0.5\n"
        f'[[destinations]]\nname = "cpacs"\nae_title = "CPACS"\nhost = "127.0.0.1"\nport = {pacs.port}\nstorage_commitment = true\n'
    ))


@pytest.fixture
def awaiting(node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]) -> Iterator[Awaiting]:
    pacs = CommitmentPACS(report="never")
    try:
        node = _node(node_factory, pacs)
        files = make_series("out", slices=3, rows=16, columns=16)
        job_id = finished_job(node.engine, node.cfg.node.storage_dir, files, node.cfg.destinations)
        node.sender.wake()
        a = Awaiting(node, pacs, job_id)
        wait_for(lambda: pacs.actions == 1 and a.delivery().state == "awaiting_commitment", 20, what="the delivery to await its report")
        yield a
    finally:
        pacs.stop()


def _uids(a: Awaiting) -> set[str]:
    """Every UID the delivery involved: the transaction and each object sent."""
    return {str(a.request.TransactionUID)} | {str(i.ReferencedSOPInstanceUID) for i in a.request.ReferencedSOPSequence}


def _audit(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomnode.audit"]


def test_a_report_forged_by_another_ae_is_refused_and_only_the_genuine_one_settles_the_delivery(
    awaiting: Awaiting, caplog: pytest.LogCaptureFixture
) -> None:
    a = awaiting
    caplog.set_level(logging.INFO, logger="dicomnode")
    genuine = commitment_report(a.request)  # what the PACS would send: every object, the real transaction UID
    assert a.report(genuine, ae="EVIL") == NOT_AUTHORIZED
    assert a.still_waiting()
    assert a.report(genuine, ae="CPACS") == SUCCESS
    wait_for(lambda: a.job() == "done", 10, what="the job to be done")
    assert a.delivery().state == "done"

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("dicomnode")]
    assert any(f"job {a.job_id} refused" in w and "sent by EVIL@127.0.0.1, not cpacs (CPACS@127.0.0.1)" in w for w in warnings)
    entries = [e for e in _audit(caplog) if e["event"] == "commitment"]
    assert [(e["reporter_ae"], e["reporter_address"], e["destination"], e["job"], e["outcome"]) for e in entries] == [
        ("EVIL", "127.0.0.1", "cpacs", a.job_id, "refused"),
        ("CPACS", "127.0.0.1", "cpacs", a.job_id, "accepted"),
    ]
    assert "not cpacs" in str(entries[0]["reason"]) and entries[0]["status"] == "0x0124"
    # Neither the log nor the audit trail names the transaction or an object by UID.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dicomnode"))
    assert not any(uid in text for uid in _uids(a))


def test_a_report_from_the_right_ae_title_but_another_address_is_refused(awaiting: Awaiting) -> None:
    a = awaiting
    # The destination's host is 127.0.0.1; the forger calls from 127.0.0.2 with the PACS's AE title.
    assert a.report(commitment_report(a.request), ae="CPACS", bind="127.0.0.2") == NOT_AUTHORIZED
    assert a.still_waiting()
    assert "the address is not the destination host's" in (a.delivery().last_error or "")
    assert a.report(commitment_report(a.request)) == SUCCESS
    wait_for(lambda: a.job() == "done", 10, what="the job to be done")


def _item(uid: str, sop_class: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
    return item


def _another_class(sop_class: str) -> str:
    return MR_STORAGE if sop_class != MR_STORAGE else SEG_STORAGE


def _without_transaction(report: Dataset) -> Dataset:
    del report.TransactionUID
    return report


def _refs(request: Dataset) -> list[Dataset]:
    return [copy.deepcopy(i) for i in request.ReferencedSOPSequence]


def _failed(items: list[Dataset]) -> list[Dataset]:
    for i in items:
        i.FailureReason = 0x0110
    return items


# name -> (report built from the N-ACTION, event type, expected status)
MALFORMED: dict[str, tuple[Callable[[Dataset], Dataset], int, int]] = {
    "empty": (lambda rq: commitment_report(rq, committed=[]), 1, INVALID_ARGUMENT_VALUE),
    "one-missing": (lambda rq: commitment_report(rq, committed=_refs(rq)[1:]), 1, INVALID_ARGUMENT_VALUE),
    "one-extra": (
        lambda rq: commitment_report(rq, committed=_refs(rq) + [_item(str(derived_uid("not", "sent")), SEG_STORAGE)]), 1,
        INVALID_ARGUMENT_VALUE,
    ),
    "one-twice": (lambda rq: commitment_report(rq, committed=_refs(rq) + _refs(rq)[:1]), 1, INVALID_ARGUMENT_VALUE),
    "missing-one-reported-failed-as-well": (
        lambda rq: commitment_report(rq, committed=_refs(rq)[1:], failed=_failed(_refs(rq)[1:2])), 2, INVALID_ARGUMENT_VALUE,
    ),
    "wrong-sop-class": (
        lambda rq: commitment_report(rq, committed=[_item(str(i.ReferencedSOPInstanceUID), _another_class(i.ReferencedSOPClassUID))
                                                    for i in rq.ReferencedSOPSequence]), 1,
        CLASS_INSTANCE_CONFLICT,
    ),
    "type-1-with-failures": (
        lambda rq: commitment_report(rq, committed=_refs(rq)[1:], failed=_failed(_refs(rq)[:1])), 1, INVALID_ARGUMENT_VALUE,
    ),
    "type-2-without-failures": (lambda rq: commitment_report(rq), 2, INVALID_ARGUMENT_VALUE),
    "type-3": (lambda rq: commitment_report(rq), 3, NO_SUCH_EVENT_TYPE),
    "no-transaction-uid": (lambda rq: _without_transaction(commitment_report(rq)), 1, NO_SUCH_SOP_INSTANCE),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_report_that_does_not_list_exactly_what_was_sent_is_refused(
    awaiting: Awaiting, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = awaiting
    caplog.set_level(logging.INFO, logger="dicomnode")
    build, event_type, status = MALFORMED[case]
    assert a.report(build(a.request), event_type) == status
    assert a.still_waiting()
    [entry] = [e for e in _audit(caplog) if e["event"] == "commitment"]
    assert entry["outcome"] == "refused" and entry["reporter_ae"] == "CPACS" and entry["reason"]
    assert not any(uid in json.dumps(entry) for uid in _uids(a))
    if case == "one-missing":
        assert entry["reason"] == "it omits the SEG (object 1 of 3)"
    assert a.report(commitment_report(a.request)) == SUCCESS  # the genuine report still settles it
    wait_for(lambda: a.job() == "done", 10, what="the job to be done")


def test_a_forger_learns_nothing_about_transactions_and_the_pacs_is_told_which_are_unknown(awaiting: Awaiting) -> None:
    a = awaiting
    unknown = commitment_report(a.request)
    unknown.TransactionUID = "2.25.1234567890"
    # Another AE gets the same refusal whether or not the transaction exists ...
    assert a.report(unknown, ae="EVIL") == NOT_AUTHORIZED
    assert a.report(commitment_report(a.request), ae="EVIL") == NOT_AUTHORIZED
    # ... while the destination is told that nobody awaits that transaction.
    assert a.report(unknown) == NO_SUCH_SOP_INSTANCE
    assert a.still_waiting()


def test_transaction_uids_are_random_per_attempt_and_an_earlier_attempts_report_is_refused(awaiting: Awaiting) -> None:
    a = awaiting
    first = a.request
    # The commitment deadline passes (instead of waiting 600 s): the node sends again, with a new transaction.
    with write_transaction(a.node.engine) as conn:
        t = table_of(Delivery)
        conn.execute(update(t).where(t.c.job_id == a.job_id).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    a.node.sender.wake()
    wait_for(lambda: a.pacs.actions == 2 and a.delivery().state == "awaiting_commitment", 20, what="the second attempt")
    second = a.request
    uids = [str(first.TransactionUID), str(second.TransactionUID)]
    assert uids[0] != uids[1]
    d = a.delivery()
    derivable = {str(derived_uid("commitment", d.id, n)) for n in range(10)}
    for uid in uids:
        assert uid.startswith("2.25.") and uid not in derivable and int(uid[5:]) > 2**64  # 122 random bits
    assert a.report(commitment_report(first)) == NO_SUCH_SOP_INSTANCE  # the PACS's late report on attempt 1
    assert a.still_waiting()
    assert a.report(commitment_report(second)) == SUCCESS
    wait_for(lambda: a.job() == "done", 10, what="the job to be done")


def test_a_malformed_report_on_the_delivery_association_is_refused_too(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    # The PACS answers on the same association, but its report lists nothing.
    pacs = CommitmentPACS(report="same", tamper=lambda rep, et: (commitment_report(rep, committed=[]), et))
    try:
        node = _node(node_factory, pacs)
        job_id = finished_job(node.engine, node.cfg.node.storage_dir, make_series("out", slices=2, rows=16, columns=16), node.cfg.destinations)
        node.sender.wake()
        wait_for(lambda: pacs.answers, 20, what="the node's answer to the report")
        assert pacs.answers == [INVALID_ARGUMENT_VALUE]
        wait_for(lambda: list_deliveries(node.engine, job_id)[0].state == "awaiting_commitment", 10, what="the delivery to await")
        assert "it lists none of the 2 object(s) sent" in (list_deliveries(node.engine, job_id)[0].last_error or "")
    finally:
        pacs.stop()
