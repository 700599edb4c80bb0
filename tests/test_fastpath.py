"""The receive fast path (dicomnode.net.fastpath) against the installed pynetdicom.

It patches pynetdicom internals on every accepted association, so these tests
pin down the contract: the internals are there with the expected shape, the
hand-encoded C-STORE-RSP is byte-identical to pynetdicom's own, a real
association is accelerated and acknowledges every instance, and a changed
internal turns the fast path off with one WARNING while the node keeps working.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from dicomnode.net import fastpath
from dicomnode.node import Node
from storage.instances import find_instance
from tests.helpers import storescu, wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def fresh_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget this process's cached check and warnings (restored afterwards)."""
    monkeypatch.setattr(fastpath, "_checked", None)
    monkeypatch.setattr(fastpath, "_warned", set())
    yield


# -- the contract ------------------------------------------------------------


def test_installed_pynetdicom_meets_the_contract() -> None:
    assert fastpath.check_internals() == []


def _rename_run_loop_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    init = DULServiceProvider.__init__

    def renamed(self: Any, assoc: Any) -> None:
        init(self, assoc)
        self._loop_delay = self.__dict__.pop("_run_loop_delay")

    monkeypatch.setattr(DULServiceProvider, "__init__", renamed)


def _drop_get_msg_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a slotted or proxying class would: assigning ``get_msg`` raises nothing and does nothing."""

    def setattr_(self: Any, name: str, value: Any) -> None:
        if name != "get_msg":
            object.__setattr__(self, name, value)

    monkeypatch.setattr(DIMSEServiceProvider, "__setattr__", setattr_)


def _get_msg_with_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def get_msg(self: Any, timeout: float | None = None) -> Any:
        return None, None

    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", get_msg)


def _send_msg_keywords(monkeypatch: pytest.MonkeyPatch) -> None:
    def send_msg(self: Any, primitive: Any, *, context_id: int) -> None:
        pass

    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", send_msg)


class _TuplePData:
    presentation_data_value_list: tuple[()] = ()


class _CStoreWithoutErrorComment:
    MessageIDBeingRespondedTo = AffectedSOPClassUID = AffectedSOPInstanceUID = Status = OffendingElement = None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda mp: mp.delattr(AssociationSocket, "recv"), "recv"),
        (lambda mp: mp.setattr(AssociationSocket, "recv", lambda self, n, flags=0: bytearray()), "AssociationSocket.recv"),
        (_rename_run_loop_delay, "_run_loop_delay"),
        (lambda mp: mp.setattr(DULServiceProvider, "_read_pdu_data", lambda self: None), "socket.recv()"),
        (lambda mp: mp.setattr(DULServiceProvider, "run_reactor", lambda self: None), "_run_loop_delay"),
        (lambda mp: mp.delattr(DULServiceProvider, "send_pdu"), "send_pdu"),
        (_get_msg_with_timeout, "get_msg(block=False)"),
        (_send_msg_keywords, "send_msg(primitive, context_id)"),
        (lambda mp: mp.setattr(DIMSEServiceProvider, "dimse_timeout", 30.0), "dimse_timeout"),
        (lambda mp: mp.setattr(Association, "_run_reactor", lambda self: None), "get_msg"),
        (_drop_get_msg_assignment, "DIMSEServiceProvider.get_msg did not take the patch"),
        (lambda mp: mp.setattr(fastpath, "P_DATA", _TuplePData), "presentation_data_value_list"),
        (lambda mp: mp.setattr(fastpath, "C_STORE", _CStoreWithoutErrorComment), "C_STORE"),
        (lambda mp: mp.setattr(fastpath, "_NO_DATASET", 0x0001), "encodes a C-STORE-RSP differently"),
    ],
    ids=[
        "recv-missing", "recv-signature", "run-loop-delay-renamed", "recv-unused", "run-loop-delay-unused", "send-pdu-missing",
        "get-msg-signature", "send-msg-signature", "dimse-timeout-not-property", "get-msg-unused",
        "assignment-dropped", "pdata-list-shape", "cstore-attrs", "encoder-differs",
    ],
)
def test_check_reports_a_changed_internal(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[pytest.MonkeyPatch], None], expected: str
) -> None:
    change(monkeypatch)
    problems = fastpath.check_internals()
    assert problems, "a changed internal must be reported"
    assert any(expected in p for p in problems), problems


# -- the hand-encoded C-STORE-RSP against pynetdicom's encoder ---------------


def pynetdicom_command_set(sop_class: str, sop_instance: str, message_id: int, status: int) -> bytes:
    """The response's command set as pynetdicom encodes it in ``DIMSEServiceProvider.send_msg``."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    pdatas = list(msg.encode_msg(3, 16384))
    assert len(pdatas) == 1
    [(context_id, pdv)] = pdatas[0].presentation_data_value_list
    assert context_id == 3 and pdv[:1] == b"\x03"  # command, last fragment
    return pdv[1:]


@pytest.mark.parametrize("instance_uid", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1234567890123456789012", "1.2.826.0.1.3680043.8.498.12345678901234567890123"])
@pytest.mark.parametrize("sop_class", [CT, "1.2.840.10008.5.1.4.1.1.20"])  # odd and even lengths
@pytest.mark.parametrize("message_id", [1, 2, 255, 256, 4097, 65535])
@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007, 0x0107])
def test_hand_encoded_response_matches_pynetdicom(sop_class: str, instance_uid: str, message_id: int, status: int) -> None:
    ours = fastpath.encode_store_success(sop_class, instance_uid, message_id, status)
    assert ours == pynetdicom_command_set(sop_class, instance_uid, message_id, status)


