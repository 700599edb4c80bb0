"""Per-association speed-ups for pynetdicom's receive path.

pynetdicom is written for clarity, not for a node that acknowledges hundreds
of instances a second.  Profiling a bare pynetdicom SCP receiving 300 CT slices
from dcmtk's storescu showed most of its time in three places, all fixed
here for one association at a time (the objects are patched, never the
library's classes, so other pynetdicom users in the process are unaffected):

* its reactor polls the DIMSE queue with a 1 ms sleep per loop: we wait on
  the queue instead, so a complete request is served at once;
* its DUL thread sleeps 1 ms whenever the socket is idle: we poll faster;
* it reads PDUs 4 KiB per ``recv()`` into a growing ``bytearray``, and
  encodes every C-STORE response with pydicom: we read with
  :func:`dicomnode.net.guard.bounded_recv` (few large reads, bounded) and
  hand-encode the (fixed-shape) response when it has no ErrorComment or
  OffendingElement.  Those responses bypass ``EVT_DIMSE_SENT`` (and so
  pynetdicom's debug log of sent DIMSE messages).

Re-measured with pynetdicom 3.0.4 on the 2-core machine (300 CT slices sent
by storescu, TCP_NODELAY on both sides, a bare pynetdicom SCP that only
acknowledges, medians of 5 alternating runs): 230 to 350 images/s with
512x512 slices, 340 to 700 images/s with 64x64 ones, where the per-message
cost dominates.  Runs vary by about 20%.

These are pynetdicom internals (``setup.cfg`` pins the tested minor release).
:func:`check_internals` verifies, once per process, that each one is still
there with the shape the patches assume; if not, :func:`accelerate` leaves
associations alone and logs one WARNING naming what changed, so the node
keeps working at pynetdicom's own speed instead of failing inside its
reactor thread.  :func:`is_accelerated` tells whether an association runs on
the fast path.
"""

from __future__ import annotations

import inspect
import io
import logging
import queue
import socket
import struct
import threading
import types
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from dicomnode.dicom.uids import pad_uid
from dicomnode.net.guard import bounded_recv

logger = logging.getLogger(__name__)

DUL_POLL_SECONDS = 0.0002
REACTOR_WAIT_SECONDS = 0.01
_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # PDV header: command, last fragment
_PDV_OVERHEAD = 6  # PDV item length (4) + context ID (1) + message control header (1)
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# The C-STORE primitive's response parameters that the hand-encoded response reads or excludes.
_C_STORE_RSP_ATTRS = (
    "MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
    "Status", "ErrorComment", "OffendingElement",
)


# The socket read is :func:`dicomnode.net.guard.bounded_recv`: one buffer per PDU
# (fast), grown only as bytes arrive and bounded by the negotiated maximum (safe).
_recv_exact = bounded_recv


def _get_msg_waiting(self: Any, block: bool = False) -> Any:
    """``DIMSEServiceProvider.get_msg`` that waits briefly instead of returning at once."""
    try:
        if block:
            return self.msg_queue.get(block=True, timeout=self.dimse_timeout)
        return self.msg_queue.get(block=True, timeout=REACTOR_WAIT_SECONDS)
    except queue.Empty:
        return None, None


def _element(tag_elem: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, tag_elem, len(value)) + value


def encode_store_success(sop_class: str, sop_instance: str, message_id: int, status: int = 0) -> bytes:
    """The command set of a C-STORE-RSP without ErrorComment (implicit VR little endian, PS3.7 9.3.1.2)."""
    body = (
        _element(0x0002, pad_uid(sop_class))
        + _element(0x0100, struct.pack("<H", _C_STORE_RSP))
        + _element(0x0120, struct.pack("<H", message_id))
        + _element(0x0800, struct.pack("<H", _NO_DATASET))
        + _element(0x0900, struct.pack("<H", status))
        + _element(0x1000, pad_uid(sop_instance))
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body


class _FastSendMsg:
    """``DIMSEServiceProvider.send_msg``: hand-encodes plain C-STORE responses, else calls ``original``."""

    def __init__(self, original: Callable[[Any, int], None]) -> None:
        self.original = original

    def __call__(self, dimse: Any, primitive: Any, context_id: int) -> None:
        if (
            isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and primitive.Status is not None
            and primitive.AffectedSOPClassUID
            and primitive.AffectedSOPInstanceUID
        ):
            cmd = encode_store_success(
                primitive.AffectedSOPClassUID,
                primitive.AffectedSOPInstanceUID,
                primitive.MessageIDBeingRespondedTo,
                int(primitive.Status),
            )
            max_pdu = dimse.maximum_pdu_size
            if not max_pdu or len(cmd) + _PDV_OVERHEAD <= max_pdu:  # one fragment (0: no limit)
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + cmd))
                dimse.dul.send_pdu(pdata)
                return
        self.original(primitive, context_id)


