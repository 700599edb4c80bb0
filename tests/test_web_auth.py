"""Access control of the web face against a live node: logins and roles, sessions, CSRF, the login throttle,
a trusted proxy's header, trusted Host names, security headers, HTTPS, API docs, /healthz and ``dicomnode users``."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dicomnode.config import load_config, parse_config
from dicomnode.errors import ConfigError
from dicomnode.node import Node
from dicomnode.web.page import PAGE_CSP
from dicomnode.web.sessions import MAX_TRACKED_ADDRESSES, LoginThrottle, SessionStore
from dicomnode.web.users import Role, UserStore, ensure_first_admin
from storage.queue import claim_job, end_job, job_state
from storage.states import JobState
from tests.browser import Browser
from tests.conftest import wait_for_jobs
from tests.helpers import storescu, write_config
from tests.test_tls import make_cert
from tests.webclient import Answer, Client, admin_password, own_address

WEB = "enabled = true\nport = 0\n"
VIEWER = ("viewer", "viewer-password-1")
HEADERS = {
    "x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-store",
}


@pytest.fixture
def audit_log(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[str], list[dict[str, object]]]]:
    """The audit entries of one event, as they would be written to the audit log."""
    logging.getLogger("dicomnode.audit").setLevel(logging.INFO)
    caplog.set_level(logging.INFO, logger="dicomnode.audit")

    def entries(event: str) -> list[dict[str, object]]:
        found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomnode.audit"]
        return [e for e in found if e["event"] == event]

    yield entries
    logging.getLogger("dicomnode.audit").setLevel(logging.NOTSET)


def start(node_factory: Callable[..., Node], web: str = "", node_toml: str = "", subdir: str = "node") -> tuple[Node, Client]:
    node = node_factory(node_toml=node_toml, web_toml=WEB + web, subdir=subdir)
    assert node.web_port is not None
    UserStore(node.cfg.node.storage_dir / node.cfg.web.users_file).add(VIEWER[0], Role.READ_ONLY, VIEWER[1])
    return node, Client(node.web_port)


def admin(node: Node) -> tuple[str, str]:
    return ("admin", admin_password(node))


def failed_job(node: Node, make_series: Callable[..., list[Path]]) -> int:
    """A job that ran and failed (sent with dcmtk, claimed and ended as a worker would)."""
    assert storescu(node.cfg.node.port, make_series("auth", slices=2)).returncode == 0
    [job] = wait_for_jobs(node, 1)
    assert claim_job(node.engine, "test", 60) is not None
    assert end_job(node.engine, job.id, "test", JobState.FAILED, "the model crashed", {})
    return job.id


def assert_secured(r: Answer, what: str) -> None:
    for name, value in HEADERS.items():
        assert r.headers.get(name) == value, f"{what}: {name} is {r.headers.get(name)!r}"
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe" not in csp, f"{what}: {csp}"
    assert "strict-transport-security" not in r.headers and "server" not in r.headers, what


# ---------------------------------------------------------------- users and roles


def test_first_start_creates_an_admin_with_a_private_password_file(
    node_factory: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    old = os.umask(0o022)  # the usual umask: files would be world-readable by default
    try:
        node = node_factory(web_toml=WEB)
    finally:
        os.umask(old)
    storage = node.cfg.node.storage_dir
    password = admin_password(node)
    for path in (storage / "web-admin-password", storage / "web-users.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(password) >= 20 and password not in (storage / "web-users.json").read_text()  # only the argon2id hash is kept
    warnings = [r.getMessage() for r in caplog.records if r.name == "dicomnode.web.users" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(storage / "web-admin-password") in warnings[0] and password not in caplog.text
    assert Client(node.web_port or 0).get("/api/jobs", auth=("admin", password)).status == 200
    node.stop()
    caplog.clear()
    again = node_factory(web_toml=WEB)  # same storage: the users exist, nothing is created or logged
    assert admin_password(again) == password and "no users yet" not in caplog.text


def test_each_role_reads_only_admins_retry_and_a_wrong_password_is_audited(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], audit_log: Callable[[str], list[dict[str, object]]]
) -> None:
    node, c = start(node_factory)
    job = failed_job(node, make_series)
    reads = ["/", "/api/jobs", f"/api/jobs/{job}", "/api/series", "/api/deliveries", "/metrics"]
    for who in (admin(node), VIEWER):
        for path in reads:
            assert c.get(path, auth=who).status == 200, (who[0], path)
        assert c.get(f"/jobs/{job}/preview.png", auth=who).status == 404  # logged in: no preview, rather than 401
    for path in [*reads, f"/jobs/{job}/preview.png"]:
        r = c.get(path)
        assert r.status == 401 and r.headers["www-authenticate"].startswith('Basic realm="dicomnode"'), path
    assert c.get("/", headers={"Accept": "text/html"}).headers["location"] == "/login"  # a browser gets the form
    # Read-only users see no retry button and get 403; the refusal is audited.
    assert "retry</button>" not in c.get("/", auth=VIEWER).text and "retry</button>" in c.get("/", auth=admin(node)).text
    r = c.request("POST", f"/api/jobs/{job}/retry", auth=VIEWER)
    assert r.status == 403 and "admin role" in r.text
    assert job_state(node.engine, job) == (JobState.FAILED, "the model crashed")
    r = c.request("POST", f"/api/jobs/{job}/retry", auth=admin(node))  # a script: HTTP Basic, no Origin
    assert r.status == 200 and r.json() == {"job": job, "result": f"job {job} queued again"}
    assert job_state(node.engine, job) == (JobState.QUEUED, None)
    assert claim_job(node.engine, "test", 60) is not None
    assert c.request("POST", f"/api/jobs/{job}/retry", auth=admin(node)).status == 409  # running: not now
    assert c.request("POST", "/api/jobs/999/retry", auth=admin(node)).status == 404
    actions = audit_log("web_action")
    assert [(a["user"], a["outcome"]) for a in actions][:2] == [("viewer", "forbidden"), ("admin", "ok")]
    # A wrong password and an unknown user get the same answer; both are audited with the peer.
    for who in (("viewer", "not-the-password"), ("nobody", "not-the-password")):
        r = c.get("/api/jobs", auth=who)
        assert r.status == 401 and r.json()["detail"] == "wrong user name or password"
    failed = [(e["user"], e["peer"], e["via"]) for e in audit_log("web_login") if e["outcome"] == "failed"]
    assert failed == [("viewer", "127.0.0.1", "basic"), ("nobody", "127.0.0.1", "basic")]


# ---------------------------------------------------------------- sessions and CSRF


def test_login_form_gives_a_strict_httponly_session_that_logout_and_password_changes_end(
    node_factory: Callable[..., Node], audit_log: Callable[[str], list[dict[str, object]]]
) -> None:
    node, c = start(node_factory)
    r = c.login(*VIEWER)
    assert r.status == 303 and r.headers["location"] == "/"
    cookie = r.cookie("dicomnode_session") or ""
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert flags == {"httponly", "path=/", "samesite=strict"}, cookie  # no Secure over plain HTTP, no lifetime of its own
    first = c.cookies["dicomnode_session"]
    page = c.get("/")
    assert page.status == 200 and "viewer (read-only)" in page.text and 'action="/logout"' in page.text
    assert c.get("/api/jobs").status == 200
    assert Client(c.port).login(*VIEWER).status == 303 and c.login(*VIEWER).status == 303
    assert c.cookies["dicomnode_session"] != first  # a new token at every login
    # Logout needs the page's CSRF token, ends the session on the server and clears the cookie.
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/").text)
    assert token is not None
    stolen = c.cookies["dicomnode_session"]
    assert c.post_form("/logout", {}).status == 403
    r = c.post_form("/logout", {"csrf_token": token.group(1)})
    assert r.status == 303 and r.headers["location"] == "/login" and "dicomnode_session" not in c.cookies
    assert c.get("/api/jobs", headers={"Cookie": f"dicomnode_session={stolen}"}).status == 401
    assert ("viewer", "logout") in [(e["user"], e["outcome"]) for e in audit_log("web_login")]
    # A password change or a removal ends every session of that user.
    store = UserStore(node.cfg.node.storage_dir / "web-users.json")
    assert c.login(*VIEWER).status == 303 and c.get("/api/jobs").status == 200
    store.set_password("viewer", "another-password-2")
    assert c.get("/api/jobs").status == 401
    assert c.login("viewer", "another-password-2").status == 303 and c.get("/api/jobs").status == 200
    store.remove("viewer")
    assert c.get("/api/jobs").status == 401


def test_the_login_form_refuses_forged_posts_and_says_why(node_factory: Callable[..., Node]) -> None:
    node, c = start(node_factory)
    form = {"username": VIEWER[0], "password": VIEWER[1], "next": "/"}
    r = c.post_form("/login", form)  # no token from a form this browser loaded: another site's form
    assert r.status == 403 and "expired" in r.text and "dicomnode_session" not in c.cookies
    r = c.login(*VIEWER, headers={"Origin": "http://evil.example"})
    assert r.status == 403 and "another site" in r.text and "dicomnode_session" not in c.cookies
    r = c.login(VIEWER[0], "wrong-password")
    assert r.status == 401 and "wrong user name or password" in r.text and "dicomnode_session" not in c.cookies
    r = c.login(*VIEWER, headers={"Origin": f"http://127.0.0.1:{c.port}"})  # the node's own origin is enough
    assert r.status == 303
    evil = Client(c.port)
    evil.get("/login")
    r = evil.post_form("/login", {**form, "login_token": evil.cookies["dicomnode_login"], "next": "//evil.example/x"})
    assert r.status == 303 and r.headers["location"] == "/"  # never sent to another site after login


def test_state_changes_need_the_same_origin_or_the_csrf_token(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node, c = start(node_factory)
    job = failed_job(node, make_series)
    assert c.login(*admin(node)).status == 303
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/").text)
    assert token is not None
    retry = f"/api/jobs/{job}/retry"
    own = f"http://127.0.0.1:{c.port}"
    refused = [
        c.request("POST", retry),  # the session cookie alone
        c.request("POST", retry, {"Origin": "http://evil.example", "X-CSRF-Token": token.group(1)}),
        c.request("POST", retry, {"Origin": "null"}),
        c.request("POST", retry, {"X-CSRF-Token": "guessed"}),
        c.post_form(retry, {"csrf_token": "guessed"}),
        c.request("POST", retry, {"Origin": "http://evil.example"}, auth=admin(node)),  # a browser with cached Basic
        c.request("POST", retry, {"Origin": "null"}, auth=admin(node)),
    ]
    for r in refused:
        assert r.status == 403 and "cross-site request refused" in r.text, r.text
        assert_secured(r, "CSRF refusal")
    assert job_state(node.engine, job) == (JobState.FAILED, "the model crashed")
    assert c.post_form(retry, {"csrf_token": token.group(1)}).headers["location"] == f"/#job-{job}"  # the page's button
    assert job_state(node.engine, job) == (JobState.QUEUED, None)
    assert c.request("POST", retry, {"X-CSRF-Token": token.group(1)}).status == 200
    assert c.request("POST", retry, {"Origin": own}).status == 200


# ---------------------------------------------------------------- throttle, proxy, plain HTTP


def test_failed_logins_are_throttled_per_address(
    node_factory: Callable[..., Node], audit_log: Callable[[str], list[dict[str, object]]]
) -> None:
    other = own_address()
    if other is None:
        pytest.skip("this machine has no non-loopback address")
    node, c = start(node_factory, f'host = "0.0.0.0"\nlogin_max_failures = 3\nplain_http_login_from = ["{other}/32"]\n')
    for _ in range(3):
        assert c.get("/api/jobs", auth=("admin", "guess-guess-guess")).status == 401
    r = c.get("/api/jobs", auth=admin(node))  # the right password, too late: not even checked
    assert r.status == 429 and 0 < int(r.headers["retry-after"]) <= 300 and "too many failed logins" in r.text
    assert c.login(*admin(node)).status == 429  # the form counts the same failures
    assert Client(c.port, host=other).get("/api/jobs", auth=admin(node)).status == 200  # another address is not locked out
    outcomes = [e["outcome"] for e in audit_log("web_login") if e["peer"] == "127.0.0.1"]
    assert outcomes == ["failed"] * 3 + ["rate-limited"] * 2


def test_guesses_sent_at_once_do_not_exceed_the_limit(
    node_factory: Callable[..., Node], audit_log: Callable[[str], list[dict[str, object]]]
) -> None:
    node, c = start(node_factory, "login_max_failures = 3\n")
    with ThreadPoolExecutor(12) as pool:  # every guess is in flight before the first check has finished
        statuses = sorted(pool.map(lambda i: c.get("/api/jobs", auth=("admin", f"guess-number-{i}")).status, range(12)))
    assert statuses == [401] * 3 + [429] * 9
    assert [e["outcome"] for e in audit_log("web_login")].count("failed") == 3


def test_the_throttle_and_sessions_are_bounded_and_expire() -> None:
    now = [0.0]
    throttle = LoginThrottle(3, 60, clock=lambda: now[0])
    for i in range(MAX_TRACKED_ADDRESSES + 500):
        throttle.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(throttle) == MAX_TRACKED_ADDRESSES  # bounded memory under a spray of addresses
    for _ in range(5):
        throttle.failed("2001:db8::1")
    assert throttle.retry_after("2001:db8::ffff") == 60  # one IPv6 /64 is one client
    assert len(throttle) == MAX_TRACKED_ADDRESSES
    now[0] = 61
    assert throttle.retry_after("2001:db8::1") == 0
    sessions = SessionStore(idle_seconds=60, max_seconds=300, clock=lambda: now[0])
    token, _ = sessions.create("viewer", "stamp")
    assert token.encode() not in {bytes(k) for k in sessions._sessions}  # only the digest is kept
    created = now[0]
    for t in (50, 100, 150, 200, 250, 300, 350):  # in use every 50 s: the idle limit never bites...
        now[0] = created + t
        alive = sessions.get(token) is not None
        assert alive == (t <= 300), t  # ...but the absolute one does
    token, _ = sessions.create("viewer", "stamp")
    now[0] += 61
    assert sessions.get(token) is None  # idle too long


def test_a_trusted_proxy_names_the_user_and_nobody_else_can(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], audit_log: Callable[[str], list[dict[str, object]]]
) -> None:
    other = own_address()
    if other is None:
        pytest.skip("this machine has no non-loopback address")
    node, c = start(node_factory, 'host = "0.0.0.0"\ntrusted_proxy_header = "X-Remote-User"\ntrusted_proxies = ["127.0.0.1"]\n')
    job = failed_job(node, make_series)
    r = c.get("/", headers={"X-Remote-User": "viewer"})
    assert r.status == 200 and "viewer (read-only)" in r.text  # the role comes from the users file
    assert c.request("POST", f"/api/jobs/{job}/retry", {"X-Remote-User": "viewer", "Origin": f"http://127.0.0.1:{c.port}"}).status == 403
    assert c.request("POST", f"/api/jobs/{job}/retry", {"X-Remote-User": "admin"}).status == 403  # a browser: needs the token
    assert c.request("POST", f"/api/jobs/{job}/retry", {"X-Remote-User": "admin", "Origin": f"http://127.0.0.1:{c.port}"}).status == 200
    assert c.get("/api/jobs", headers={"X-Remote-User": "mallory"}).status == 401  # not in the users file
    forged = Client(c.port, host=other).get("/api/jobs", headers={"X-Remote-User": "admin"})  # not from the proxy
    assert forged.status == 401 and "only from web.trusted_proxies" in forged.text
    outcomes = {(e["user"], e["outcome"], e["peer"]) for e in audit_log("web_login")}
    assert ("mallory", "unknown-user", "127.0.0.1") in outcomes and ("admin", "header-from-untrusted-address", other) in outcomes
    with pytest.raises(ConfigError, match="web.trusted_proxies: required"):
        parse_config({"web": {"trusted_proxy_header": "X-Remote-User"}})


def test_passwords_over_plain_http_from_another_host_are_refused(
    node_factory: Callable[..., Node], audit_log: Callable[[str], list[dict[str, object]]]
) -> None:
    other = own_address()
    if other is None:
        pytest.skip("this machine has no non-loopback address")
    node, _ = start(node_factory, 'host = "0.0.0.0"\n')
    remote = Client(node.web_port or 0, host=other)
    r = remote.get("/api/jobs", auth=admin(node))
    assert r.status == 403 and "refused over plain HTTP" in r.text and "[web.tls]" in r.text
    form = remote.get("/login")
    assert form.status == 200 and "Use HTTPS" in form.text and 'type="password"' not in form.text
    assert remote.post_form("/login", {"username": "admin", "password": admin_password(node)}).status == 403
    assert [e["outcome"] for e in audit_log("web_login") if e["peer"] == other] == ["refused-plain-http"]
    assert Client(node.web_port or 0).get("/api/jobs", auth=admin(node)).status == 200  # loopback is fine


# ---------------------------------------------------------------- hosts, headers, TLS, docs, health


def test_only_trusted_host_names_are_served(node_factory: Callable[..., Node]) -> None:
    node, c = start(node_factory, 'trusted_hosts = ["node.example.org", "*.ward.example.org"]\n')
    for host in ("evil.example", "example.org", "ward.example.org", "localhost", "node.example.org.evil.example", "a b"):
        r = c.get("/api/jobs", headers={"Host": host}, auth=admin(node))  # DNS rebinding: right credentials, wrong name
        assert r.status == 400 and "Host" in r.text, host
        assert_secured(r, f"Host {host}")
    for host in ("node.example.org", "NODE.example.org:8080", "x.ward.example.org", f"127.0.0.1:{c.port}"):
        assert c.get("/api/jobs", headers={"Host": host}, auth=admin(node)).status == 200, host
    default, d = start(node_factory, subdir="default")  # the default list: loopback names only
    for host, status in (("localhost", 200), (f"127.0.0.1:{d.port}", 200), (f"[::1]:{d.port}", 200), ("dicomnode.example.org", 400)):
        assert d.get("/api/jobs", headers={"Host": host}, auth=admin(default)).status == status, host


def test_every_answer_carries_the_security_headers(node_factory: Callable[..., Node]) -> None:
    node, c = start(node_factory)
    answers = {
        "health": c.get("/healthz"), "login form": c.get("/login"), "401": c.get("/api/jobs"),
        "redirect": c.get("/", headers={"Accept": "text/html"}), "404": c.get("/api/jobs/999", auth=admin(node)),
        "API": c.get("/api/jobs", auth=admin(node)), "metrics": c.get("/metrics", auth=admin(node)),
        "413": c.request("POST", "/api/jobs/1/retry", body=b"x" * 20_000, auth=admin(node)),
        "422": c.get("/api/jobs?limit=100000", auth=admin(node)),
    }
    assert c.login(*admin(node)).status == 303
    answers["page"] = page = c.get("/")
    for what, r in answers.items():
        assert_secured(r, what)
    assert answers["413"].status == 413 and answers["422"].status == 422
    # The page: no script anywhere, no inline style attribute; its one <style> is allowed by its hash.
    assert page.headers["content-security-policy"] == PAGE_CSP and "script-src" not in PAGE_CSP
    assert "<script" not in page.text and " style=" not in page.text and " on" not in re.sub(r">[^<]*<", "><", page.text)
    style = re.search(r"<style>(.*?)</style>", page.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in PAGE_CSP


def test_https_adds_hsts_and_a_secure_host_only_cookie(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    node, _ = start(node_factory, f'[web.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    c = Client(node.web_port or 0, ca_file=cert)
    r = c.get("/api/jobs", auth=admin(node))
    assert r.status == 200 and r.headers["strict-transport-security"] == "max-age=31536000"
    r = c.login(*VIEWER)
    cookie = r.cookie("__Host-dicomnode_session") or ""
    assert r.status == 303 and {"secure", "httponly", "path=/", "samesite=strict"} <= {f.strip().lower() for f in cookie.split(";")[1:]}
    assert c.get("/").status == 200
    with pytest.raises(OSError):  # plain HTTP to the HTTPS port gets no page
        Client(node.web_port or 0).get("/healthz")


def test_api_docs_are_off_by_default_and_for_logged_in_users_when_on(node_factory: Callable[..., Node]) -> None:
    node, c = start(node_factory)
    for path in ("/api/docs", "/api/openapi.json", "/docs", "/redoc", "/openapi.json"):
        assert c.get(path, auth=admin(node)).status == 404, path
    assert 'href="/api/docs"' not in c.get("/", auth=admin(node)).text
    node, c = start(node_factory, "api_docs = true\n", subdir="docs")
    assert c.get("/api/docs").status == 401 and c.get("/api/openapi.json").status == 401
    docs = c.get("/api/docs", auth=VIEWER)
    assert docs.status == 200 and "swagger" in docs.text.lower()
    assert re.search(r"script-src https://cdn\.jsdelivr\.net 'sha256-[A-Za-z0-9+/=]+'", docs.headers["content-security-policy"])
    assert "/api/jobs/{job_id}/retry" in c.get("/api/openapi.json", auth=VIEWER).json()["paths"]


def test_healthz_is_open_and_says_when_instances_are_refused_for_disk_space(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node, c = start(node_factory)
    r = c.get("/healthz")
    assert r.status == 200 and r.json()["status"] == "ok" and r.json()["disk"]["refusing"] is False
    full, f = start(node_factory, node_toml="min_free_mb = 1000000000", subdir="full")  # a watermark above any free space
    storescu(full.cfg.node.port, make_series("refused", slices=3), extra=["--no-halt"])  # every one refused (0xA700)
    r = f.get("/healthz")  # no login
    body = r.json()
    assert r.status == 503 and body["status"] == "refusing" and body["disk"]["refusing"] is True
    assert body["disk"]["min_free_mb"] == 1_000_000_000 and 0 <= body["disk"]["free_mb"] < 1_000_000_000
    assert "node.min_free_mb" in body["reason"] and "refused" in body["reason"]
    assert body["refused_since_start"] == 3
    assert set(body) == {"status", "listener", "database", "disk", "refused_since_start", "reason"}  # nothing about jobs
    assert_secured(r, "healthz")


# ---------------------------------------------------------------- configuration and CLI


def test_web_configuration_is_validated_and_overridable(tmp_path: Path) -> None:
    bad = {
        "trusted_hosts": (["evil example"], "web.trusted_hosts"),
        "trusted_proxies": (["proxy.example"], "web.trusted_proxies"),
        "plain_http_login_from": (["10.0.0.0/33"], "web.plain_http_login_from"),
        "trusted_proxy_header": ("Authorization", "web.trusted_proxy_header"),
        "tls": ({"cert_file": str(tmp_path / "missing.crt"), "key_file": "x"}, "web.tls.cert_file"),
        "session_idle_minutes": (0, "web.session_idle_minutes"),
        "login_max_failures": (0, "web.login_max_failures"),
        "api_docs": ("yes", "web.api_docs"),
        "users": ([], "web.users"),
    }
    for key, (value, named) in bad.items():
        with pytest.raises(ConfigError, match=re.escape(named)):
            parse_config({"web": {key: value}})
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"web\.tls\.key_file: required"):
        parse_config({"web": {"tls": {"cert_file": str(cert)}}})
    cfg = load_config(write_config(tmp_path), environ={
        "DICOMNODE_WEB__TRUSTED_HOSTS": '["node.example.org"]', "DICOMNODE_WEB__API_DOCS": "true",
        "DICOMNODE_WEB__TRUSTED_PROXIES": "10.0.0.5, 10.0.1.0/24", "DICOMNODE_WEB__TRUSTED_PROXY_HEADER": "X-Remote-User",
        "DICOMNODE_WEB__TLS__CERT_FILE": str(cert), "DICOMNODE_WEB__TLS__KEY_FILE": str(cert),
    })
    web = cfg.web
    assert web.host_names == ("node.example.org",) and web.api_docs and web.trusted_proxies == ("10.0.0.5", "10.0.1.0/24")
    assert web.tls is not None and web.tls.key_file == cert and web.trusted_proxy_header == "X-Remote-User"
    assert parse_config({"web": {"host": "10.1.2.3"}}).web.host_names == ("localhost", "127.0.0.1", "::1", "10.1.2.3")
    assert parse_config({"web": {"host": "0.0.0.0"}}).web.host_names == ("localhost", "127.0.0.1", "::1")


def test_users_command(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    storage = tmp_path / "storage"

    def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dicomnode", "users", *args, "--config", str(config)],
                              input=stdin, capture_output=True, text=True, timeout=60, env={**os.environ, "DICOMNODE_CONFIG": ""})

    help_text = subprocess.run([sys.executable, "-m", "dicomnode", "users", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "400"}).stdout  # argparse would break words at hyphens
    for words in ("argon2id", "admin", "read-only", "web-admin-password", "--password-stdin", "sessions"):
        assert words in help_text, words
    ensure_first_admin(UserStore(storage / "web-users.json"), storage / "web-admin-password")  # what the first start does
    old = os.umask(0o022)
    try:
        r = users("add", "alice", "--role", "read-only", "--password-stdin", stdin="alice-password-1\n")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((storage / "web-users.json").stat().st_mode) == 0o600
    assert UserStore(storage / "web-users.json").verify("alice", "alice-password-1") is not None
    assert users("add", "alice", "--role", "admin", "--password-stdin", stdin="another-password\n").returncode == 1
    r = users("add", "bob", "--role", "admin", "--password-stdin", stdin="short\n")
    assert r.returncode == 1 and "at least 12 characters" in r.stderr
    r = users("add", "bob", "--role", "admin")  # no terminal to ask on
    assert r.returncode == 1 and "--password-stdin" in r.stderr
    r = users("list", "--json")
    assert json.loads(r.stdout) == [{"name": "admin", "role": "admin"}, {"name": "alice", "role": "read-only"}]  # no hashes
    r = users("remove", "admin")
    assert r.returncode == 1 and "last admin" in r.stderr
    r = users("passwd", "admin", "--password-stdin", stdin="a-new-admin-password\n")
    assert r.returncode == 0 and not (storage / "web-admin-password").exists()  # the generated one is gone
    assert users("remove", "alice").returncode == 0 and UserStore(storage / "web-users.json").get("alice") is None
    audit = [json.loads(line) for line in (storage / "audit.log").read_text().splitlines()]
    assert [(e["action"], e["user"]) for e in audit if e["event"] == "web_users"] == [
        ("add", "alice"), ("passwd", "admin"), ("remove", "alice"),
    ]


def test_the_login_page_in_chromium(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    node, c = start(node_factory)
    job = failed_job(node, make_series)
    with Browser(tmp_path / "chromium", size=(900, 600)) as browser:
        browser.goto(f"http://127.0.0.1:{c.port}/")
        assert browser.evaluate("location.pathname") == "/login"
        # The style sheet applies under the CSP (allowed by its hash), so the form is laid out as designed.
        assert browser.evaluate("getComputedStyle(document.querySelector('.login')).borderRadius") == "6px"
        browser.screenshot(tmp_path / "login.png")
        browser.submit_form('form[action="/login"]', {"username": "admin", "password": "wrong-password-x"})
        assert "wrong user name or password" in browser.dom()
        browser.submit_form('form[action="/login"]', {"username": "admin", "password": admin_password(node)})
        assert browser.evaluate("location.pathname") == "/"
        [session] = [k for k in browser.cookies() if k["name"] == "dicomnode_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["session"]
        assert browser.evaluate("document.cookie") == ""  # no script can read it
        browser.screenshot(tmp_path / "status.png")
        browser.submit_form(f"#job-{job} form", {})  # the admin's retry button: the form's CSRF token does it
        assert browser.evaluate("location.hash") == f"#job-{job}"
        assert job_state(node.engine, job) == (JobState.QUEUED, None)
        browser.submit_form('form[action="/logout"]', {})
        assert browser.evaluate("location.pathname") == "/login"
        assert not [k for k in browser.cookies() if k["name"] == "dicomnode_session"]
