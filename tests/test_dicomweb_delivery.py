"""DICOMweb destinations: STOW-RS to Orthanc's DICOMweb plugin, and to an HTTPS peer that refuses some objects.

Orthanc (Debian's package with ``orthanc-dicomweb``) is the real peer: the
outputs arrive in its study by STOW-RS with HTTP Basic credentials; wrong
credentials and a wrong URL fail in words.  A small HTTPS STOW-RS peer in the
test (certificates made with ``openssl``) answers what Orthanc does not
produce on demand: a partial refusal with failure reasons, and a certificate
the node must not trust without ``tls_ca_file``.  It also parses the node's
multipart body and reads each part as DICOM.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import Engine

from dicomnode.config import Config, Destination, parse_config
from dicomnode.config.peers import DestinationKind, WebAuth
from dicomnode.errors import ConfigError
from dicomnode.jobs.delivery import Sender
from storage.outbox import DeliveryRow, list_deliveries, outputs_for
from storage.queue import job_state
from tests import test_delivery, test_delivery_tls
from tests.helpers import wait_for
from tests.peers import Orthanc

Setup = Callable[..., tuple[Config, Engine, int]]
setup = test_delivery.setup  # the fixture: a finished job with three outputs and its deliveries
pki = test_delivery_tls.pki  # the fixture: a CA, a certificate for 127.0.0.1, another CA


def web(name: str, url: str, **kw: Any) -> Destination:
    return Destination(name, "", "127.0.0.1", 0, kind=DestinationKind.DICOMWEB, url=url, **kw)


def deliver(make: Setup, dest: Destination) -> tuple[DeliveryRow, str, Config, Engine, int]:
    cfg, engine, job = make(dest)
    sender = Sender(engine, cfg)
    wait_for(lambda: (sender.run_once(), job_state(engine, job)[0] in ("done", "delivery_failed"))[1], 60, what="the delivery")
    [row] = list_deliveries(engine, job)
    return row, job_state(engine, job)[0], cfg, engine, job  # type: ignore[index]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    o = Orthanc(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True, user=("dicomnode", "s3cret pass")).start()
    yield o
    o.stop()


def test_outputs_arrive_in_orthanc_by_stow_rs_with_basic_auth(setup: Setup, orthanc: Orthanc, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret pass\n")
    dest = web("orthanc-web", orthanc.dicomweb_url, auth=WebAuth.BASIC, username="dicomnode", password_file=secret)
    row, state, cfg, engine, job = deliver(setup, dest)
    assert (state, row.state, row.sent_count, row.attempts) == ("done", "done", 3, 1), row.last_error
    sent = {o.sop_instance_uid for o in outputs_for(engine, job, "")}
    stored = {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")}
    assert sent <= stored
    # QIDO-RS on the same service finds them: they are in the study, as a DICOMweb client sees it.
    study = dcmread(cfg.node.storage_dir / outputs_for(engine, job, "")[0].path, stop_before_pixels=True).StudyInstanceUID
    assert any(s["MainDicomTags"]["StudyInstanceUID"] == study for s in (orthanc.get(f"/studies/{x}") for x in orthanc.get("/studies")))


def test_wrong_credentials_and_a_wrong_url_fail_in_words(setup: Setup, orthanc: Orthanc, tmp_path: Path) -> None:
    from dataclasses import replace

    secret = tmp_path / "password"
    secret.write_text("wrong")
    one = replace(test_delivery.FAST, max_attempts=1)
    dest = web("orthanc-web", orthanc.dicomweb_url, auth=WebAuth.BASIC, username="dicomnode", password_file=secret)
    row, state, *_ = deliver(lambda d: setup(d, delivery=one), dest)
    assert state == "delivery_failed" and "HTTP 401" in (row.last_error or "") and "refused our credentials" in (row.last_error or "")
    assert "wrong" not in (row.last_error or "")  # the password is never quoted


def test_a_url_that_is_no_dicomweb_root_fails_in_words(setup: Setup, orthanc: Orthanc, tmp_path: Path) -> None:
    from dataclasses import replace

    secret = tmp_path / "password"
    secret.write_text("s3cret pass")
    one = replace(test_delivery.FAST, max_attempts=1)
    dest = web("orthanc-web", orthanc.dicomweb_url.replace("/dicom-web", "/no-web"), auth=WebAuth.BASIC, username="dicomnode",
               password_file=secret)
    row, state, *_ = deliver(lambda d: setup(d, delivery=one), dest)
    assert state == "delivery_failed" and "HTTP 404" in (row.last_error or "") and "no STOW-RS service" in (row.last_error or ""), row.last_error


class _StowPeer(http.server.BaseHTTPRequestHandler):
    """An HTTPS STOW-RS peer that stores every part but refuses the second, with reason 0xA700."""

    received: list[list[Any]] = []
    authorization: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).authorization.append(self.headers.get("Authorization"))
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        parts = [dcmread(io.BytesIO(p.get_payload(decode=True))) for p in msg.iter_parts()]
        type(self).received.append(parts)
        uid = {"vr": "UI", "Value": None}
        answer = {
            "00081199": {"vr": "SQ", "Value": [{"00081155": {**uid, "Value": [str(p.SOPInstanceUID)]}} for i, p in enumerate(parts) if i != 1]},
            "00081198": {"vr": "SQ", "Value": [{"00081155": {**uid, "Value": [str(parts[1].SOPInstanceUID)]},
                                                "00081197": {"vr": "US", "Value": [0xA700]}}]},
        }
        data = json.dumps(answer).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_peer(pki: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StowPeer)
    server.socket = test_delivery_tls.server_context(pki).wrap_socket(server.socket, server_side=True)
    _StowPeer.received, _StowPeer.authorization = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/dicomweb"
    server.shutdown()


def test_a_partial_refusal_names_each_refused_object_and_is_retried(setup: Setup, https_peer: str, pki: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    token = tmp_path / "token"
    token.write_text("abc.def.ghi\n")
    dest = web("vna", https_peer, tls=True, tls_ca_file=pki / "ca.pem", auth=WebAuth.BEARER, token_file=token)
    row, state, *_ = deliver(lambda d: setup(d, delivery=replace(test_delivery.FAST, max_attempts=2)), dest)
    assert state == "delivery_failed" and row.attempts == 2
    assert "vna stored 2 of 3 object(s) and refused 1: the SEG (object 2 of 3): 0xA700 out of resources" in (row.last_error or "")
    assert _StowPeer.authorization == ["Bearer abc.def.ghi"] * 2
    assert [len(parts) for parts in _StowPeer.received] == [3, 3]  # every object in one request, each a DICOM part


def test_an_untrusted_certificate_is_refused_in_words(setup: Setup, https_peer: str) -> None:
    from dataclasses import replace

    row, state, *_ = deliver(lambda d: setup(d, delivery=replace(test_delivery.FAST, max_attempts=1)), web("vna", https_peer, tls=True))
    assert state == "delivery_failed" and "certificate is not trusted" in (row.last_error or "") and "tls_ca_file" in (row.last_error or "")
    assert _StowPeer.received == []


def _cfg(tmp_path: Path, body: str) -> Config:
    import tomllib

    return parse_config(tomllib.loads(f"[node]\nstorage_dir = \"{tmp_path}\"\n" + body))


def test_dicomweb_destinations_are_validated(tmp_path: Path, pki: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    ok = _cfg(tmp_path, f'[[destinations]]\nname = "vna"\nkind = "dicomweb"\nurl = "https://vna.example.org/dicom-web/"\n'
                        f'auth = "basic"\nusername = "node"\npassword_file = "{secret}"\ntls_ca_file = "{pki / "ca.pem"}"\n')
    [d] = ok.destinations
    assert (d.kind, d.url, d.host, d.port, d.tls, d.auth) == ("dicomweb", "https://vna.example.org/dicom-web", "vna.example.org", 443, True, "basic")
    bad = {
        'url = "ftp://x/dicom-web"': "must be an http:// or https://",
        'url = "https://u:p@x/dicom-web"': "no credentials",
        'url = "https://x/dicom-web"\nstorage_commitment = true': "Storage Commitment is DIMSE",
        'url = "https://x/dicom-web"\nauth = "basic"\nusername = "a"': "password_file: required with auth = 'basic'",
        'url = "https://x/dicom-web"\nauth = "kerberos"': "auth: must be one of none, basic, bearer",
        f'url = "http://x/dicom-web"\ntls_ca_file = "{pki / "ca.pem"}"': "the url is not https://",
        'url = "https://x/dicom-web"\nae_title = "X"': "unknown key",
        'url = "https://x/dicom-web"\nauth = "bearer"\ntoken_file = "/nonexistent/token"': "does not exist",
    }
    for body, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _cfg(tmp_path, f'[[destinations]]\nname = "vna"\nkind = "dicomweb"\n{body}\n')
    with pytest.raises(ConfigError, match="kind: must be dimse or dicomweb"):
        _cfg(tmp_path, '[[destinations]]\nname = "x"\nkind = "ftp"\nae_title = "X"\nhost = "h"\nport = 104\n')