# -- the contract with pynetdicom's internals ----------------------------------

def _takes(func: Callable[..., Any], *names: str, **defaults: object) -> bool:
    """Whether ``func`` takes exactly ``names`` (``self`` included), positionally, with these defaults."""
    params = list(inspect.signature(func).parameters.values())
    return [p.name for p in params] == list(names) and all(
        p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default == defaults.get(p.name, inspect.Parameter.empty)
        for p in params
    )


def _uses(cls: type, method: str, name: str) -> bool:
    """Whether ``cls.method`` refers to ``name`` (an attribute it reads or a method it calls)."""
    code = getattr(getattr(cls, method, None), "__code__", None)
    return code is not None and name in code.co_names


def _pynetdicom_store_rsp(sop_class: str, sop_instance: str, message_id: int, status: int) -> bytes:
    """The same response's command set as pynetdicom itself encodes it (``DIMSEServiceProvider.send_msg``'s way)."""
    from pynetdicom.dimse_messages import C_STORE_RSP

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    [pdata] = list(msg.encode_msg(1, 0))
    [(_, pdv)] = pdata.presentation_data_value_list
    if pdv[:1] != _LAST_COMMAND_FRAGMENT:
        raise ValueError(f"message control header {pdv[:1]!r}")
    return pdv[1:]


def check_internals() -> list[str]:
    """What the fast path needs from pynetdicom and does not find; empty when all is in place.

    Checks the classes (by :func:`inspect.signature` and by which attributes
    their methods use), then builds a real, unconnected acceptor association
    on a socket pair, patches it, checks that every patch took, and drives
    each patched method once.  Never raises: an unexpected error is a problem.
    """
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    try:
        from pynetdicom import AE
        from pynetdicom.dimse import DIMSEServiceProvider
        from pynetdicom.dimse_messages import DIMSEMessage
        from pynetdicom.dul import DULServiceProvider
        from pynetdicom.transport import AssociationSocket
    except ImportError as exc:
        return [f"cannot import a patched class: {exc}"]
    try:
        # Classes: the methods replaced must take what the replacements take,
        # and pynetdicom must still call them (or read the attribute).
        need(_takes(AssociationSocket.recv, "self", "nr_bytes"),
             "AssociationSocket.recv(nr_bytes) changed signature")
        need(_uses(DULServiceProvider, "_read_pdu_data", "recv"),
             "DULServiceProvider._read_pdu_data no longer reads PDUs with socket.recv()")
        need(_uses(DULServiceProvider, "run_reactor", "_run_loop_delay"),
             "DULServiceProvider.run_reactor no longer sleeps _run_loop_delay")
        need(_takes(DULServiceProvider.send_pdu, "self", "primitive"),
             "DULServiceProvider.send_pdu(primitive) changed signature")
        need(_takes(DIMSEServiceProvider.get_msg, "self", "block", block=False),
             "DIMSEServiceProvider.get_msg(block=False) changed signature")
        need(_uses(Association, "_run_reactor", "get_msg"), "Association._run_reactor no longer polls DIMSEServiceProvider.get_msg()")
        # The guard's patches (dicomnode.net.guard): DIMSE reassembly and its buffers, the acceptor's wait.
        need(_takes(DULServiceProvider.receive_pdu, "self", "wait", "timeout", wait=False, timeout=None),
             "DULServiceProvider.receive_pdu(wait=False, timeout=None) changed signature")
        need(_uses(DULServiceProvider, "receive_pdu", "to_user_queue"), "DULServiceProvider.receive_pdu no longer reads to_user_queue")
        need(_takes(DIMSEServiceProvider.receive_primitive, "self", "primitive"),
             "DIMSEServiceProvider.receive_primitive(primitive) changed signature")
        need(_uses(DIMSEMessage, "decode_msg", "data_set") and _uses(DIMSEMessage, "decode_msg", "encoded_command_set"),
             "DIMSEMessage.decode_msg no longer fills data_set and encoded_command_set")
        need(isinstance(DIMSEMessage().data_set, io.BytesIO), "DIMSEMessage.data_set is not a BytesIO")
        need(_takes(DIMSEServiceProvider.send_msg, "self", "primitive", "context_id"),
             "DIMSEServiceProvider.send_msg(primitive, context_id) changed signature")
        for name in ("dimse_timeout", "maximum_pdu_size", "dul"):
            need(isinstance(getattr(DIMSEServiceProvider, name, None), property), f"DIMSEServiceProvider.{name} is not a property")
        rsp = C_STORE()
        need(all(hasattr(rsp, a) for a in _C_STORE_RSP_ATTRS), "C_STORE lacks a response parameter")
        need(isinstance(P_DATA().presentation_data_value_list, list), "P_DATA.presentation_data_value_list is not a list")
        for uid_len, msg_id, status in ((27, 1, 0x0000), (28, 65535, 0xB000)):
            cls_uid, inst_uid = _CT_IMAGE_STORAGE, "1.2.3.4." + "5" * (uid_len - 8)
            need(encode_store_success(cls_uid, inst_uid, msg_id, status) == _pynetdicom_store_rsp(cls_uid, inst_uid, msg_id, status),
                 "pynetdicom encodes a C-STORE-RSP differently from encode_store_success()")
        if problems:
            return problems
        problems += _probe(AE, AssociationSocket, DULServiceProvider, DIMSEServiceProvider)
    except Exception as exc:  # a changed internal can fail in any way
        problems.append(f"checking pynetdicom's internals failed: {exc!r}")
    return problems


