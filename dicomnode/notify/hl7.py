"""An HL7 v2.5 ORU^R01 (observation result) for a job's end, sent over MLLP with its ACK checked.

Segments: MSH; PID (patient ID and name, as the source has them); ORC and
OBR (the accession number as filler order number, the study, the result
status: F for a result, X when processing failed); one OBX per finding
(TX: name, site, volume) and a summary OBX; an NTE with the intended-use
warning.  Text is escaped per HL7 (``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``,
``\\E\\``).  MLLP frames the message with 0x0B ... 0x1C 0x0D; the receiver's
ACK must say AA or CA (AE/AR and their text make the attempt fail).
With ``tls = true`` the MLLP stream runs inside TLS 1.2+, the listener's
certificate and host name verified (``tls_ca_file`` adds CAs; a client
certificate for listeners that ask for one).
"""

from __future__ import annotations

import socket
import ssl
from datetime import datetime, timezone

from dicomnode.config.notify import Notify
from dicomnode.errors import NetworkError
from dicomnode.net.webpeer import tls_context
from dicomnode.notify.summary import JobSummary

START, END = b"\x0b", b"\x1c\x0d"
MAX_ACK = 1 << 16


def escape(text: str) -> str:
    """HL7 v2 escaping of the delimiters ``|^~\\&`` and line breaks."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("~", "\\R\\").replace("&", "\\T\\")
    return " ".join(out.split())


def _name(dicom_name: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``) as an HL7 XPN, its components kept."""
    return "^".join(escape(part) for part in dicom_name.split("^")[:5])


def oru(s: JobSummary, target: Notify, control_id: str, now: datetime | None = None) -> str:
    """The ORU^R01 message of a job's end, segments separated by carriage returns."""
    ts = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    status = "X" if s.event == "failed" else "F"
    service = "^".join(("AI", escape(s.model or "dicomnode"), "L"))
    segments = [
        "|".join(["MSH", "^~\\&", escape(target.sending_application), escape(target.sending_facility),
                  escape(target.receiving_application), escape(target.receiving_facility), ts, "", "ORU^R01^ORU_R01",
                  control_id, "P", "2.5"]),
        "|".join(["PID", "1", "", escape(s.patient_id), "", _name(s.patient_name)]),
        "|".join(["ORC", "RE", "", escape(s.accession_number), "", "CM" if status == "F" else "CA"]),
        "|".join(["OBR", "1", "", escape(s.accession_number), service, "", "", escape(s.study_date), "", "", "", "", "", "",
                  "", "", "", "", escape(s.study_instance_uid), "", "", "", ts, "", escape(s.modality), status]),
    ]
    obx = 0
    for f in s.findings:
        obx += 1
        text = f["name"] + (f" ({f['site']})" if f.get("site") else "") + (f": {f['volume_ml']:.2f} mL" if f.get("volume_ml") is not None else "")
        segments.append("|".join(["OBX", str(obx), "TX", "FINDING^AI finding^L", str(obx), escape(text), "", "", "", "", "", status]))
    obx += 1
    segments.append("|".join(["OBX", str(obx), "TX", "SUMMARY^AI result summary^L", "", escape(s.summary), "", "", "", "", "", status]))
    warning = s.intended_use or "AI result; not for diagnosis"
    segments.append("|".join(["NTE", "1", "L", escape(f"Intended use: {warning}. Job {s.job} of dicomnode.")]))
    return "\r".join(segments) + "\r"


def _connect(target: Notify) -> socket.socket:
    """A connection to the target's MLLP listener: plain TCP, or TLS 1.2+ with its certificate and name verified."""
    assert target.host is not None and target.port is not None
    sock = socket.create_connection((target.host, target.port), timeout=target.timeout)
    if not target.tls:
        return sock
    try:
        ctx = tls_context(target.tls_ca_file)
        if target.tls_cert_file is not None and target.tls_key_file is not None:
            ctx.load_cert_chain(str(target.tls_cert_file), str(target.tls_key_file))
        return ctx.wrap_socket(sock, server_hostname=target.host)
    except BaseException:
        sock.close()
        raise


def send_mllp(target: Notify, message: str) -> str:
    """Send one message over MLLP and return the receiver's ACK.

    Raises
    ------
    NetworkError
        No connection, no or a malformed ACK, or an ACK that refuses (AE, AR).
    """
    assert target.host is not None and target.port is not None
    where = f"{target.host}:{target.port}"
    try:
        with _connect(target) as sock:
            sock.sendall(START + message.encode("utf-8") + END)
            buf = b""
            while END not in buf and len(buf) < MAX_ACK:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
    except ssl.SSLCertVerificationError as exc:
        raise NetworkError(f"{target.name}: the certificate of {where} is not trusted ({exc.verify_message}); "
                           "set tls_ca_file to its CA") from exc
    except ssl.SSLError as exc:
        raise NetworkError(f"{target.name}: TLS with {where} failed: {exc.reason or exc}") from exc
    except TimeoutError as exc:
        raise NetworkError(f"{target.name}: no ACK from {where} within {target.timeout:g} s") from exc
    except OSError as exc:
        raise NetworkError(f"{target.name}: cannot reach the MLLP listener at {where}: {exc.strerror or exc}") from exc
    if not buf.startswith(START) or END not in buf:
        raise NetworkError(f"{target.name}: {where} did not answer with an MLLP-framed ACK")
    ack = buf[1:buf.index(END)].decode("utf-8", "replace")
    msa = next((seg.split("|") for seg in ack.split("\r") if seg.startswith("MSA|")), None)
    if msa is None or len(msa) < 2:
        raise NetworkError(f"{target.name}: the ACK from {where} has no MSA segment")
    if msa[1] not in ("AA", "CA"):
        text = msa[3] if len(msa) > 3 else ""
        raise NetworkError(f"{target.name}: {where} refused the result ({msa[1]})" + (f": {text[:200]}" if text else ""))
    return ack
