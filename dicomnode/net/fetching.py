"""Fetching a study from a ``[[sources]]`` PACS: by C-MOVE to the node's own AE, or by C-GET or WADO-RS stored through its listener.

Shared by ``dicomnode fetch`` and the status page's "fetch a study" form.
What arrives is stored, completed, selected and processed as if pushed.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from dicomnode.config import Config
from dicomnode.config.peers import Destination
from dicomnode.config.sources import Retrieve, Source
from dicomnode.errors import NetworkError
from dicomnode.net import retrieve as dimse
from dicomnode.net import wado
from dicomnode.net.retrieve import MoveOutcome, StudyMatch

logger = logging.getLogger(__name__)


def _web(source: Source) -> bool:
    """Whether the source is searched by QIDO-RS and read by WADO-RS (else C-FIND, then C-MOVE or C-GET)."""
    return source.retrieve == Retrieve.WADO_RS


def own_listener(cfg: Config) -> Destination:
    """The node's own listener as a C-STORE destination, over TLS when it requires TLS.

    Over TLS the listener's own certificate is the one trusted (pinned,
    whatever host names it carries), and when the listener asks for client
    certificates the node presents that same certificate: its ``ca_file``
    must then trust it, and with ``allowed_subjects`` its subject must be
    allowed the sources' AE titles.
    """
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.node.host, cfg.node.host)
    tls = cfg.node.tls
    if tls is None:
        return Destination("node", cfg.node.ae_title, host, cfg.node.port)
    mutual = tls.require_client_cert
    return Destination("node", cfg.node.ae_title, host, cfg.node.port, tls=True, tls_ca_file=tls.cert_file, tls_pinned=True,
                       tls_cert_file=tls.cert_file if mutual else None, tls_key_file=tls.key_file if mutual else None)


def holds_study(cfg: Config, source: Source, study: str, timeout: float = 30.0) -> bool:
    """Whether the source finds the study (C-FIND or QIDO-RS)."""
    if _web(source):
        return wado.has_study(source, study, timeout)
    return bool(dimse.find(source, "STUDY", {"StudyInstanceUID": study}, calling_ae=cfg.node.ae_title, timeout=timeout))


def list_studies(cfg: Config, source: Source, *, since: str, until: str, modality: str | None, timeout: float = 30.0) -> list[StudyMatch]:
    """The source's studies of a date range (and modality), oldest first."""
    if _web(source):
        return wado.find_studies(source, since=since, until=until, modality=modality, timeout=timeout)
    return dimse.find_studies(source, since=since, until=until, modality=modality, calling_ae=cfg.node.ae_title, timeout=timeout)


def fetch_study(
    cfg: Config, source: Source, study: str, *, series: Sequence[str] = (), modality: str | None = None,
    body_part: str | None = None, timeout: float = 30.0,
) -> tuple[MoveOutcome, int] | None:
    """Have a study (its ``series``, or those of ``modality`` and ``body_part``) stored in the node.

    Returns
    -------
    (MoveOutcome, int) or None
        What was sent and how many series were asked for (0: the whole
        study); ``None`` when no series of the study matches the filters.

    Raises
    ------
    NetworkError
        The source refused, failed or cut the transfer (in words).
    """
    web = _web(source)
    chosen = list(series)
    if not chosen and (modality or body_part):
        matches = (wado.find_series(source, study, modality=modality, body_part=body_part, timeout=timeout) if web else
                   dimse.find_series(source, study, modality=modality, body_part=body_part, calling_ae=cfg.node.ae_title, timeout=timeout))
        if not matches:
            return None
        chosen = [m.series_uid for m in matches]
    me = cfg.node.ae_title
    if web:
        def by_wado(keep: Callable[[bytes], bool]) -> tuple[int, int]:
            got = wado.retrieve(source, study, chosen, keep, max_part=cfg.node.max_instance_mb << 20, timeout=max(timeout, 60.0))
            if not got.complete:
                raise NetworkError(
                    f"{source.name}: the WADO-RS stream was cut short after {got.received} instance(s); nothing of the study "
                    "was stored (run fetch again)"
                )
            return got.refused, 0

        return store_through_listener(cfg, source, by_wado, timeout), len(chosen)
    if source.retrieve == Retrieve.C_GET:
        def by_get(keep: Callable[[bytes], bool]) -> tuple[int, int]:
            got = dimse.get(source, study, chosen, keep, calling_ae=me, timeout=max(timeout, 600.0))
            return 0, got.failed

        return store_through_listener(cfg, source, by_get, timeout), len(chosen)
    return dimse.move(source, study, chosen, destination_ae=me, calling_ae=me, timeout=max(timeout, 600.0)), len(chosen)


def store_through_listener(
    cfg: Config, source: Source, download: Callable[[Callable[[bytes], bool]], tuple[int, int]], timeout: float,
) -> MoveOutcome:
    """Download a study (WADO-RS or C-GET) into a private temporary folder, then store it through the node's own listener.

    ``download(keep)`` hands every instance to ``keep`` and returns how many
    it refused and how many the source failed to send; it raises when the
    transfer broke off, and then nothing is stored (a series missing
    instances must not be processed as if complete).  The instances go to the
    node by C-STORE with the source's calling AE title, so they are stored and
    processed as if pushed; the temporary copies are removed.
    """
    from dicomnode.net.scu import iter_dicom_files, send_files

    node = own_listener(cfg)
    cfg.node.storage_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dicomnode-fetch-", dir=cfg.node.storage_dir) as tmp:
        files: list[Path] = []

        def keep(data: bytes) -> bool:
            path = Path(tmp) / f"{len(files):06d}.dcm"
            path.write_bytes(data)
            files.append(path)
            return True

        refused, not_sent = download(keep)
        report = send_files(list(iter_dicom_files(files)), node, calling_ae=source.ae_title, timeout=max(timeout, 60.0))
    failed = len(report.failed) + refused + not_sent + (len(files) - report.sent - len(report.failed))
    return MoveOutcome(report.sent, failed, 0)