def _probe(ae_cls: Any, sock_cls: type, dul_cls: type, dimse_cls: type) -> list[str]:
    """Patch a real, unconnected association on a socket pair and drive each patched method once."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    assoc = Association(ae_cls(), "acceptor")
    need(isinstance(assoc.dul, dul_cls), "Association.dul is not a DULServiceProvider")
    need(isinstance(vars(assoc.dul).get("_run_loop_delay"), float), "DULServiceProvider._run_loop_delay is not a float attribute")
    dimse = assoc.dimse
    need(isinstance(dimse, dimse_cls), "Association.dimse is not a DIMSEServiceProvider")
    need(isinstance(vars(dimse).get("msg_queue"), queue.Queue), "DIMSEServiceProvider.msg_queue is not a queue.Queue")
    need(dimse.dimse_timeout is None or isinstance(dimse.dimse_timeout, (int, float)), "DIMSEServiceProvider.dimse_timeout is not a number")
    need(dimse.dul is assoc.dul, "DIMSEServiceProvider.dul is not the association's DUL")
    a, b = socket.socketpair()
    try:
        sock = sock_cls(assoc, client_socket=a)
        assoc.dul.socket = sock
        need(getattr(sock, "socket", None) is a, "AssociationSocket.socket is not the wrapped socket")
        if problems:
            return problems
        problems += _apply(assoc)
        if problems:
            return problems
        b.sendall(b"0123456789")
        need(sock.recv(10) == b"0123456789", "the patched AssociationSocket.recv read wrong data")
        queued = C_STORE()
        dimse.msg_queue.put((1, queued))
        need(dimse.get_msg() == (1, queued) and dimse.get_msg() == (None, None), "the patched get_msg misbehaves")
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = _CT_IMAGE_STORAGE
        rsp.AffectedSOPInstanceUID = "1.2.3"
        rsp.Status = 0
        dimse.send_msg(rsp, 1)
        sent = assoc.dul.to_provider_queue.get_nowait()
        need(isinstance(sent, P_DATA) and sent.presentation_data_value_list
             == [(1, _LAST_COMMAND_FRAGMENT + encode_store_success(_CT_IMAGE_STORAGE, "1.2.3", 7, 0))],
             "the patched send_msg did not queue the hand-encoded response on the DUL")
    finally:
        a.close()
        b.close()
    return problems


def _apply(assoc: Association) -> list[str]:
    """Patch one association's objects; what did not take (an empty list: all did)."""
    dul, dimse = assoc.dul, assoc.dimse
    sock = dul.socket
    dul._run_loop_delay = DUL_POLL_SECONDS
    setattr(sock, "recv", types.MethodType(_recv_exact, sock))
    setattr(dimse, "get_msg", types.MethodType(_get_msg_waiting, dimse))
    setattr(dimse, "send_msg", types.MethodType(_FastSendMsg(dimse.send_msg), dimse))
    return _missing_patches(assoc)


