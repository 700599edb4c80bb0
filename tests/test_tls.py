"""DICOM over TLS: the listener with a certificate, a TLS client succeeds and a plain one does not."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.node import Node
from tests.helpers import pynetdicom_echo, require_tool, wait_for


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


def make_ca(tmp: Path) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    ca, key = tmp / "ca.crt", tmp / "ca.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Test CA",
                    "-keyout", str(key), "-out", str(ca)], check=True, capture_output=True)
    return ca, key


def make_client(tmp: Path, ca: tuple[Path, Path], cn: str) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    csr, crt, key = tmp / f"{cn}.csr", tmp / f"{cn}.crt", tmp / f"{cn}.key"
    subprocess.run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/O=Hospital/CN={cn}", "-keyout", str(key),
                    "-out", str(csr)], check=True, capture_output=True)
    subprocess.run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
                    "-days", "1", "-out", str(crt)], check=True, capture_output=True)
    return crt, key


def tls_echo(port: int, server_cert: Path, calling: str, client: tuple[Path, Path] | None = None, timeout: float = 5) -> bool:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return pynetdicom_echo(port, calling, timeout=timeout, tls_args=(ctx, "localhost"))


def test_an_idle_tcp_connection_does_not_block_tls_peers(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    """pynetdicom handshakes in its accept thread; the node does it in the connection's thread, with a deadline."""
    cert, key = make_cert(tmp_path)
    node = node_factory(f'[node.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nhandshake_seconds = 8')
    idle = socket.create_connection(("127.0.0.1", node.cfg.node.port), source_address=("127.0.0.2", 0))
    try:
        # Blocked behind the idle connection, this peer would give up (3 s) before the node did (8 s).
        assert tls_echo(node.cfg.node.port, cert, "TLSSCU", timeout=3)
        idle.settimeout(0.2)
        assert wait_for(lambda: _closed(idle), 20, what="the idle connection to be closed after handshake_seconds")
    finally:
        idle.close()


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_certificate_subjects_map_to_calling_aes(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    ca = make_ca(tmp_path)
    ct1 = make_client(tmp_path, ca, "ct1.example.org")
    other = make_client(tmp_path, ca, "laptop.example.org")
    node = node_factory(
        f'[node.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nca_file = "{ca[0]}"\nrequire_client_cert = true\n'
        '[node.tls.allowed_subjects]\n"CN=ct1.example.org" = ["CT1"]\n'
    )
    port = node.cfg.node.port
    assert tls_echo(port, cert, "CT1", ct1)
    assert not tls_echo(port, cert, "PACS", ct1), "the CT's certificate may not call as another AE"
    assert not tls_echo(port, cert, "CT1", other), "another certificate may not call as CT1"
    assert not tls_echo(port, cert, "CT1"), "no client certificate, no association"


def test_client_certificates_need_a_ca_file(tmp_path: Path) -> None:
    from dicomnode.config import load_config
    from dicomnode.errors import ConfigError
    from tests.helpers import write_config

    cert, key = make_cert(tmp_path)
    cfg = write_config(tmp_path, f'[node.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nallowed_subjects = {{"CN=x" = ["X"]}}')
    with pytest.raises(ConfigError, match="require_client_cert"):
        load_config(cfg, environ={})
