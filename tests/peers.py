"""Real DICOM peers for tests: dcmtk storescp, Orthanc, and a pynetdicom PACS with Storage Commitment."""

from __future__ import annotations

import base64
import copy
import json
import socket
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.dicom.sopclasses import storage_contexts
from dicomnode.dicom.status import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH, SUCCESS
from tests.helpers import dcmtk_env, require_tool, wait_for


def free_port() -> int:
    """A port the OS just handed out, for peers that cannot bind port 0 themselves (dcmtk, Orthanc)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo_ok(ae: str, port: int) -> bool:
    exe = require_tool("echoscu")
    return subprocess.run([exe, "-aec", ae, "127.0.0.1", str(port)], capture_output=True, env=dcmtk_env()).returncode == 0


class StoreSCP:
    """dcmtk's ``storescp`` writing everything it receives into ``folder``.

    Every received object gets its own file (``+uf``), so a duplicate
    delivery shows up as an extra file instead of overwriting the first.
    """

    def __init__(self, folder: Path, ae: str = "PACS", port: int | None = None) -> None:
        self.folder, self.ae, self.port = folder, ae, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> StoreSCP:
        exe = require_tool("storescp")
        self.proc = subprocess.Popen(
            [exe, "-aet", self.ae, "+xa", "+uf", "-od", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env(),
        )
        wait_for(lambda: echo_ok(self.ae, self.port), 20, what="storescp to listen")
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def by_sop_class(self) -> dict[str, Path]:
        """SOP class -> a file received (a file storescp is still writing is not counted yet)."""
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        out: dict[str, Path] = {}
        for p in self.files():
            try:
                out[str(dcmread(p, stop_before_pixels=True).SOPClassUID)] = p
            except (InvalidDicomError, EOFError, OSError, AttributeError, ValueError):
                continue
        return out

    def sop_classes(self) -> set[str]:
        """The SOP classes received so far (see :meth:`by_sop_class`)."""
        return set(self.by_sop_class())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Orthanc:
    """Orthanc from Debian's package, on loopback ports, with a REST API to check what it holds."""

    def __init__(
        self, folder: Path, ae: str = "ORTHANC", *, dicomweb: bool = False, user: tuple[str, str] | None = None,
        any_mover: bool = False,
    ) -> None:
        """``dicomweb``: with Debian's DICOMweb plugin at ``/dicom-web``; ``user``: HTTP Basic (name, password) required;
        ``any_mover``: accept C-FIND and C-MOVE from any AE (by default only from its known modalities)."""
        self.folder, self.ae = folder, ae
        self.port, self.http = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dicomweb, self.user, self.any_mover = dicomweb, user, any_mover

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http}/dicom-web"

    def start(self) -> Orthanc:
        exe = require_tool("Orthanc")
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "orthanc.json"
        plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
        if self.dicomweb and not plugin.exists():
            require_tool("libOrthancDicomWeb.so")  # skips locally, fails in CI: scripts/install.sh installs orthanc-dicomweb
        cfg.write_text(json.dumps({
            "Name": "test-pacs", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "DicomAet": self.ae, "DicomPort": self.port, "HttpPort": self.http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.user is not None, "DicomCheckCalledAet": False, "HttpServerEnabled": True,
            "Plugins": [str(plugin)] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            **({"RegisteredUsers": {self.user[0]: self.user[1]}} if self.user else {}),
            "DicomAlwaysAllowStore": True, "UnknownSopClassAccepted": True, "DicomAlwaysAllowMove": self.any_mover,
            "DicomAlwaysAllowFind": self.any_mover,
        }))
        self.proc = subprocess.Popen([exe, str(cfg)], stdout=subprocess.DEVNULL, stderr=open(self.folder / "orthanc.log", "wb"), env=dcmtk_env())
        wait_for(lambda: self._alive() or self.proc.poll() is not None, 60, what="Orthanc to start")  # type: ignore[union-attr]
        assert self.proc.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return echo_ok(self.ae, self.port)
        except OSError:
            return False

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}")
        if self.user is not None:
            token = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        """A REST POST (e.g. ``/dicom-web/servers/NAME/stow``)."""
        return self.put(path, body, method="POST")

    def put(self, path: str, body: Any, method: str = "PUT") -> Any:
        """A REST PUT (e.g. ``/modalities/NAME`` to make a move destination known)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=json.dumps(body).encode(), method=method)
        if self.user is not None:
            token = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            return json.loads(data) if data.strip() else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def send_commitment_report(
    node: tuple[str, int, str], report: Dataset, event_type: int, *, calling_ae: str,
    bind_address: str | None = None, ssl_context: ssl.SSLContext | None = None,
) -> int | None:
    """Send a Storage Commitment N-EVENT-REPORT to ``node`` ((host, port, AE)) on a new association.

    Any calling AE title, from any local address (``bind_address``, e.g.
    127.0.0.2): a genuine PACS, or one that forges reports.  Returns the
    status the node answered, or ``None`` when there was no association or answer.
    """
    host, port, ae = node
    requester = AE(ae_title=calling_ae)
    requester.add_requested_context(STORAGE_COMMITMENT_PUSH)
    requester.acse_timeout = requester.dimse_timeout = requester.network_timeout = 10
    role = build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)
    assoc = requester.associate(
        host, port, ae_title=ae, ext_neg=[role], bind_address=(bind_address, 0) if bind_address else None,
        tls_args=(ssl_context, host) if ssl_context else None,
    )
    if not assoc.is_established:
        return None
    try:
        status, _ = assoc.send_n_event_report(report, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
    finally:
        if assoc.is_established:
            assoc.release()
    return int(status.Status) if status and "Status" in status else None


def commitment_report(
    request: Dataset, *, committed: list[Dataset] | None = None, failed: list[Dataset] | None = None,
) -> Dataset:
    """A report on ``request`` (an N-ACTION's information): its transaction UID and the given lists.

    Without lists, every object of the request is committed.
    """
    report = Dataset()
    report.TransactionUID = request.TransactionUID
    report.ReferencedSOPSequence = [copy.deepcopy(i) for i in request.ReferencedSOPSequence] if committed is None else committed
    if failed:
        report.FailedSOPSequence = failed
    return report


class CommitmentPACS:
    """A pynetdicom PACS that stores C-STOREs in memory and answers Storage Commitment.

    ``report`` says how it answers an N-ACTION: on the same association
    (``"same"``), on a new association to ``reply_to`` (``"new"``), or never.
    ``tamper`` may rewrite the report (and its event type) before it goes out;
    ``answers`` collects the node's statuses to the reports it sent.  Every
    N-ACTION request is kept in ``requests``.  With ``ssl_context`` it serves
    DICOM over TLS only.  With ``store_status`` it refuses every C-STORE with that status (and a comment naming the instance by UID).
    """

    def __init__(
        self, report: str = "same", ae: str = "CPACS", fail: set[str] | None = None,
        tamper: Callable[[Dataset, int], tuple[Dataset, int]] | None = None, ssl_context: ssl.SSLContext | None = None,
        store_status: int = SUCCESS,
    ) -> None:
        self.report, self.ae_title, self.fail, self.tamper = report, ae, fail or set(), tamper
        self.store_status = store_status
        self.stored: dict[str, Dataset] = {}
        self.requests: list[Dataset] = []
        self.answers: list[int | None] = []
        self.reply_to: tuple[str, int, str] | None = None  # (host, port, AE) of the node
        ae_ = AE(ae_title=ae)
        ae_.supported_contexts = storage_contexts()
        ae_.add_supported_context(Verification)
        ae_.add_supported_context(STORAGE_COMMITMENT_PUSH)
        self._ae = ae_
        self.server = ae_.start_server(
            ("127.0.0.1", 0), block=False, ssl_context=ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action)],
        )
        self.port = int(self.server.server_address[1])

    @property
    def actions(self) -> int:
        """How many Storage Commitment requests it received."""
        return len(self.requests)

    def _on_store(self, event: Any) -> int | Dataset:
        if self.store_status != SUCCESS:
            rsp = Dataset()
            rsp.Status, rsp.ErrorComment = self.store_status, f"no room for {event.request.AffectedSOPInstanceUID}"[:64]
            return rsp
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.stored[str(ds.SOPInstanceUID)] = ds
        return SUCCESS

    def _on_action(self, event: Any) -> tuple[int, Dataset | None]:
        req = event.action_information
        self.requests.append(copy.deepcopy(req))
        ok, failed = [], []
        for item in req.ReferencedSOPSequence:
            uid = str(item.ReferencedSOPInstanceUID)
            (failed if uid in self.fail or uid not in self.stored else ok).append(item)
        for item in failed:
            item.FailureReason = 0x0110
        report = commitment_report(req, committed=ok, failed=failed)
        event_type = 2 if failed else 1
        if self.tamper is not None:
            report, event_type = self.tamper(report, event_type)
        if self.report == "same":
            assoc = event.assoc

            def same() -> None:
                status, _ = assoc.send_n_event_report(report, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
                self.answers.append(int(status.Status) if status and "Status" in status else None)

            threading.Thread(target=same, daemon=True).start()
        elif self.report == "new":
            threading.Thread(target=self._report_later, args=(report, event_type), daemon=True).start()
        return SUCCESS, None

    def _report_later(self, report: Dataset, event_type: int) -> None:
        assert self.reply_to is not None
        self.answers.append(send_commitment_report(self.reply_to, report, event_type, calling_ae=self.ae_title))

    def stop(self) -> None:
        self.server.shutdown()