def _missing_patches(assoc: Association) -> list[str]:
    """The patches not in place on ``assoc`` (an assignment can be silently dropped or redirected)."""
    dul, dimse = assoc.dul, assoc.dimse
    missing = []
    if getattr(dul, "_run_loop_delay", None) != DUL_POLL_SECONDS:
        missing.append("DULServiceProvider._run_loop_delay")
    if getattr(getattr(dul.socket, "recv", None), "__func__", None) is not _recv_exact:
        missing.append("AssociationSocket.recv")
    if getattr(dimse.get_msg, "__func__", None) is not _get_msg_waiting:
        missing.append("DIMSEServiceProvider.get_msg")
    if not isinstance(getattr(dimse.send_msg, "__func__", None), _FastSendMsg):
        missing.append("DIMSEServiceProvider.send_msg")
    return [f"{name} did not take the patch" for name in missing]


def is_accelerated(assoc: Association) -> bool:
    """Whether ``assoc`` runs on the fast path (every patch in place)."""
    try:
        return not _missing_patches(assoc)
    except AttributeError:
        return False


def _undo(assoc: Association, run_loop_delay: float | None) -> None:
    """Put back pynetdicom's own methods (and loop delay) on a partly patched association."""
    for obj, name in ((assoc.dul.socket, "recv"), (assoc.dimse, "get_msg"), (assoc.dimse, "send_msg")):
        try:
            if name in vars(obj):
                delattr(obj, name)
        except (AttributeError, TypeError):
            pass
    try:
        if run_loop_delay is not None:
            assoc.dul._run_loop_delay = run_loop_delay
        else:  # it had none: remove the one we added
            vars(assoc.dul).pop("_run_loop_delay", None)
    except (AttributeError, TypeError):
        pass


_lock = threading.Lock()
_checked: list[str] | None = None  # check_internals() once per process
_warned: set[str] = set()


def _warn_once(problems: list[str]) -> None:
    text = "; ".join(problems)
    with _lock:
        if text in _warned:
            return
        _warned.add(text)
    logger.warning(
        "receive fast path off with pynetdicom %s (%s): the node runs at pynetdicom's own speed",
        pynetdicom.__version__, text,
    )


def internals_problems() -> list[str]:
    """:func:`check_internals`, run once per process."""
    global _checked
    with _lock:
        if _checked is None:
            _checked = check_internals()
        return _checked


def accelerate(assoc: Association) -> None:
    """Apply the speed-ups to one accepted association.

    Only when :func:`check_internals` found pynetdicom's internals as expected
    (checked once per process); otherwise one WARNING says what is missing and
    the association runs unpatched.  A patch that does not take is undone.
    """
    problems = internals_problems()
    if problems:
        _warn_once(problems)
        return
    sock = assoc.dul.socket
    if sock is None or getattr(sock, "socket", None) is None:  # the peer is already gone: nothing to speed up
        return
    from pynetdicom.transport import AssociationSocket

    if not isinstance(sock, AssociationSocket) or not hasattr(sock.socket, "recv_into"):
        _warn_once([f"the association's socket is a {type(sock).__name__} around a {type(sock.socket).__name__}"])
        return
    old_delay = getattr(assoc.dul, "_run_loop_delay", None)
    try:
        missing = _apply(assoc)
    except Exception as exc:  # slotted or read-only attributes
        missing = [f"patching failed: {exc!r}"]
    if missing:
        _undo(assoc, old_delay)
        _warn_once(missing)