def test_fast_send_msg_falls_back_for_error_comment_and_other_primitives() -> None:
    calls: list[tuple[Any, int]] = []
    send = fastpath._FastSendMsg(lambda primitive, context_id: calls.append((primitive, context_id)))
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3"
    rsp.Status = 0xC000
    rsp.ErrorComment = "no space"
    send(None, rsp, 1)  # never touches the DIMSE provider: handed to pynetdicom's own send_msg
    request = C_STORE()
    request.MessageID = 1
    send(None, request, 1)
    assert calls == [(rsp, 1), (request, 1)]


def test_a_patch_that_does_not_take_is_undone_with_one_warning(
    fresh_check: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """accelerate() verifies each association after patching, not only the probe's."""
    caplog.set_level(logging.WARNING, logger=fastpath.__name__)
    monkeypatch.setattr(fastpath, "_checked", [])  # the process-wide check passed
    setattr_ = DIMSEServiceProvider.__setattr__

    def drop_send_msg(self: Any, name: str, value: Any) -> None:
        if name != "send_msg":
            setattr_(self, name, value)

    monkeypatch.setattr(DIMSEServiceProvider, "__setattr__", drop_send_msg)
    a, b = socket.socketpair()
    try:
        assocs = []
        for _ in range(2):
            assoc = Association(AE(), "acceptor")
            assoc.dul.socket = AssociationSocket(assoc, client_socket=a)
            delay = assoc.dul._run_loop_delay
            fastpath.accelerate(assoc)
            assocs.append((assoc, delay))
    finally:
        a.close()
        b.close()
    for assoc, delay in assocs:
        assert not fastpath.is_accelerated(assoc)
        assert "get_msg" not in vars(assoc.dimse) and "recv" not in vars(assoc.dul.socket)
        assert assoc.dul._run_loop_delay == delay
    [record] = [r for r in caplog.records if r.name == fastpath.__name__]
    assert "DIMSEServiceProvider.send_msg did not take the patch" in record.getMessage()


# -- through a real association ------------------------------------------------


def acceptor(node: Node) -> Association:
    """The node's one running acceptor association."""
    server = node.scp.server
    assert server is not None
    return wait_for(lambda: (server.active_associations or [None])[0], 10, what="the acceptor association")


def send_series(node: Node, files: list[Path], check: Callable[[Association], None]) -> None:
    """Send ``files`` over one pynetdicom association; ``check`` sees the node's side once accepted."""
    ae = AE(ae_title="FASTPATH")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        check(acceptor(node))
        for f in files:
            status = assoc.send_c_store(f)
            assert status is not None and status.Status == 0x0000, f"{f.name}: {status}"
    finally:
        assoc.release()
        ae.shutdown()


def assert_stored(node: Node, files: list[Path]) -> None:
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        known = find_instance(node.engine, ds.SOPInstanceUID)  # the file its row names (each write has a new name)
        assert known is not None and (node.cfg.node.incoming_dir / known.path).is_file(), f.name


def test_real_association_is_accelerated_and_acknowledges_every_instance(
    fresh_check: None, node_factory: Callable[..., Node], make_series: Callable[..., list[Path]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=fastpath.__name__)
    node = node_factory()
    files = make_series("fast", slices=25)

    def accelerated(a: Association) -> None:
        wait_for(lambda: fastpath.is_accelerated(a), 10, what="the fast path on the association")
        assert a.dul._run_loop_delay == fastpath.DUL_POLL_SECONDS
        assert a.dul.socket is not None
        assert getattr(a.dul.socket.recv, "__func__", None) is fastpath._recv_exact
        assert getattr(a.dimse.get_msg, "__func__", None) is fastpath._get_msg_waiting
        assert isinstance(getattr(a.dimse.send_msg, "__func__", None), fastpath._FastSendMsg)

    send_series(node, files, accelerated)
    assert_stored(node, files)
    more = make_series("fast-dcmtk", slices=12)  # and dcmtk's sender accepts the hand-encoded responses
    r = storescu(node.cfg.node.port, more, extra=["-v"])
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count("Received Store Response (Success)") == len(more), r.stderr
    assert_stored(node, more)
    assert not [r for r in caplog.records if r.name == fastpath.__name__]


def test_changed_internals_run_unaccelerated_with_one_warning(
    fresh_check: None, monkeypatch: pytest.MonkeyPatch, node_factory: Callable[..., Node],
    make_series: Callable[..., list[Path]], caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(fastpath, "check_internals", lambda: ["AssociationSocket.recv is gone (test)"])
    caplog.set_level(logging.WARNING, logger=fastpath.__name__)
    node = node_factory()

    def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == fastpath.__name__]

    def unaccelerated(a: Association) -> None:
        wait_for(warned, 10, what="the fast-path warning")
        assert not fastpath.is_accelerated(a)
        assert a.dimse.get_msg.__func__ is DIMSEServiceProvider.get_msg  # type: ignore[attr-defined]
        assert a.dimse.send_msg.__func__ is DIMSEServiceProvider.send_msg  # type: ignore[attr-defined]

    first, second = make_series("slow-1", slices=6), make_series("slow-2", slices=6)
    send_series(node, first, unaccelerated)
    send_series(node, second, unaccelerated)  # a second association: no second warning
    assert_stored(node, first + second)
    [record] = warned()
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "AssociationSocket.recv is gone (test)" in text and "pynetdicom's own speed" in text
