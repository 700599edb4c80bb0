"""The node's web face: a status page, a JSON API, Prometheus ``/metrics`` and ``/healthz``."""

from dicomnode.web.app import WebServer, create_app

__all__ = ["WebServer", "create_app"]
