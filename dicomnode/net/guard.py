"""Bounds on what one peer can cost the node: PDU sizes, stalls and instance sizes.

pynetdicom trusts its peers.  It allocates what a PDU header declares, waits
for the rest of a PDU for as long as the socket stays open, and accumulates
a dataset of any size in memory.  A peer that can reach the port could
therefore exhaust the node's memory with 10 bytes, or hold every association
slot with connections that send one byte each.  This module puts a bound on
each of those, per connection:

* :func:`bounded_recv` replaces ``AssociationSocket.recv``.  It refuses a PDU
  longer than the negotiated maximum (P-DATA) or than
  :data:`MAX_CONTROL_PDU` (association negotiation, release, abort), grows
  its buffer only as bytes arrive, and allows :attr:`PeerLimits.pdu_seconds`
  for the rest of a PDU once its first byte is in.  A peer that breaks a
  bound gets an A-ABORT and its connection is closed.
* :func:`bounded_receive_primitive` replaces
  ``DIMSEServiceProvider.receive_primitive``.  Once a dataset exceeds
  :attr:`PeerLimits.max_instance` bytes its fragments are counted and
  dropped (an :class:`Oversize` sink replaces the buffer), so the request
  completes with bounded memory and is answered with a failure status
  instead of an abort.  A command set over :data:`MAX_COMMAND` bytes closes
  the connection.

The patched names are pynetdicom internals; :mod:`dicomnode.net.fastpath`
checks them once per process (``check_internals``) before anything is
patched.
"""

from __future__ import annotations

import io
import logging
import socket
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.association import Association

logger = logging.getLogger(__name__)

MAX_CONTROL_PDU = 256 * 1024  # A-ASSOCIATE-RQ with 128 contexts of many syntaxes is far below this
MAX_COMMAND = 64 * 1024  # a DIMSE command set is a few hundred bytes
_FIRST_CHUNK = 64 * 1024  # the receive buffer starts here and doubles as bytes arrive
_P_DATA_TF = 0x04
_PDU_TYPES = range(0x01, 0x08)
# A-ABORT PDU (PS3.8 9.3.8): source 2 (service provider), reason 6 (invalid PDU parameter value).
A_ABORT_INVALID_PDU = bytes([0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, 0x06])
_LIMITS = "_dicomnode_limits"
_PDU_TYPE = "_dicomnode_pdu_type"


@dataclass(frozen=True)
class PeerLimits:
    """What one connection may cost.

    Parameters
    ----------
    max_pdu : int
        The longest P-DATA PDU accepted (the node's advertised Maximum Length Received).
    pdu_seconds : float
        Seconds allowed for the rest of a PDU once its first byte has arrived.
    max_instance : int
        The largest dataset, in bytes, that one C-STORE may carry.
    on_violation : callable, optional
        Called with the kind of violation (``"pdu_too_long"``, ``"stalled"``,
        ``"command_too_long"``) when a connection is cut; for metrics.
    """

    max_pdu: int
    pdu_seconds: float
    max_instance: int
    on_violation: Callable[[str], None] | None = None


DEFAULT_LIMITS = PeerLimits(max_pdu=1 << 20, pdu_seconds=30.0, max_instance=1 << 30)


class Oversize(io.BytesIO):
    """Stands in for a dataset buffer once the dataset passed :attr:`PeerLimits.max_instance`.

    Writes are counted and dropped, so the rest of the request costs no memory.
    """

    def __init__(self, received: int, limit: int) -> None:
        super().__init__()
        self.received = received
        self.limit = limit

    def write(self, data: Any) -> int:  # counts, never stores
        n = len(data)
        self.received += n
        return n


def _peer(sock: Any) -> str:
    try:
        host, port = sock.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, AttributeError, ValueError):
        return "a peer"


