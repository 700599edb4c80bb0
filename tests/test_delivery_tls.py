"""Delivery over TLS and mutual TLS to a real pynetdicom PACS, with throw-away certificates.

A CA, a second (wrong) CA, server certificates (for 127.0.0.1, and for a DNS
name only) and a client certificate are made at test time with the
``openssl`` command line; the PACS stand-in serves DICOM over TLS with them.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dicomnode.config import Config, Destination, parse_config
from dicomnode.errors import ConfigError, NetworkError
from dicomnode.jobs.delivery import Sender
from dicomnode.net.scu import echo
from storage.outbox import DeliveryRow, list_deliveries
from storage.queue import job_state
from tests.helpers import require_tool, wait_for
from tests.peers import CommitmentPACS
from tests.test_delivery import setup  # noqa: F401  # the fixture

Setup = Callable[..., tuple[Config, Engine, int]]


def _openssl(*args: str | Path) -> None:
    subprocess.run([require_tool("openssl"), *map(str, args)], check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-keyout", d / f"{name}.key", "-out", d / f"{name}.pem", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _leaf(d: Path, name: str, ca: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", f"/CN={name}")
    (d / f"{name}.ext").write_text(extensions + "\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / f"{ca}.pem", "-CAkey", d / f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", d / f"{name}.pem", "-extfile", d / f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "pacs", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    _leaf(d, "pacs-by-name", "ca", "subjectAltName=DNS:pacs.example.org\nextendedKeyUsage=serverAuth")
    _leaf(d, "node", "ca", "extendedKeyUsage=clientAuth")
    return d


def server_context(pki: Path, cert: str = "pacs", *, require_client_cert: bool = False) -> ssl.SSLContext:
    """The PACS's side: its certificate, and (for mutual TLS) the CA its clients' certificates must chain to."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    if require_client_cert:
        ctx.load_verify_locations(cafile=pki / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_destination(pacs: CommitmentPACS, pki: Path, **kw: object) -> Destination:
    base = Destination("pacs", "CPACS", "127.0.0.1", pacs.port, tls=True, tls_ca_file=pki / "ca.pem")
    return replace(base, **kw)  # type: ignore[arg-type]


def attempt(make: Setup, dest: Destination, again: tuple[Config, Engine, int] | None = None) -> tuple[DeliveryRow, str, tuple[Config, Engine, int]]:
    """One delivery attempt to ``dest``: the delivery row, the job's state, and the setup to try ``again`` with."""
    cfg, engine, job_id = again or make(dest)
    cfg = replace(cfg, destinations=(dest,))
    wait_for(lambda: Sender(engine, cfg).run_once() == 1, 10, what="the attempt to be due")
    [d] = list_deliveries(engine, job_id)
    return d, str(job_state(engine, job_id)[0]), (cfg, engine, job_id)  # type: ignore[index]


def test_delivery_over_tls_with_storage_commitment(setup: Setup, pki: Path) -> None:  # noqa: F811
    pacs = CommitmentPACS(report="same", ssl_context=server_context(pki))
    try:
        d, job, _ = attempt(setup, tls_destination(pacs, pki, storage_commitment=True))
        assert (d.state, job, d.sent_count, d.last_error) == ("done", "done", 3, None)
        assert len(pacs.stored) == 3 and pacs.actions == 1
    finally:
        pacs.stop()


def test_a_pacs_certificate_from_another_ca_fails_readably_and_is_retried(setup: Setup, pki: Path) -> None:  # noqa: F811
    pacs = CommitmentPACS(ssl_context=server_context(pki))
    try:
        d, job, _ = attempt(setup, tls_destination(pacs, pki, tls_ca_file=pki / "other-ca.pem"))
    finally:
        pacs.stop()
    assert d.state == "pending" and d.attempts == 1 and job == "delivering"  # retried after the backoff
    assert d.last_error == (
        f"TLS handshake with CPACS@127.0.0.1:{pacs.port} failed: certificate verify failed: unable to get local issuer "
        f"certificate (is the peer's certificate signed by {pki / 'other-ca.pem'}?)"
    )
    assert not pacs.stored


def test_a_certificate_for_another_name_fails_unless_tls_server_name_names_it(setup: Setup, pki: Path) -> None:  # noqa: F811
    pacs = CommitmentPACS(ssl_context=server_context(pki, "pacs-by-name"))
    try:
        d, _, first = attempt(setup, tls_destination(pacs, pki))
        assert d.state == "pending" and (d.last_error or "").startswith(
            f"TLS handshake with CPACS@127.0.0.1:{pacs.port} failed: certificate verify failed: IP address mismatch, "
            "certificate is not valid for '127.0.0.1' (the certificate does not name 127.0.0.1; set tls_server_name"
        )
        assert not pacs.stored
        d, job, _ = attempt(setup, tls_destination(pacs, pki, tls_server_name="pacs.example.org"), again=first)
        assert (d.state, job) == ("done", "done") and len(pacs.stored) == 3
    finally:
        pacs.stop()


def test_mutual_tls_needs_the_client_certificate(setup: Setup, pki: Path) -> None:  # noqa: F811
    pacs = CommitmentPACS(ssl_context=server_context(pki, require_client_cert=True))
    try:
        d, _, first = attempt(setup, tls_destination(pacs, pki))
        assert d.state == "pending" and d.last_error == (
            f"TLS handshake with CPACS@127.0.0.1:{pacs.port} failed: tlsv13 alert certificate required "
            "(the peer requires a client certificate: set tls_cert_file and tls_key_file)"
        )
        assert not pacs.stored
        client = {"tls_cert_file": pki / "node.pem", "tls_key_file": pki / "node.key"}
        d, job, _ = attempt(setup, tls_destination(pacs, pki, **client), again=first)
        assert (d.state, job, d.last_error) == ("done", "done", None) and len(pacs.stored) == 3
    finally:
        pacs.stop()


def test_tls_to_a_peer_that_does_not_speak_it_fails_readably(pki: Path) -> None:
    pacs = CommitmentPACS()  # plain DICOM
    try:
        with pytest.raises(NetworkError, match=r"^TLS handshake with CPACS@127\.0\.0\.1:\d+ failed: "):
            echo(tls_destination(pacs, pki), timeout=5)
    finally:
        pacs.stop()


def test_echo_uses_tls_for_a_tls_destination(pki: Path) -> None:
    pacs = CommitmentPACS(ssl_context=server_context(pki))
    try:
        assert echo(tls_destination(pacs, pki), timeout=5) >= 0
    finally:
        pacs.stop()


def _dest(**kw: object) -> dict[str, object]:
    return {"name": "pacs", "ae_title": "PACS", "host": "pacs.example.org", "port": 2762, **kw}


def test_destination_tls_settings_are_parsed(pki: Path) -> None:
    cfg = parse_config({"destinations": [_dest(
        tls=True, tls_ca_file=str(pki / "ca.pem"), tls_cert_file=str(pki / "node.pem"), tls_key_file=str(pki / "node.key"),
        tls_server_name="pacs.internal",
    )]})
    [d] = cfg.destinations
    assert (d.tls, d.tls_ca_file, d.tls_cert_file, d.tls_key_file, d.tls_server_name) == (
        True, pki / "ca.pem", pki / "node.pem", pki / "node.key", "pacs.internal"
    )
    [plain] = parse_config({"destinations": [_dest()]}).destinations
    assert plain.tls is False and plain.tls_ca_file is None


@pytest.mark.parametrize("settings, message", [
    ({"tls_ca_file": "ca.pem"}, r"destinations\[0\]\.tls_ca_file: set, but destinations\[0\]\.tls is not true"),
    ({"tls": True, "tls_ca_file": "missing.pem"}, r"destinations\[0\]\.tls_ca_file: file .*missing\.pem does not exist"),
    ({"tls": True, "tls_cert_file": "node.pem"}, r"destinations\[0\]\.tls_key_file: required with the other"),
    ({"tls": True, "tls_key_file": "node.key"}, r"destinations\[0\]\.tls_cert_file: required with the other"),
    ({"tls": True, "tls_server_name": ""}, r"destinations\[0\]\.tls_server_name: must be a non-empty string"),
    ({"tls": "yes"}, r"destinations\[0\]\.tls"),
    ({"tls": True, "tls_verify": False}, r"destinations\[0\].*tls_verify"),
])
def test_destination_tls_settings_are_validated(pki: Path, settings: dict[str, object], message: str) -> None:
    resolved = {k: str(pki / str(v)) if k.endswith("_file") else v for k, v in settings.items()}
    with pytest.raises(ConfigError, match=message):
        parse_config({"destinations": [_dest(**resolved)]})


def test_the_listener_does_not_require_client_certificates_without_its_own_ca(pki: Path) -> None:
    tls = {"cert_file": str(pki / "pacs.pem"), "key_file": str(pki / "pacs.key"), "require_client_cert": True}
    with pytest.raises(ConfigError, match=r"^node\.tls\.ca_file: required when require_client_cert is true; without it every public CA"):
        parse_config({"node": {"tls": tls}})
    cfg = parse_config({"node": {"tls": {**tls, "ca_file": str(pki / "ca.pem")}}})
    assert cfg.node.tls is not None and cfg.node.tls.require_client_cert
