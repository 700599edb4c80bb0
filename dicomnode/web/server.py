"""Uvicorn in a background thread, on a socket bound up front (so port 0 works), optionally over TLS."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from dicomnode.config import WebTLSConfig
from dicomnode.errors import ConfigError

MAX_CONCURRENT_CONNECTIONS = 64  # beyond this uvicorn answers 503 instead of queuing without bound


def server_context(tls: WebTLSConfig) -> ssl.SSLContext:
    """A server TLS context of TLS 1.2 or later from ``[web.tls]``; :class:`ConfigError` if the files do not load."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"web.tls: cannot load {tls.cert_file} with {tls.key_file}: {exc}") from exc
    return ctx


class WebServer:
    """Serve an ASGI application from a background thread.

    Parameters
    ----------
    app : ASGI application
        What to serve (the :class:`~dicomnode.web.guard.Guard` of the node).
    host, port : str, int
        Where to listen; port 0 lets the OS choose (see :attr:`port`).
    tls : WebTLSConfig, optional
        Serve HTTPS with this certificate and key.
    """

    def __init__(self, app: Any, host: str, port: int, tls: WebTLSConfig | None = None) -> None:
        import uvicorn

        context = server_context(tls) if tls is not None else None
        self.scheme = "https" if context is not None else "http"
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)  # connections wait in the backlog until uvicorn's loop runs
        self.port = int(self.sock.getsockname()[1])
        factory: Callable[..., ssl.SSLContext] | None = (lambda _config, _default: context) if context is not None else None
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            log_config=None,  # no handlers of uvicorn's own: its records reach the node's (format, UID masking)
            proxy_headers=False,  # X-Forwarded-For would let a local process pose as any address; see web.trusted_proxies
            server_header=False, limit_concurrency=MAX_CONCURRENT_CONNECTIONS,
            ssl_context_factory=factory,
        ))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="dicomnode-web", daemon=True)

    def start(self) -> int:
        """Serve; returns the bound port."""
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving."""
        self.server.should_exit = True
        self._thread.join(10)
        self.sock.close()
