"""Property-based fuzzing of the header walker and of PDU parsing against a live association.

The walker must turn any byte string into either a header or an
:class:`~dicomnode.errors.IngestError` (a DICOM status with a reason), never
another exception.  A live node fed mutated association requests and
P-DATA PDUs must keep answering C-ECHO.  Examples are derandomized so that
CI is reproducible; run with ``--hypothesis-seed`` and without
``derandomize`` locally to explore further.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.dicom.header import check_structure, parse_header
from dicomnode.errors import IngestError
from dicomnode.node import Node
from dicomnode.testing.synthetic import SeriesSpec, make_slice
from tests.helpers import pynetdicom_echo

FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


def encoded_slice(ts: UID) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = make_slice(SeriesSpec(seed="fuzz", rows=8, columns=8, slices=2), 0)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, ts.is_implicit_VR
    write_dataset(buf, ds)
    return bytes(buf.getvalue())


VALID = {ts: encoded_slice(UID(ts)) for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)}


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, tail: bytes) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    if cut is not None:
        del out[cut % (len(out) + 1):]
    return bytes(out) + tail


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8)
cuts = st.none() | st.integers(0, 1 << 16)
tails = st.binary(max_size=64)


def only_ingest_errors(data: bytes, ts: UID) -> None:
    try:
        parse_header(data, ts, max_inflated=1 << 20)
    except IngestError as exc:
        assert exc.status and str(exc)


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(sorted(VALID)), edits, cuts, tails)
def test_walker_on_mutated_datasets(ts: str, e: list[tuple[int, int]], cut: int | None, tail: bytes) -> None:
    only_ingest_errors(mutate(VALID[ts], e, cut, tail), UID(ts))


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=512), st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"]))
def test_walker_on_random_bytes(data: bytes, ts: str) -> None:
    only_ingest_errors(data, UID(ts))
    try:
        check_structure(data, UID(ts))
    except IngestError:
        pass


# -- PDUs against a live node ----------------------------------------------------

def _recv(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def captured_association_request() -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends, captured on a plain socket."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    t = threading.Thread(target=ae.associate, args=("127.0.0.1", port), kwargs={"ae_title": "DICOMNODE"}, daemon=True)
    t.start()
    conn, _ = srv.accept()
    conn.settimeout(5)
    head = _recv(conn, 6)
    pdu = head + _recv(conn, struct.unpack(">L", head[2:])[0])
    conn.close()
    srv.close()
    t.join(5)
    return pdu


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, bytes]]:
    from dataclasses import replace

    from dicomnode.config import load_config
    from tests.helpers import write_config

    d = tmp_path_factory.mktemp("fuzz")
    cfg = load_config(write_config(d, "pdu_seconds = 2\nmax_connections_per_host = 64"), environ={})
    node = Node(cfg)
    port = node.start()
    node.cfg = replace(cfg, node=replace(cfg.node, port=port))
    yield node, captured_association_request()
    node.stop()


def echo(port: int) -> bool:
    return pynetdicom_echo(port)


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)) as s:
        try:
            s.sendall(data)
            s.settimeout(0.05)
            s.recv(65536)
        except OSError:
            pass


def pdu(pdu_type: int, body: bytes, declared: int | None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if declared is None else declared) + body


@settings(FUZZ, max_examples=40)
@given(edits, cuts, tails)
def test_mutated_association_requests(live: tuple[Node, bytes], e: list[tuple[int, int]], cut: int | None, tail: bytes) -> None:
    node, request = live
    send_raw(node.cfg.node.port, mutate(request, e, cut, tail))
    assert echo(node.cfg.node.port)


pdv = st.tuples(st.integers(0, 255), st.integers(0, 3), st.binary(max_size=200), st.none() | st.integers(0, 1 << 32 - 1))


@settings(FUZZ, max_examples=40)
@given(st.lists(pdv, min_size=1, max_size=4), st.none() | st.integers(0, (1 << 32) - 1), st.integers(1, 7))
def test_pdus_inside_an_association(
    live: tuple[Node, bytes], items: list[tuple[int, int, bytes, int | None]], declared: int | None, pdu_type: int
) -> None:
    """P-DATA (or any other PDU) with random PDVs, lengths and control headers on an established association."""
    node, _ = live
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    body = b"".join(
        struct.pack(">LBB", len(data) + 2 if length is None else length, ctx, control) + data for ctx, control, data, length in items
    )
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    try:
        raw.sendall(pdu(pdu_type, body, declared))
    except OSError:
        pass
    assoc.abort()
    assert echo(node.cfg.node.port)


def test_no_association_outlives_its_connection(live: tuple[Node, bytes]) -> None:
    """Runs after the fuzzing: junk connections closed at once must not hold association slots.

    pynetdicom's acceptor waited ``acse_timeout`` for a request from a peer
    that had already gone; 43 such connections locked every peer out.
    """
    from tests.helpers import wait_for

    node, _ = live
    server = node.scp.server
    assert server is not None
    wait_for(lambda: not server.active_associations, 10, what="every fuzzing association to end")


def test_fuzz_helpers_send_what_pynetdicom_sends(live: tuple[Node, bytes]) -> None:
    """The captured request is a real one: unmodified, the node accepts it."""
    node, request = live
    with socket.create_connection(("127.0.0.1", node.cfg.node.port), timeout=5) as s:
        s.sendall(request)
        assert _recv(s, 1) == b"\x02"  # A-ASSOCIATE-AC


