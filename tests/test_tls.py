"""DICOM over TLS: the listener with a certificate, a TLS client succeeds and a plain one does not."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.node import Node
from tests.helpers import require_tool


def make_cert(tmp: Path) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    cert, key = tmp / "node.crt", tmp / "node.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_listener(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    node = node_factory(f'[node.tls]\ncert_file = "{cert}"\nkey_file = "{key}"')
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()

    plain = AE(ae_title="PLAIN")
    plain.acse_timeout = plain.network_timeout = 5
    plain.add_requested_context(Verification)
    assert not plain.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE").is_established
