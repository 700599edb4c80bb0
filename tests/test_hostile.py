"""Hostile peers against a live node (``dicomnode serve`` in a child process).

Each attack is bounded in time, and after each the node must still answer
C-ECHO, answer with the right status, and stay within its memory bound
(the child's peak RSS, ``VmHWM``, read from ``/proc``).  The node runs with
small limits so that the tests are quick: a 2 s PDU deadline, 4 connections
per address, 16 MB instances, 64 KiB PDUs.

Attacks that need the node's internals to force an interleaving live beside
their code: the purge racing a re-send and the replacement whose commit
fails in ``tests/test_integrity.py``, forged commitments against a waiting
delivery in ``tests/test_commitment_security.py``, and random PDUs in
``tests/test_fuzz.py``.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.dicom.status import ERROR_CANNOT_UNDERSTAND, ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS, REFUSED_OUT_OF_RESOURCES
from dicomnode.net.guard import A_ABORT_INVALID_PDU
from dicomnode.receive.ingest import PREAMBLE, file_meta_bytes
from tests.helpers import NodeProcess, pynetdicom_echo, store_files, wait_for, write_config

pytestmark = pytest.mark.slow
MEMORY_BOUND_MB = 400  # growth of the node's peak RSS over all attacks; a single bomb used to add 2000+
ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to loopback: the attacker has an address of its own


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    d = tmp_path_factory.mktemp("hostile")
    cfg = write_config(
        d,
        "max_connections_per_host = 4\npdu_seconds = 2\nmax_instance_mb = 16\nmax_pdu_size = 65536\n"
        "max_associations = 16\nnetwork_timeout = 10",
    )
    n = NodeProcess(cfg, d / "node.log").start()
    yield n
    n.stop()


def peak_rss_mb(n: NodeProcess) -> float:
    assert n.proc is not None
    for line in Path(f"/proc/{n.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def baseline(node: NodeProcess) -> float:
    assert echo(node.port)
    return peak_rss_mb(node)


def echo(port: int, timeout: float = 5.0) -> bool:
    return pynetdicom_echo(port, timeout=timeout)


def attacker_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))


def closed_by_peer(s: socket.socket, within: float) -> bool:
    """Whether the node closes ``s`` within ``within`` seconds (an A-ABORT may come first)."""
    s.settimeout(0.2)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True
        if not data:
            return True
    return False


def after_attack(node: NodeProcess, baseline: float) -> None:
    """The node still answers, and its memory stayed bounded."""
    assert wait_for(lambda: echo(node.port), 10, interval=0.2, what="C-ECHO after the attack")
    grown = peak_rss_mb(node) - baseline
    assert grown < MEMORY_BOUND_MB, f"peak RSS grew by {grown:.0f} MB"


# -- hand-made datasets ---------------------------------------------------------

def el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2s2xL", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def ct_head(sop_uid: str, rows: int, cols: int) -> bytes:
    return b"".join((
        el(0x0008, 0x0016, b"UI", CTImageStorage.encode()),
        el(0x0008, 0x0018, b"UI", sop_uid.encode()),
        el(0x0008, 0x0060, b"CS", b"CT"),
        el(0x0010, 0x0020, b"LO", b"HOSTILE"),
        el(0x0020, 0x000D, b"UI", generate_uid().encode()),
        el(0x0020, 0x000E, b"UI", generate_uid().encode()),
        el(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
        el(0x0028, 0x0010, b"US", struct.pack("<H", rows)),
        el(0x0028, 0x0011, b"US", struct.pack("<H", cols)),
        el(0x0028, 0x0100, b"US", struct.pack("<H", 16)),
    ))


def pixel_header(nbytes: int) -> bytes:
    return struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", nbytes)


def write_part10(path: Path, sop_uid: str, ts: str, chunks: Iterator[bytes] | list[bytes]) -> Path:
    with path.open("wb") as f:
        f.write(PREAMBLE + file_meta_bytes(CTImageStorage, sop_uid, ts, None))
        for c in chunks:
            f.write(c)
    return path


def store_file(port: int, path: Path, ts: str) -> tuple[int, str]:
    """C-STORE one Part 10 file exactly as it is encoded (pydicom never parses it); the status and ErrorComment."""
    code, comment = store_files(port, [path], [ts], calling="HOSTILE", timeout=30, as_encoded=True)[0]
    return code, comment or ""


# -- the attacks ----------------------------------------------------------------

@pytest.mark.parametrize("pdu_type", [0x01, 0x04])
def test_memory_bomb_before_association(node: NodeProcess, baseline: float, pdu_type: int) -> None:
    """Ten bytes declaring a 2 GiB PDU: aborted at once, nothing allocated."""
    with attacker_socket(node.port) as s:
        s.sendall(struct.pack(">BBL", pdu_type, 0, 2**31) + b"\x00" * 4)
        s.settimeout(5)
        assert s.recv(10) == A_ABORT_INVALID_PDU
        assert closed_by_peer(s, 5)
    after_attack(node, baseline)


def test_memory_bomb_inside_an_association(node: NodeProcess, baseline: float) -> None:
    """A P-DATA PDU longer than the negotiated maximum, on an established association."""
    ae = AE(ae_title="BOMBER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    raw.sendall(struct.pack(">BBL", 0x04, 0, 2**31 - 1) + b"\x00" * 4)
    wait_for(lambda: assoc.is_aborted or not assoc.is_established, 10, what="the association to be aborted")
    after_attack(node, baseline)


def test_slowloris_is_capped_per_address_and_reaped(node: NodeProcess, baseline: float) -> None:
    """20 connections that each send one byte: 4 are held (then reaped), the rest refused; others still get in."""
    socks = []
    try:
        for _ in range(20):
            s = attacker_socket(node.port)
            s.sendall(b"\x01")
            socks.append(s)
        assert echo(node.port), "another address must not be locked out"
        refused = [s for s in socks if closed_by_peer(s, 0.3)]
        assert len(refused) >= 16, f"only {len(refused)} of 20 connections refused beyond the per-address cap"
        held = [s for s in socks if s not in refused]
        assert all(closed_by_peer(s, 10) for s in held), "stalled connections must be reaped after pdu_seconds"
        assert echo(node.port)
    finally:
        for s in socks:
            s.close()
    after_attack(node, baseline)


def test_a_burst_of_junk_connections_frees_its_slots(node: NodeProcess, baseline: float) -> None:
    """40 addresses each send a junk PDU and hang up: their association slots are freed at once, not after 30 s."""
    for i in range(40):
        with socket.create_connection(("127.0.0.1", node.port), timeout=5, source_address=(f"127.0.1.{i + 1}", 0)) as s:
            s.sendall(struct.pack(">BBL", 0x01, 0, 4) + b"\xff" * 4 + struct.pack(">BBL", 0x09, 0, 0))
    assert wait_for(lambda: echo(node.port, timeout=3), 8, interval=0.2, what="C-ECHO after the burst")
    after_attack(node, baseline)


def test_half_sent_pdu_is_reaped(node: NodeProcess, baseline: float) -> None:
    """A modality that loses power mid-PDU does not hold its slot until a restart."""
    with attacker_socket(node.port) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\x00" * 50)  # 50 of 200 bytes, then silence
        assert closed_by_peer(s, 10), "a half-sent PDU must be reaped after pdu_seconds (2 s here)"
    after_attack(node, baseline)


def test_deflate_bomb_is_refused(node: NodeProcess, baseline: float, tmp_path: Path) -> None:
    """About 100 KB of deflated data that inflates to 64 MB: refused (0xA700) without inflating it all."""
    sop = generate_uid()
    rows, cols = 4096, 8192  # 64 MB of 16-bit pixels
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(ct_head(sop, rows, cols) + pixel_header(rows * cols * 2))]
    zeros = b"\x00" * (1 << 20)
    parts += [comp.compress(zeros) for _ in range(rows * cols * 2 >> 20)]
    parts.append(comp.flush())
    path = write_part10(tmp_path / "bomb.dcm", sop, DeflatedExplicitVRLittleEndian, parts)
    assert path.stat().st_size < 200_000
    status, comment = store_file(node.port, path, DeflatedExplicitVRLittleEndian)
    assert status == REFUSED_OUT_OF_RESOURCES
    assert "inflates to more than" in comment
    after_attack(node, baseline)


def test_oversized_instance_is_refused_without_holding_it(node: NodeProcess, baseline: float, tmp_path: Path) -> None:
    """A 40 MB instance against a 16 MB limit: the request completes, is refused 0xA700, and is not held."""
    sop = generate_uid()
    rows, cols = 4096, 5120
    n = rows * cols * 2
    zeros = b"\x00" * (1 << 20)
    path = write_part10(tmp_path / "big.dcm", sop, ExplicitVRLittleEndian,
                        [ct_head(sop, rows, cols), pixel_header(n), *(zeros for _ in range(n >> 20))])
    status, comment = store_file(node.port, path, ExplicitVRLittleEndian)
    assert status == REFUSED_OUT_OF_RESOURCES
    assert "exceeds the node's limit of 16 MB" in comment
    after_attack(node, baseline)


def test_deep_nesting_is_refused_in_words(node: NodeProcess, baseline: float, tmp_path: Path) -> None:
    """3000 nested sequences: 0xC210 with a one-line reason, not a RecursionError."""
    sop = generate_uid()
    depth = 3000
    opening = struct.pack("<HH2s2xL", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    body = ct_head(sop, 2, 2) + opening * depth + closing * depth + pixel_header(8) + b"\x00" * 8
    path = write_part10(tmp_path / "deep.dcm", sop, ExplicitVRLittleEndian, [body])
    status, comment = store_file(node.port, path, ExplicitVRLittleEndian)
    assert status == ERROR_CANNOT_UNDERSTAND
    assert "nested deeper than 64 levels" in comment
    after_attack(node, baseline)


def test_image_without_pixel_data_is_refused(node: NodeProcess, baseline: float, tmp_path: Path) -> None:
    sop = generate_uid()
    path = write_part10(tmp_path / "nopixels.dcm", sop, ExplicitVRLittleEndian, [ct_head(sop, 2, 2)])
    status, comment = store_file(node.port, path, ExplicitVRLittleEndian)
    assert status == ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "no Pixel Data" in comment
    after_attack(node, baseline)


def test_a_uid_with_a_trailing_newline_is_refused(node: NodeProcess, baseline: float, tmp_path: Path) -> None:
    sop = generate_uid()
    body = ct_head(sop + "\n", 2, 2) + pixel_header(8) + b"\x00" * 8
    path = write_part10(tmp_path / "newline.dcm", sop, ExplicitVRLittleEndian, [body])
    status, comment = store_file(node.port, path, ExplicitVRLittleEndian)
    assert status == ERROR_CANNOT_UNDERSTAND
    assert "SOPInstanceUID is not a valid UID" in comment
    after_attack(node, baseline)


def test_forged_storage_commitment_from_another_ae_is_refused(node: NodeProcess, baseline: float) -> None:
    """An AE named EVIL reports "all committed" for a transaction: 0x0124, nothing settled.

    (The full set, against a node with a Storage Commitment destination and a
    real delivery waiting, is ``tests/test_commitment_security.py``.)
    """
    from pydicom import Dataset

    from dicomnode.dicom.status import NOT_AUTHORIZED
    from tests.peers import send_commitment_report

    report = Dataset()
    report.TransactionUID = generate_uid()
    report.ReferencedSOPSequence = []
    status = send_commitment_report(("127.0.0.1", node.port, "DICOMNODE"), report, 1, calling_ae="EVIL", bind_address=ATTACKER)
    assert status == NOT_AUTHORIZED
    after_attack(node, baseline)


def test_a_uid_of_another_patient_is_refused_not_merged(node: NodeProcess, baseline: float, tmp_path: Path) -> None:
    """The same SOP Instance UID for another patient and study: 0xC230, and the first patient's copy stays."""
    from dicomnode.dicom.status import ERROR_UID_CONFLICT

    import sqlite3

    sop = generate_uid()
    body = ct_head(sop, 2, 2) + pixel_header(8) + b"\x00" * 8
    first = write_part10(tmp_path / "first.dcm", sop, ExplicitVRLittleEndian, [body])
    assert store_file(node.port, first, ExplicitVRLittleEndian) == (0, "")
    other = ct_head(sop, 2, 2).replace(b"HOSTILE", b"OTHERPT")  # new Study and Series UIDs too (ct_head makes them)
    second = write_part10(tmp_path / "second.dcm", sop, ExplicitVRLittleEndian, [other + pixel_header(8) + b"\x01" * 8])
    status, comment = store_file(node.port, second, ExplicitVRLittleEndian)
    assert status == ERROR_UID_CONFLICT
    assert "another patient" in comment
    with sqlite3.connect(node.config.parent / "storage" / "dicomnode.db") as db:
        [(crc,)] = db.execute("SELECT crc32 FROM instances WHERE sop_uid = ?", (sop,)).fetchall()
    assert crc == zlib.crc32(body), "the first patient's copy is the one stored"
    after_attack(node, baseline)


def test_node_log_explains_each_cut(node: NodeProcess, baseline: float) -> None:
    """What a PACS administrator reads (runs last in this module: the attacks above wrote it)."""
    text = node.log.read_text()
    assert "more than the 65536 this node accepts" in text
    assert "and then nothing for 2 s" in text
    assert "already holds 4 connection(s) (node.max_connections_per_host)" in text
    assert "Traceback" not in text
