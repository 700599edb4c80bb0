"""The STOW-RS receiver (``POST /dicom-web/studies``): Orthanc's DICOMweb client stores a study into the node.

Orthanc (with Debian's DICOMweb plugin) is the real client: it sends a study
it holds to the node's web port with HTTP Basic.  Hostile and broken bodies
are sent by hand: not multipart, a part that is not DICOM, a part over the
instance limit, another study than the URL names, and a body cut short in
the middle of its second instance, which must leave nothing half-stored.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from dicomnode.node import Node
from dicomnode.testing.synthetic import SeriesSpec, write_series
from tests.conftest import series_of
from tests.helpers import storescu, wait_for
from tests.peers import Orthanc
from tests.webclient import Client, admin_password

WEB = "enabled = true\nport = 0"
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


def body_of(parts: list[tuple[str, bytes]], boundary: str = "b0und4ry") -> tuple[bytes, str]:
    out = b""
    for kind, data in parts:
        out += f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(node: Node, body: bytes, content_type: str, path: str = "/dicom-web/studies") -> tuple[int, dict[str, object]]:
    assert node.web_port is not None
    a = Client(node.web_port).request("POST", path, {"Content-Type": content_type, "Accept": "application/dicom+json"}, body,
                                      auth=("admin", admin_password(node)))
    return a.status, (a.json() if a.body else {})


def test_orthanc_stores_a_study_into_the_node_by_stow_rs(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    files = write_series(SeriesSpec(slices=6, rows=32, columns=32, seed="stow-in"), tmp_path / "ct")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        node = node_factory(web_toml=WEB, series_toml="quiet_seconds = 30")
        assert storescu(orthanc.port, files, called=orthanc.ae).returncode == 0
        orthanc.put("/dicom-web/servers/node", {"Url": f"http://127.0.0.1:{node.web_port}/dicom-web/", "Username": "admin",
                                                  "Password": admin_password(node)})
        [study] = orthanc.get("/studies")
        job = orthanc.post("/dicom-web/servers/node/stow", {"Resources": [study], "Synchronous": True})
        assert job is not None
        [s] = wait_for(lambda: [s for s in series_of(node) if s.instance_count == 6] or None, 30, what="the stored series")
        assert s.calling_ae == "STOW-RS"
        # The request ended normally: the series completes on it, as after a released association.
        wait_for(lambda: any(x.state != "receiving" for x in series_of(node)), 30, what="the series to complete")
        stored = sorted(p for p in node.cfg.node.incoming_dir.rglob("*.dcm"))
        assert len(stored) == 6 and {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stored} == {
            str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    finally:
        orthanc.stop()


def test_bad_bodies_get_readable_refusals_per_instance(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    node = node_factory(web_toml=WEB, node_toml="max_instance_mb = 1")
    [good] = write_series(SeriesSpec(slices=1, rows=16, columns=16, seed="stow-good"), tmp_path / "g")
    [big] = write_series(SeriesSpec(slices=1, rows=1024, columns=1024, seed="stow-big"), tmp_path / "b")  # 2 MB of pixels
    assert post(node, b"{}", "application/json")[0] == 415
    status, answer = post(node, *body_of([("application/dicom", good.read_bytes()), ("application/dicom", b"not dicom at all"),
                                          ("application/dicom", big.read_bytes())]))
    assert status == 202
    assert [i["00081155"]["Value"][0] for i in answer[REFERENCED]["Value"]] == [str(dcmread(good).SOPInstanceUID)]  # type: ignore[index]
    assert [i[REASON]["Value"][0] for i in answer[FAILED]["Value"]] == [0xC000, 0xA700]  # type: ignore[index]
    status, answer = post(node, *body_of([("text/plain", b"hello")]))
    assert status == 409 and answer[FAILED]["Value"][0][REASON]["Value"] == [0xC000]  # type: ignore[index]
    status, answer = post(node, *body_of([("application/dicom", good.read_bytes())]), path="/dicom-web/studies/1.2.3.4")
    assert status == 409 and answer[FAILED]["Value"][0][REASON]["Value"] == [0xA900]  # type: ignore[index]
    assert node.web_port is not None
    no_login = Client(node.web_port).request("POST", "/dicom-web/studies", {"Content-Type": "multipart/related; boundary=x"}, b"--x--")
    assert no_login.status == 401


def test_a_body_cut_short_stores_nothing_half_received(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    node = node_factory(web_toml=WEB)
    a, b = write_series(SeriesSpec(slices=2, rows=64, columns=64, seed="stow-cut"), tmp_path / "c")
    body, content_type = body_of([("application/dicom", a.read_bytes()), ("application/dicom", b.read_bytes())])
    cut = body[: len(body) - len(b.read_bytes()) // 2]  # the second instance stops halfway
    import base64

    creds = base64.b64encode(f"admin:{admin_password(node)}".encode()).decode()
    assert node.web_port is not None
    with socket.create_connection(("127.0.0.1", node.web_port)) as sock:
        head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{node.web_port}\r\nAuthorization: Basic {creds}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        sock.sendall(head.encode() + cut)
        # The complete first instance is stored as it arrives (durable and recorded), while the second is unfinished ...
        wait_for(lambda: [x for x in series_of(node) if x.instance_count == 1] or None, 30, what="the first instance")
    # ... and the connection drops: the second is nowhere, not even as a temporary file.
    files = list(node.cfg.node.incoming_dir.rglob("*"))
    stored = [f for f in files if f.is_file()]
    assert len(stored) == 1 and str(dcmread(stored[0], stop_before_pixels=True).SOPInstanceUID) == str(dcmread(a).SOPInstanceUID)
    ok = post(node, *body_of([("application/dicom", b.read_bytes())]))  # the client sends the rest again
    assert ok[0] == 200
    assert json.dumps(ok[1]).count("00081155") == 1
