"""The DICOM listener: a pynetdicom Storage and Verification SCP.

Each association runs in its own thread.  A C-STORE is answered only after
:class:`~dicomnode.net.handlers.StoreHandler` (the node's
:class:`~dicomnode.receive.ingest.Ingestor`) has written the file durably and
committed its row; every failure becomes a DICOM status with an
ErrorComment, never a crashed association.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import, unknown to the stubs
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.audit import audit
from dicomnode.config import NodeConfig, TLSConfig
from dicomnode.errors import NetworkError
from dicomnode.net.fastpath import accelerate
from dicomnode.net.guard import PeerLimits, guard_association, guard_socket, oversize
from dicomnode.net.tls import handshake, subject_allows, subject_of
from dicomnode.net.handlers import StoreHandler, StoreResult
from dicomnode.metrics import Metrics
from dicomnode.dicom.sopclasses import storage_contexts
from dicomnode.dicom.status import (
    NO_SUCH_SOP_INSTANCE, PROCESSING_FAILURE, REFUSED_OUT_OF_RESOURCES, STORAGE_COMMITMENT_PUSH, SUCCESS, describe, is_success,
)

logger = logging.getLogger(__name__)

_STATS = "_dicomnode_stats"



@dataclass
class AssociationStats:
    """Counters of one association, for its summary log line and the completion hint."""

    uid: str
    calling_ae: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    # series id -> SOP instance UIDs this association stored or re-sent
    carried: dict[int, set[str]] = field(default_factory=dict)


class Connections:
    """The connections each address holds, from accept until their association thread ends.

    Counting threads alone missed a connection between accept and the start
    of its thread (and counted it twice just after); counting events alone
    would leak a slot whenever pynetdicom skipped one.  Each accepted
    connection is an entry, bound to its association when it opens and
    dropped once that association's thread has ended (checked whenever an
    address is counted), or when it never became an association.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int], Association | None] = {}

    @staticmethod
    def _key(address: Any) -> tuple[str, int]:
        return (str(address[0]), int(address[1])) if isinstance(address, tuple) else (str(address), 0)

    def admit(self, address: Any, limit: int) -> int | None:
        """Record a new connection; ``None`` when admitted, else how many ``address`` already holds."""
        key = self._key(address)
        with self._lock:
            for k, assoc in list(self._entries.items()):
                if assoc is not None and assoc.ident is not None and not assoc.is_alive():
                    del self._entries[k]  # its association thread has ended
            held = sum(1 for k in self._entries if k[0] == key[0])
            if held >= limit:
                return held
            self._entries[key] = None
        return None

    def opened(self, assoc: Association) -> None:
        """Bind a connection to its association (before the association's thread starts)."""
        key = self._key((assoc.requestor.address, assoc.requestor.port))
        with self._lock:
            if key in self._entries:
                self._entries[key] = assoc

    def settle(self, address: Any) -> None:
        """After the connection's handler ran: drop it when it never became an association (a failed TLS handshake)."""
        key = self._key(address)
        with self._lock:
            if key in self._entries and self._entries[key] is None:
                del self._entries[key]