def _cut(sock: Any, limits: PeerLimits, kind: str, why: str) -> None:
    """Tell the peer (A-ABORT), close the connection and record why."""
    logger.warning("connection from %s aborted: %s", _peer(sock), why)
    raw = sock.socket
    try:
        raw.settimeout(1.0)
        raw.sendall(A_ABORT_INVALID_PDU)
    except (OSError, ValueError):
        pass
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass
    if limits.on_violation is not None:
        try:
            limits.on_violation(kind)
        except Exception:  # a metrics failure must not break the receive path
            logger.debug("violation callback failed", exc_info=True)


def _limit_for(sock: Any, limits: PeerLimits, nr_bytes: int) -> int:
    """The most bytes this read may ask for: a PDU header, or the body of the PDU it announced."""
    if nr_bytes == 6:
        return 6
    pdu_type = getattr(sock, _PDU_TYPE, None)
    return limits.max_pdu if pdu_type == _P_DATA_TF else MAX_CONTROL_PDU


def bounded_recv(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: read ``nr_bytes``, within the connection's :class:`PeerLimits`.

    Returns fewer bytes when the peer closes, stalls or declares too much; the
    caller (pynetdicom's DUL) then treats the connection as closed.
    """
    limits: PeerLimits = getattr(self, _LIMITS, DEFAULT_LIMITS)
    raw = self.socket
    allowed = _limit_for(self, limits, nr_bytes)
    if nr_bytes > allowed:
        kind = getattr(self, _PDU_TYPE, None)
        what = "P-DATA PDU" if kind == _P_DATA_TF else f"PDU of type 0x{kind or 0:02X}"
        _cut(self, limits, "pdu_too_long",
             f"it declared a {what} of {nr_bytes} bytes, more than the {allowed} this node accepts")
        return bytearray()
    buf = bytearray(min(nr_bytes, _FIRST_CHUNK))
    got = 0
    deadline = time.monotonic() + limits.pdu_seconds
    try:
        while got < nr_bytes:
            if got == len(buf):  # grow only as bytes arrive: a declared length costs nothing by itself
                buf.extend(bytes(min(nr_bytes, 2 * len(buf)) - len(buf)))
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            raw.settimeout(left)
            with memoryview(buf) as view:  # released before a resize: a live view forbids it
                n = raw.recv_into(view[got:], len(buf) - got)
            if not n:  # connection closed
                break
            got += n
    except (TimeoutError, socket.timeout):
        _cut(self, limits, "stalled",
             f"it sent {got} of {nr_bytes} bytes and then nothing for {limits.pdu_seconds:.0f} s")
    except OSError:
        pass  # reset or closed: pynetdicom sees the short read and closes
    finally:
        try:
            raw.settimeout(limits.pdu_seconds)  # pynetdicom's sends wait at most this long too
        except OSError:
            pass
    if got < len(buf):
        del buf[got:]
    if nr_bytes == 6 and got == 6:
        pdu_type = buf[0]
        setattr(self, _PDU_TYPE, pdu_type if pdu_type in _PDU_TYPES else None)
    return buf


def bounded_receive_primitive(self: Any, primitive: Any) -> None:
    """``DIMSEServiceProvider.receive_primitive`` that caps command and dataset sizes."""
    limits: PeerLimits = getattr(self, _LIMITS, DEFAULT_LIMITS)
    command = dataset = 0
    for _context_id, data in getattr(primitive, "presentation_data_value_list", ()) or ():
        if data and data[0] & 1:
            command += len(data) - 1
        else:
            dataset += len(data) - 1
    if self.message is None:
        from pynetdicom.dimse_messages import DIMSEMessage

        self.message = DIMSEMessage()
    msg = self.message
    if command and msg.encoded_command_set.tell() + command > MAX_COMMAND:
        _cut(self.dul.socket, limits, "command_too_long", f"its DIMSE command set exceeds {MAX_COMMAND} bytes")
        return
    buffer = getattr(msg, "data_set", None)
    if dataset and isinstance(buffer, io.BytesIO) and not isinstance(buffer, Oversize):
        held = buffer.tell()
        if held + dataset > limits.max_instance:
            msg.data_set = Oversize(held, limits.max_instance)  # drops what it held: memory is freed now
    _ORIGINAL_RECEIVE(self, primitive)


def _original_receive() -> Callable[[Any, Any], None]:
    from pynetdicom.dimse import DIMSEServiceProvider

    func: Callable[[Any, Any], None] = DIMSEServiceProvider.receive_primitive
    return func


_ORIGINAL_RECEIVE = _original_receive()


def receive_pdu_while_connected(self: Any, wait: bool = False, timeout: float | None = None) -> Any:
    """``DULServiceProvider.receive_pdu`` that stops waiting once the DUL has stopped.

    pynetdicom's acceptor waits ``acse_timeout`` (30 s) for the association
    request even when the peer has already gone (a connection that sends
    junk and closes): each such connection held an association slot for
    30 s, and a burst of them locked every peer out.
    """
    if not wait:
        return _ORIGINAL_RECEIVE_PDU(self, False, None)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = _WAKE_SECONDS if deadline is None else min(_WAKE_SECONDS, deadline - time.monotonic())
        if step <= 0:
            return None
        primitive = _ORIGINAL_RECEIVE_PDU(self, True, step)
        if primitive is not None:
            return primitive
        if self.ident is not None and not self.is_alive() and self.to_user_queue.empty():  # the DUL is gone: nothing will come
            return None


def _original_receive_pdu() -> Callable[..., Any]:
    from pynetdicom.dul import DULServiceProvider

    func: Callable[..., Any] = DULServiceProvider.receive_pdu
    return func


_ORIGINAL_RECEIVE_PDU = _original_receive_pdu()
_WAKE_SECONDS = 0.2


def guard_socket(assoc: Association, limits: PeerLimits) -> bool:
    """Bound reads on a new connection's socket (before its association request is read).

    Sets TCP keepalive (a peer that loses power is noticed while idle) and
    the per-PDU deadline.  Returns ``False`` when the socket is not what the
    bounds expect (it then keeps pynetdicom's own reads, with a timeout).
    """
    sock = assoc.dul.socket
    raw = getattr(sock, "socket", None)
    if sock is None or raw is None:
        return False
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
            if hasattr(socket, opt):
                raw.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        raw.settimeout(limits.pdu_seconds)
    except OSError:
        return False
    if not hasattr(raw, "recv_into"):
        return False
    setattr(sock, _LIMITS, limits)
    setattr(sock, "recv", types.MethodType(bounded_recv, sock))
    setattr(assoc.dul, "receive_pdu", types.MethodType(receive_pdu_while_connected, assoc.dul))
    return True


def guard_association(assoc: Association, limits: PeerLimits) -> bool:
    """Cap the command and dataset sizes of an accepted association's messages."""
    dimse = assoc.dimse
    setattr(dimse, _LIMITS, limits)
    setattr(dimse, "receive_primitive", types.MethodType(bounded_receive_primitive, dimse))
    return getattr(dimse.receive_primitive, "__func__", None) is bounded_receive_primitive


def is_guarded(assoc: Association) -> bool:
    """Whether both bounds are in place on ``assoc``."""
    try:
        return (
            getattr(getattr(assoc.dul.socket, "recv", None), "__func__", None) is bounded_recv
            and getattr(assoc.dimse.receive_primitive, "__func__", None) is bounded_receive_primitive
        )
    except AttributeError:
        return False


def oversize(dataset: Any) -> Oversize | None:
    """The :class:`Oversize` sink when a received dataset passed the size limit, else ``None``."""
    return dataset if isinstance(dataset, Oversize) else None


__all__ = [
    "A_ABORT_INVALID_PDU", "DEFAULT_LIMITS", "MAX_COMMAND", "MAX_CONTROL_PDU", "Oversize", "PeerLimits",
    "bounded_receive_primitive", "bounded_recv", "guard_association", "guard_socket", "is_guarded", "oversize",
]
