"""Result notifications: a JSON webhook and an HL7 v2 ORU^R01 over MLLP, through the notification outbox.

The ORU is parsed with python-hl7 (a reader we did not write); an MLLP
listener in the test answers with an ACK (AA, or AE to refuse); a webhook
receiver records the JSON it gets.  The job's report is a real SR written by
the node's own writer from a fabricated result.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydicom import dcmread
from sqlalchemy import Engine

from dicomnode.config import Config, DeliveryConfig, NodeConfig
from dicomnode.config.notify import Notify, NotifyKind
from dicomnode.notify.hl7 import END, START, escape, oru, send_mllp
from dicomnode.errors import NetworkError
from dicomnode.notify.notifier import Notifier
from dicomnode.notify.summary import JobSummary
from dicomnode.notify.webhook import post
from dicomnode.outputs.writer import OutputOptions, write_outputs
from dicomnode.volume.reconstruct import reconstruct
from storage.database import migrate, open_engine
from storage.notify import notifications_of, queue_new
from storage.queue import OutputRecord, claim_job, end_job, finish_job
from storage.series import complete_series, open_series
from storage.instances import record_instance
from storage.states import JobState
from tests.helpers import rec
from tests.test_outputs import BUNDLE, result_for

FAST = DeliveryConfig(backoff_seconds=0.05, backoff_max_seconds=0.1, max_attempts=2, poll_seconds=0.05)


class MLLPListener:
    """A RIS's MLLP listener: keeps every message, answers AA (or ``code``)."""

    def __init__(self, code: str = "AA", tls: ssl.SSLContext | None = None) -> None:
        self.code, self.messages = code, []  # type: ignore[var-annotated]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.tls = tls
        self.handshake_errors: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.handshake_errors.append(str(exc))
                    conn.close()
                    continue
            with conn:
                buf = b""
                while END not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if END not in buf:
                    continue
                text = buf[1:buf.index(END)].decode()
                self.messages.append(text)
                control = hl7.parse(text).segment("MSH")[10]
                ack = f"MSH|^~\\&|RIS||DICOMNODE||20261130||ACK^R01|A1|P|2.5\rMSA|{self.code}|{control}|" + (
                    "unknown patient" if self.code != "AA" else "") + "\r"
                conn.sendall(START + ack.encode() + END)

    def close(self) -> None:
        self.sock.close()


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    raw: list[tuple[dict[str, str], bytes]] = []  # headers and body as received

    def do_POST(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).raw.append(({k.lower(): v for k, v in self.headers.items()}, data))
        type(self).bodies.append(json.loads(data))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.bodies = []
    _Hook.raw = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/results?source=dicomnode"
    server.shutdown()


@pytest.fixture
def node_db(tmp_path: Path, make_series: Callable[..., list[Path]]) -> Iterator[Callable[..., tuple[Config, Engine, int]]]:
    """A database with one job that ran: its SR and SEG written by the node's writer (one job per call)."""
    engines: list[Engine] = []

    def _make(*targets: Notify, fail: str | None = None) -> tuple[Config, Engine, int]:
        storage = tmp_path / "storage"
        storage.mkdir(exist_ok=True)
        cfg = Config(node=NodeConfig(storage_dir=storage, database_url=f"sqlite:///{storage / 'db.sqlite'}"), notify=targets,
                     delivery=FAST)
        engine = open_engine(cfg.node.database_url)
        migrate(engine)
        engines.append(engine)
        queue_new(engine, [(t.name, t.on) for t in targets])  # the targets are seen before the job ends
        files = make_series("n", slices=20, rows=64, columns=64, patient_name="Müller^Jörg")
        vol = reconstruct(files)
        by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        record_instance(engine, rec("9.1"))
        [s] = open_series(engine)
        job = complete_series(engine, s.id, seen_count=1, seen_last_received_at=s.last_received_at, reason="quiet_period")
        assert job is not None and claim_job(engine, "w", 60) is not None
        if fail:
            assert end_job(engine, job, "w", JobState.FAILED, fail, {})
            return cfg, engine, job
        out = write_outputs([by_uid[u] for u in vol.sop_uids], vol, result_for(vol), BUNDLE, storage / "outputs" / str(job),
                            job_key="1.2.3/1", options=OutputOptions(preview=False, kos=False))
        records = [OutputRecord(o.kind, str(o.path.relative_to(storage)), o.sop_class_uid, o.sop_instance_uid, o.series_instance_uid,
                                o.transfer_syntax_uid) for o in out]
        assert finish_job(engine, job, "w", timings={}, model="chest 1.0", output_dir=str(job), outputs=records, targets=[])
        return cfg, engine, job

    yield _make
    for e in engines:
        e.dispose()


