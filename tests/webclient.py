"""A small HTTP client for the node's web face: any Host header, HTTP Basic, a cookie jar, the login form."""

from __future__ import annotations

import base64
import html
import http.client
import json
import re
import socket
import ssl
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dicomnode.node import Node


@dataclass
class Answer:
    """One HTTP response."""

    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with "\n"
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def cookie(self, name: str) -> str | None:
        """The raw Set-Cookie line for ``name``, with its attributes."""
        return next((c for c in self.headers.get("set-cookie", "").split("\n") if c.startswith(name + "=")), None)


@dataclass
class Client:
    """Talks to ``host:port`` (from ``source`` when given), keeping cookies like a browser would."""

    port: int
    host: str = "127.0.0.1"
    ca_file: Path | None = None  # HTTPS, trusting this certificate
    source: str | None = None  # local address to connect from
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
                auth: tuple[str, str] | None = None) -> Answer:
        sent = {"Host": f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}", **(headers or {})}
        if auth is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if self.cookies and "Cookie" not in sent:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        source = (self.source, 0) if self.source else None
        conn: http.client.HTTPConnection
        if self.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=30, context=ctx, source_address=source)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30, source_address=source)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in sent.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            headers: dict[str, str] = {}
            for k, v in r.getheaders():
                headers[k.lower()] = headers[k.lower()] + "\n" + v if k.lower() in headers else v
            answer = Answer(r.status, headers, r.read())
        finally:
            conn.close()
        for line in answer.headers.get("set-cookie", "").split("\n") if "set-cookie" in answer.headers else []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or not morsel.value or morsel.value == '""':
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return answer

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        return self.request("POST", path, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
                            urlencode(fields).encode(), **kw)

    def login(self, user: str, password: str, headers: dict[str, str] | None = None) -> Answer:
        """Fetch the login form, then send it as a browser would (its token, and the cookie set with it)."""
        form = self.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert token is not None, form.text
        return self.post_form("/login", {"login_token": html.unescape(token.group(1)), "next": "/",
                                         "username": user, "password": password}, headers)


def admin_password(node: Node) -> str:
    """The first administrator's generated password (``<storage_dir>/web-admin-password``)."""
    return (node.cfg.node.storage_dir / "web-admin-password").read_text().strip()


def admin(node: Node) -> Client:
    """A client of ``node``'s web face; pass ``auth=("admin", admin_password(node))`` for HTTP Basic."""
    assert node.web_port is not None
    return Client(node.web_port)


def own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (no packet is sent), or ``None``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: only chooses the outgoing interface
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address