def make_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """Server-side TLS context from the ``[node.tls]`` section."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(cafile=tls.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


class StorageSCP:
    """The node's listener.

    Parameters
    ----------
    cfg : NodeConfig
        AE title, port, limits, allow-lists and TLS.
    handler : StoreHandler
        Where received datasets go (the node's ingestor).
    on_released : callable, optional
        Called with ``(assoc_uid, {series_id: instances carried}, instances refused)``
        when an association that stored instances is released normally.
    on_aborted : callable, optional
        Called with ``(assoc_uid, {series_id: instances carried})`` when such
        an association is aborted (its series may be missing instances).
    on_commitment : callable, optional
        Called with ``(event_type, dataset, calling_ae=..., address=...)`` for a
        Storage Commitment N-EVENT-REPORT that a PACS sends on a new association;
        returns the status to answer.  Without it, such reports are refused.
    metrics : Metrics, optional
        Counts stored and refused instances per calling AE.
    """

    def __init__(
        self, cfg: NodeConfig, handler: StoreHandler, on_released: Any = None, on_commitment: Any = None, metrics: Metrics | None = None,
        on_aborted: Any = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.handler = handler
        self.on_released = on_released
        self.on_aborted = on_aborted
        self.on_commitment = on_commitment
        # Stats live on the Association object itself (attribute _STATS): keying a
        # dict by id() broke when a closed association's id was reused by a new one.
        self._lock = threading.Lock()
        self._networks = [ipaddress.ip_network(h, strict=False) for h in cfg.allowed_hosts]
        self.limits = PeerLimits(
            max_pdu=cfg.max_pdu_size, pdu_seconds=cfg.pdu_seconds, max_instance=cfg.max_instance_mb << 20,
            on_violation=self._count_violation,
        )
        self.ssl_context = make_ssl_context(cfg.tls) if cfg.tls else None
        self.connections = Connections()
        self.server: ThreadedAssociationServer | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.cfg.ae_title)
        ae.supported_contexts = storage_contexts()
        ae.add_supported_context(Verification)
        # A PACS sends Storage Commitment reports as the SCP role (PS3.4 J.3.3).
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        ae.maximum_pdu_size = self.cfg.max_pdu_size
        ae.maximum_associations = self.cfg.max_associations
        ae.network_timeout = self.cfg.network_timeout
        ae.acse_timeout = 30
        ae.dimse_timeout = self.cfg.network_timeout
        ae.require_called_aet = self.cfg.require_called_ae
        ae.require_calling_aet = list(self.cfg.allowed_calling_aes)
        return ae

    # -- life cycle --------------------------------------------------------
    def start(self) -> int:
        """Start listening in background threads.

        Returns
        -------
        int
            The bound port (useful when the configured port is 0).

        Raises
        ------
        NetworkError
            The port cannot be bound.
        """
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_N_EVENT_REPORT, self._on_event_report),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_OPEN, self._on_opened),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        ssl_ctx = self.ssl_context
        try:
            # No ssl_context for pynetdicom: it would do every TLS handshake in its one
            # accept thread, where a single idle connection blocks all others.
            server = self.ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise NetworkError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror or exc}"
            ) from exc
        assert isinstance(server, ThreadedAssociationServer)
        server.verify_request = self._verify_request  # type: ignore[method-assign]  # socketserver's documented hook
        server.finish_request = self._finish_request  # type: ignore[method-assign]  # runs in the connection's thread
        self.server = server
        port = int(server.server_address[1])
        logger.info(
            "listening as %s on %s:%d%s (max %d associations, max PDU %d)",
            self.cfg.ae_title,
            self.cfg.host,
            port,
            " with TLS" if ssl_ctx else "",
            self.cfg.max_associations,
            self.cfg.max_pdu_size,
        )
        if _is_wildcard(self.cfg.host) and not self._networks and not self.cfg.allowed_calling_aes:
            logger.warning(
                "the listener accepts any host and any calling AE title on %s: set node.allowed_hosts "
                "and/or node.allowed_calling_aes (or bind node.host to an internal interface)", self.cfg.host,
            )
        return port

    @property
    def port(self) -> int:
        """The bound port."""
        if self.server is None:
            raise NetworkError("the listener is not started")
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop accepting and close the listener; running associations are aborted."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    # -- connection and association events ---------------------------------
    def _count_violation(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.peer_violations.labels(kind).inc()

    def _verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self._networks:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                addr = None
            if addr is None or not any(addr in net for net in self._networks):
                logger.warning("connection from %s refused: not in node.allowed_hosts", host)
                return False
        held = self.connections.admit(client_address, self.cfg.max_connections_per_host)
        if held is not None:
            logger.warning(
                "connection from %s refused: it already holds %d connection(s) (node.max_connections_per_host)", host, held
            )
            self._count_violation("too_many_connections")
            return False
        try:
            # Our C-STORE responses are small writes; without TCP_NODELAY, Nagle's
            # algorithm and the peer's delayed ACK stall every round trip.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return True

    def _finish_request(self, request: Any, client_address: Any) -> None:
        """socketserver's ``finish_request``, in the connection's own thread: TLS handshake (bounded), then pynetdicom.

        The connection counts for its address from accept until its
        association thread ends (:class:`Connections`).
        """
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        try:
            if self.ssl_context is not None and self.cfg.tls is not None:
                tls = handshake(request, host, self.ssl_context, self.cfg.tls.handshake_seconds)
                if tls is None:
                    self._count_violation("tls_handshake")
                    return
                request = tls
            server = self.server
            if server is None:  # stopped meanwhile
                request.close()
                return
            server.RequestHandlerClass(request, client_address, server)
        finally:
            self.connections.settle(client_address)

    def _on_opened(self, event: evt.Event) -> None:
        self.connections.opened(event.assoc)
        # Before the association request is read: from now on every read is bounded.
        if not guard_socket(event.assoc, self.limits):
            logger.warning("cannot bound reads on a connection from %s: it runs with pynetdicom's own reads",
                           event.assoc.requestor.address)

    def _tls_subject_refused(self, assoc: Association, calling_ae: str) -> bool:
        """Whether the client certificate may not call as ``calling_ae`` (``node.tls.allowed_subjects``)."""
        tls = self.cfg.tls
        if tls is None or not tls.allowed_subjects:
            return False
        subject = subject_of(getattr(assoc.dul.socket, "socket", None))
        if subject_allows(tls.allowed_subjects, subject, calling_ae):
            return False
        logger.warning(
            "association from %s@%s aborted: its certificate (%s) may not call as %s (node.tls.allowed_subjects)",
            calling_ae, assoc.requestor.address, subject or "no subject", calling_ae,
        )
        audit("association", how="refused", calling_ae=calling_ae, peer=str(assoc.requestor.address),
              reason="certificate subject not allowed for this calling AE", subject=subject)
        return True

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        guard_association(assoc, self.limits)
        if self._tls_subject_refused(assoc, assoc.requestor.ae_title.strip()):
            assoc.abort()
            return
        accelerate(assoc)  # see dicomnode.net.fastpath: about 1.5x faster receive of 512x512 slices
        stats = AssociationStats(
            uid=str(uuid.uuid4()),
            calling_ae=assoc.requestor.ae_title.strip(),
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
        )
        with self._lock:
            setattr(assoc, _STATS, stats)
        logger.info("association %s accepted from %s@%s", stats.uid[:8], stats.calling_ae, stats.peer)

    def _on_rejected(self, event: evt.Event) -> None:
        rq = event.assoc.requestor
        logger.warning(
            "association from %s@%s:%s to %s rejected (calling AE not allowed, called AE wrong, "
            "or too many associations)",
            rq.ae_title.strip(),
            rq.address,
            rq.port,
            event.assoc.acceptor.ae_title.strip(),
        )

    def _stats(self, assoc: Association) -> AssociationStats:
        with self._lock:
            stats = getattr(assoc, _STATS, None)
            if stats is None:  # should not happen; keep going rather than fail the store
                stats = AssociationStats(str(uuid.uuid4()), assoc.requestor.ae_title.strip(), "?")
                setattr(assoc, _STATS, stats)
            return stats

    def _summary(self, stats: AssociationStats, how: str) -> None:
        logger.info(
            "association %s from %s %s after %.1f s: %d stored, %d duplicate, %d refused",
            stats.uid[:8],
            stats.calling_ae,
            how,
            time.monotonic() - stats.started,
            stats.stored,
            stats.duplicates,
            stats.failed,
        )
        audit(
            "association", how=how, calling_ae=stats.calling_ae, peer=stats.peer, stored=stats.stored,
            duplicates=stats.duplicates, refused=stats.failed, series=sorted(stats.carried),
        )

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            stats = event.assoc.__dict__.pop(_STATS, None)
        if stats is None:
            return
        self._summary(stats, "released")
        if stats.carried and self.on_released is not None:
            self.on_released(stats.uid, {sid: len(sops) for sid, sops in stats.carried.items()}, stats.failed)

    def _on_aborted(self, event: evt.Event) -> None:
        with self._lock:
            stats = event.assoc.__dict__.pop(_STATS, None)
        if stats is not None:
            self._summary(stats, "aborted")
            if stats.carried and self.on_aborted is not None:
                self.on_aborted(stats.uid, {sid: len(sops) for sid, sops in stats.carried.items()})

    def _on_closed(self, event: evt.Event) -> None:
        # The TCP close can be seen before the reactor thread reports the release
        # (the peer hangs up as soon as it has our A-RELEASE-RP), so the stats
        # stay for EVT_RELEASED / EVT_ABORTED, which pynetdicom always sends after.
        logger.debug("connection of association closed")

    # -- DIMSE services ----------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        if self.on_commitment is None:
            return NO_SUCH_SOP_INSTANCE, None
        rq = event.assoc.requestor  # the reporter: the hook accepts reports only from the destination
        try:
            status = self.on_commitment(
                int(event.event_type or 0), event.event_information, calling_ae=rq.ae_title.strip(), address=str(rq.address)
            )
        except Exception:  # never crash the association: answer with a failure status
            logger.exception("cannot process a Storage Commitment report")
            return PROCESSING_FAILURE, None
        return int(status), None

    def _on_store(self, event: evt.Event) -> int | Dataset:
        stats = self._stats(event.assoc)
        try:
            request = event.request
            if not isinstance(request, C_STORE) or request.DataSet is None:
                return PROCESSING_FAILURE
            too_big = oversize(request.DataSet)
            if too_big is not None:
                self._count_violation("instance_too_large")
                result = StoreResult(
                    REFUSED_OUT_OF_RESOURCES,
                    reason=f"instance of {too_big.received / 2**20:.0f} MB exceeds the node's limit of "
                    f"{too_big.limit >> 20} MB (node.max_instance_mb)",
                )
            else:
                # The dataset exactly as received, without a copy: one instance is held once.
                with request.DataSet.getbuffer() as data:
                    result = self.handler.store(
                        data,
                        event.context.transfer_syntax,
                        assoc_uid=stats.uid,
                        calling_ae=stats.calling_ae,
                        affected_sop_class=request.AffectedSOPClassUID,
                        affected_sop_instance=request.AffectedSOPInstanceUID,
                    )
        except Exception:  # never let an exception reach pynetdicom
            logger.exception("C-STORE handler failed")
            return PROCESSING_FAILURE
        if is_success(result.status):
            if result.duplicate:
                stats.duplicates += 1
            else:
                stats.stored += 1
            if result.series_id is not None and result.sop_uid is not None:
                stats.carried.setdefault(result.series_id, set()).add(result.sop_uid)
            if self.metrics is not None:
                self.metrics.instances.labels(self.metrics.ae(stats.calling_ae)).inc()
            return result.status
        stats.failed += 1
        if self.metrics is not None:
            self.metrics.refused.labels(self.metrics.ae(stats.calling_ae)).inc()
        logger.warning(
            "C-STORE from %s refused with %s: %s", stats.calling_ae, describe(result.status), result.reason
        )
        rsp = Dataset()
        rsp.Status = result.status
        rsp.ErrorComment = (result.reason or describe(result.status))[:64]
        return rsp


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")