def test_the_oru_is_valid_hl7_that_a_reader_we_did_not_write_parses() -> None:
    s = JobSummary(job=7, event="done", state="done", error=None, model="chest-ct 0.4.0", patient_id="PID-1|2",
                   patient_name="Müller^Jörg", study_instance_uid="1.2.3", accession_number="ACC^9", study_date="20261130",
                   modality="CT", findings=[{"name": "nodule 1", "volume_ml": 0.52, "site": "upper lobe of lung, right"}],
                   summary="1 finding(s): nodule 1 (upper lobe of lung, right) 0.52 mL", intended_use="demonstration; not for diagnosis")
    target = Notify("ris", NotifyKind.HL7, host="h", port=1, receiving_application="RIS", receiving_facility="HOSP")
    msg = hl7.parse(oru(s, target, control_id="C1"))
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(msg.segment("MSH")[12]) == "2.5"
    assert str(msg.segment("MSH")[5]) == "RIS" and str(msg.segment("MSH")[10]) == "C1"
    pid = msg.segment("PID")
    assert str(pid[3]) == escape("PID-1|2") and str(pid[5][0][0]) == "Müller" and str(pid[5][0][1]) == "Jörg"
    obr = msg.segment("OBR")
    assert str(obr[3]) == "ACC\\S\\9" and str(obr[25]) == "F" and str(obr[18]) == "1.2.3"  # the delimiter in the value escaped
    obx = msg.segments("OBX")
    assert [str(o[5]) for o in obx] == ["nodule 1 (upper lobe of lung, right): 0.52 mL", s.summary]
    assert "not for diagnosis" in str(msg.segment("NTE")[3])
    failed = hl7.parse(oru(replace(s, event="failed", findings=[], summary="AI processing failed: x"), target, "C2"))
    assert str(failed.segment("OBR")[25]) == "X" and str(failed.segment("ORC")[5]) == "CA"


def test_a_job_that_ended_is_announced_to_a_webhook_and_a_ris(node_db: Callable[..., tuple[Config, Engine, int]], hook: str) -> None:
    ris = MLLPListener()
    try:
        cfg, engine, job = node_db(Notify("ehr", NotifyKind.WEBHOOK, url=hook), Notify("ris", NotifyKind.HL7, host="127.0.0.1", port=ris.port))
        Notifier(engine, cfg).run_once()
        assert {(n.target, n.state, n.event) for n in notifications_of(engine, job)} == {("ehr", "done", "done"), ("ris", "done", "done")}
        [body] = _Hook.bodies
        assert (body["event"], body["job"], body["patient_name"], body["model"]) == ("job.done", job, "Müller^Jörg", "chest 1.0")
        assert [f["name"] for f in body["findings"]][:2] == ["nodule 1", "nodule 2"] and "2 finding(s): nodule 1" in body["summary"]
        assert set(body["findings"][0]) == {"name", "volume_ml", "site", "probability"}  # None: this model judges no candidates
        assert body["intended_use"] and body["study_instance_uid"]
        [message] = ris.messages
        msg = hl7.parse(message)
        assert str(msg.segment("PID")[3]) == body["patient_id"] and str(msg.segment("OBR")[18]) == body["study_instance_uid"]
        assert len(msg.segments("OBX")) == len(body["findings"]) + 1
        Notifier(engine, cfg).run_once()  # each job is announced once
        assert len(_Hook.bodies) == 1 and len(ris.messages) == 1
    finally:
        ris.close()


def _receiver_accepts(secret: bytes, headers: dict[str, str], body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does with a signed webhook, written here from the documented scheme (not the node's code)."""
    stamp, sent = headers.get("x-dicomnode-timestamp", ""), headers.get("x-dicomnode-signature", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance_s:
        return False
    mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(sent, f"sha256={mac}")


def test_a_signed_webhook_can_be_verified_and_a_forgery_cannot(
    node_db: Callable[..., tuple[Config, Engine, int]], hook: str, tmp_path: Path,
) -> None:
    secret_file = tmp_path / "ehr.secret"
    secret_file.write_text("s3cr3t-shared-with-the-ehr\n")
    cfg, engine, job = node_db(Notify("ehr", NotifyKind.WEBHOOK, url=hook, secret_file=secret_file))
    Notifier(engine, cfg).run_once()
    [(headers, body)] = _Hook.raw
    now = time.time()
    assert _receiver_accepts(b"s3cr3t-shared-with-the-ehr", headers, body, now)
    assert headers["x-dicomnode-delivery"] == f"job-{job}-done"
    assert not _receiver_accepts(b"another secret", headers, body, now)
    assert not _receiver_accepts(b"s3cr3t-shared-with-the-ehr", headers, body.replace(b"done", b"fail"), now)
    assert not _receiver_accepts(b"s3cr3t-shared-with-the-ehr", headers, body, now + 3600), "a replay an hour later"
    # An empty secret file is an error in words (the notifier retries it like any other), and nothing is sent.
    secret_file.write_text("\n")
    summary = JobSummary(job=job, event="done", state="done", error=None, model="m", patient_id="p", patient_name="n",
                         study_instance_uid="1.2", accession_number="", study_date="", modality="CT", findings=[], summary="",
                         intended_use="")
    with pytest.raises(NetworkError, match=r"ehr: its secret file .* is empty, so the webhook cannot be signed"):
        post(Notify("ehr", NotifyKind.WEBHOOK, url=hook, secret_file=secret_file), summary)
    assert len(_Hook.raw) == 1


def test_hl7_over_tls_reaches_a_listener_whose_certificate_is_trusted_and_no_other(tmp_path: Path) -> None:
    """MLLP inside TLS: the ORU arrives when the listener's CA is given, and an untrusted one is refused in words."""
    from tests.test_tls import make_cert

    cert, key = make_cert(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert), str(key))
    ris = MLLPListener(tls=server)
    s = JobSummary(job=3, event="done", state="done", error=None, model="m 1", patient_id="P1", patient_name="A^B",
                   study_instance_uid="1.2.3", accession_number="ACC1", study_date="20261130", modality="CT", findings=[],
                   summary="no finding", intended_use="demonstration; not for diagnosis")
    try:
        trusted = Notify("ris", NotifyKind.HL7, host="127.0.0.1", port=ris.port, tls=True, tls_ca_file=cert)
        ack = send_mllp(trusted, oru(s, trusted, control_id="T1"))
        assert "MSA|AA|T1" in ack
        [message] = ris.messages
        assert str(hl7.parse(message).segment("OBR")[3]) == "ACC1"
        untrusted = replace(trusted, tls_ca_file=None)
        with pytest.raises(NetworkError, match=r"ris: the certificate of 127\.0\.0\.1:\d+ is not trusted .*set tls_ca_file"):
            send_mllp(untrusted, oru(s, untrusted, control_id="T2"))
        plain = replace(trusted, tls=False, tls_ca_file=None)  # a plain MLLP sender at a TLS listener gets no ACK
        with pytest.raises(NetworkError):
            send_mllp(replace(plain, timeout=2.0), oru(s, plain, control_id="T3"))
        assert len(ris.messages) == 1, "neither the untrusted nor the plain attempt delivered anything"
    finally:
        ris.close()


def test_a_failed_job_is_announced_and_a_refusing_ris_is_retried_then_given_up(
    node_db: Callable[..., tuple[Config, Engine, int]], hook: str,
) -> None:
    ris = MLLPListener(code="AE")
    try:
        cfg, engine, job = node_db(Notify("ehr", NotifyKind.WEBHOOK, url=hook, on=("failed",)),
                                   Notify("ris", NotifyKind.HL7, host="127.0.0.1", port=ris.port), fail="the series cannot be reconstructed: gap")
        notifier = Notifier(engine, cfg)
        for _ in range(50):
            notifier.run_once()
            if all(n.state != "pending" for n in notifications_of(engine, job)):
                break
            threading.Event().wait(0.05)  # the backoff (0.05 s) is the only wait
        rows = {n.target: n for n in notifications_of(engine, job)}
        assert rows["ehr"].state == "done" and _Hook.bodies[0]["event"] == "job.failed"
        assert "cannot be reconstructed" in _Hook.bodies[0]["error"]
        assert rows["ris"].state == "failed" and rows["ris"].attempts == 2
        assert "refused the result (AE): unknown patient" in (rows["ris"].last_error or "")
        assert all(str(hl7.parse(m).segment("OBR")[25]) == "X" for m in ris.messages)
    finally:
        ris.close()


def test_a_target_hears_of_jobs_that_end_after_it_was_first_seen_only(node_db: Callable[..., tuple[Config, Engine, int]], hook: str) -> None:
    cfg, engine, job = node_db()  # no target yet: the job ends unannounced
    later = replace(cfg, notify=(Notify("ehr", NotifyKind.WEBHOOK, url=hook),))
    Notifier(engine, later).run_once()
    assert notifications_of(engine, job) == [] and _Hook.bodies == []


def test_an_unreachable_listener_fails_in_words(node_db: Callable[..., tuple[Config, Engine, int]]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again below: nobody listens there
    cfg, engine, job = node_db(Notify("ris", NotifyKind.HL7, host="127.0.0.1", port=port, timeout=1.0))
    Notifier(engine, cfg).run_once()
    [n] = notifications_of(engine, job)
    assert n.state == "pending" and "cannot reach the MLLP listener at 127.0.0.1" in (n.last_error or "")


def test_notify_targets_are_validated(tmp_path: Path) -> None:
    import tomllib

    from dicomnode.config import parse_config
    from dicomnode.errors import ConfigError

    def cfg(body: str) -> Config:
        return parse_config(tomllib.loads(f'[node]\nstorage_dir = "{tmp_path}"\n[[notify]]\nname = "n"\n' + body))

    ok = cfg('kind = "hl7"\nhost = "ris.example.org"\nport = 2575\nreceiving_application = "RIS"\non = ["failed"]\n')
    assert ok.notify[0].kind == "hl7" and ok.notify[0].on == ("failed",) and ok.notify[0].receiving_application == "RIS"
    for body, message in {
        'kind = "email"': "must be webhook or hl7",
        'kind = "hl7"\nhost = "h"': "port: required for an hl7 target",
        'kind = "webhook"\nurl = "ftp://x"': "must be an http:// or https:// URL",
        'kind = "webhook"\nurl = "https://x/hook"\non = ["started"]': "on: a list of done, failed",
        'kind = "webhook"\nurl = "https://x/hook"\nhost = "h"': "unknown key",
        'kind = "webhook"\nurl = "https://x/hook"\ntoken_file = "/nonexistent"': "does not exist",
        'kind = "webhook"\nurl = "https://x/hook"\nsecret_file = "/nonexistent"': "secret_file: file /nonexistent does not exist",
        'kind = "hl7"\nhost = "ris"\nport = 2575\ntls_ca_file = "/etc/hosts"': "tls_ca_file: only with tls = true",
        'kind = "hl7"\nhost = "ris"\nport = 2575\ntls = true\ntls_cert_file = "/etc/hosts"': "tls_cert_file and tls_key_file go together",
        'kind = "hl7"\nhost = "ris"\nport = 2575\ntls = "yes"': "tls",
    }.items():
        with pytest.raises(ConfigError, match=message):
            cfg(body)


def test_a_webhook_that_does_not_answer_times_out_in_words(node_db: Callable[..., tuple[Config, Engine, int]]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        port = silent.getsockname()[1]
        cfg, engine, job = node_db(Notify("ehr", NotifyKind.WEBHOOK, url=f"http://127.0.0.1:{port}/hook", timeout=0.5))
        Notifier(engine, cfg).run_once()
        [n] = notifications_of(engine, job)
    assert n.state == "pending" and n.attempts == 1 and n.last_error == "ehr: the webhook did not answer within 0.5 s"
