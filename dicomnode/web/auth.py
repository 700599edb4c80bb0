"""Who is asking: passwords (HTTP Basic or the login form), sessions and a trusted proxy's header.

Every failed login is audited (``web_login``) and counted against the client
address; past ``web.login_max_failures`` within ``web.login_window_seconds``
the address gets 429 without its password being checked.  A password that
was verified is remembered for a few minutes under a keyed digest, so that a
script or Prometheus sending HTTP Basic on every request does not cost an
argon2 verification (64 MiB, about 0.1 s) each time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from dicomnode.audit import audit
from dicomnode.config import WebConfig
from dicomnode.errors import DicomNodeError
from dicomnode.web.sessions import LoginThrottle, SessionStore
from dicomnode.web.users import Role, User, UserStore

VERIFIED_TTL_SECONDS = 300.0  # how long a verified password is remembered
VERIFIED_MAX = 256
CONCURRENT_VERIFICATIONS = 4  # argon2 takes 64 MiB each: a burst of logins must not take gigabytes


class Via(StrEnum):
    """How a request proved who sent it."""

    SESSION = "session"  # the login form's cookie
    BASIC = "basic"  # an Authorization: Basic header
    PROXY = "proxy"  # the trusted reverse proxy's header


@dataclass(frozen=True)
class Principal:
    """The user a request acts for."""

    name: str
    role: Role
    via: Via
    csrf: str  # the token this user's forms carry

    @property
    def is_admin(self) -> bool:
        """Whether the user may act (retry jobs), not only read."""
        return self.role == Role.ADMIN


PLAIN_HTTP_REFUSAL = (
    "passwords are refused over plain HTTP from {peer}: they would cross the network readable by anyone on the way. "
    "Use HTTPS ([web.tls] cert_file and key_file, or a TLS-terminating proxy in web.trusted_proxies), "
    "or list this network in web.plain_http_login_from"
)


class LoginRefused(DicomNodeError):
    """A login failed; ``status`` is the HTTP answer (401 wrong, 403 not allowed here, 429 too many failures)."""

    def __init__(self, message: str, status: int, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def is_loopback(address: str) -> bool:
    """Whether ``address`` is this host (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _networks(items: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(i, strict=False) for i in items)


def _in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks)


class Authenticator:
    """Checks passwords, sessions and the proxy header against the users file.

    Parameters
    ----------
    cfg : WebConfig
        Sessions, throttle, trusted proxies and plain-HTTP rules.
    store : UserStore
        The users.
    clock : callable, optional
        Monotonic seconds, for sessions, the throttle and the verified-password memory.
    """

    def __init__(self, cfg: WebConfig, store: UserStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.store = store
        self.sessions = SessionStore(cfg.session_idle_minutes * 60, cfg.session_max_hours * 3600, clock)
        self.throttle = LoginThrottle(cfg.login_max_failures, cfg.login_window_seconds, clock)
        self._clock = clock
        self._secret = secrets.token_bytes(32)  # per process: CSRF tokens and the verified-password memory
        self._verified: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._verifying = threading.BoundedSemaphore(CONCURRENT_VERIFICATIONS)
        self._proxies = _networks(cfg.trusted_proxies)
        self._plain_ok = _networks(cfg.plain_http_login_from)

    # ------------------------------------------------------------- policies

    def is_trusted_proxy(self, peer: str) -> bool:
        """Whether ``peer`` is one of ``web.trusted_proxies``."""
        return _in(peer, self._proxies)

    def passwords_allowed(self, peer: str, https: bool) -> bool:
        """Whether a password may be sent from ``peer``: over HTTPS, from this host, or from ``plain_http_login_from``."""
        return https or is_loopback(peer) or _in(peer, self._plain_ok)

    def csrf_token(self, via: Via, name: str, stamp: str = "") -> str:
        """The stateless CSRF token of a Basic or proxy user (sessions have a random one of their own)."""
        return hmac.new(self._secret, f"csrf\0{via}\0{name}\0{stamp}".encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------- passwords

    def check_password(self, name: str, password: str, peer: str, via: Via) -> User:
        """The user ``name`` if ``password`` is theirs; :class:`LoginRefused` otherwise.

        Blocks for an argon2 verification unless this password was verified
        recently: call it from a worker thread.
        """
        if wait := self.throttle.retry_after(peer):
            raise self._too_many(name, peer, via, wait)
        user = self._remembered(name, password) if via == Via.BASIC else None  # a form login is always checked (and audited)
        if user is None:
            if wait := self.throttle.attempt(peer):  # counted as failed until it succeeds: a burst cannot exceed the limit
                raise self._too_many(name, peer, via, wait)
            with self._verifying:
                user = self.store.verify(name, password)
            if user is None:
                audit("web_login", user=name[:64], peer=peer, via=via, outcome="failed")
                raise LoginRefused("wrong user name or password", 401)
            self.throttle.forgive(peer)
            if via == Via.BASIC:
                self._remember(name, password, user)
            audit("web_login", user=name, peer=peer, via=via, outcome="ok", role=user.role)
        return user

    def _too_many(self, name: str, peer: str, via: Via, wait: float) -> LoginRefused:
        audit("web_login", user=name[:64], peer=peer, via=via, outcome="rate-limited")
        return LoginRefused(f"too many failed logins from {peer}: try again in {int(wait) + 1} s", 429, wait)

    def _key(self, name: str, password: str) -> bytes:
        return hmac.new(self._secret, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def _remembered(self, name: str, password: str) -> User | None:
        key = self._key(name, password)
        with self._lock:
            hit = self._verified.get(key)
        user = self.store.get(name)
        if hit is None or user is None or hit[1] < self._clock() or not hmac.compare_digest(hit[0], user.stamp):
            return None  # unknown, expired, removed, or the password changed since
        return user

    def _remember(self, name: str, password: str, user: User) -> None:
        with self._lock:
            self._verified[self._key(name, password)] = (user.stamp, self._clock() + VERIFIED_TTL_SECONDS)
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)

    def refuse_plain_http(self, name: str, peer: str, via: Via) -> LoginRefused:
        """Audit and count a password sent over plain HTTP from another host; the error to answer with (403)."""
        self.throttle.failed(peer)  # counted, so that a client repeating it cannot flood the audit log
        audit("web_login", user=name[:64], peer=peer, via=via, outcome="refused-plain-http")
        return LoginRefused(PLAIN_HTTP_REFUSAL.format(peer=peer), 403)

    # ------------------------------------------------------------- principals

    def basic(self, name: str, password: str, peer: str) -> Principal:
        """The principal of an HTTP Basic request (see :meth:`check_password`)."""
        user = self.check_password(name, password, peer, Via.BASIC)
        return Principal(user.name, user.role, Via.BASIC, self.csrf_token(Via.BASIC, user.name, user.stamp))

    def session(self, token: str) -> Principal | None:
        """The principal of a session cookie, or ``None`` when it expired or its user was removed or changed."""
        session = self.sessions.get(token)
        if session is None:
            return None
        user = self.store.get(session.user)
        if user is None or not hmac.compare_digest(user.stamp, session.stamp):
            self.sessions.drop(token)
            return None
        return Principal(user.name, user.role, Via.SESSION, session.csrf)

    def proxy(self, name: str, peer: str) -> Principal:
        """The principal named by the trusted proxy's header; the user must be in the users file."""
        if wait := self.throttle.retry_after(peer):
            raise self._too_many(name, peer, Via.PROXY, wait)
        if not self.is_trusted_proxy(peer):
            self.throttle.failed(peer)
            audit("web_login", user=name[:64], peer=peer, via=Via.PROXY, outcome="header-from-untrusted-address")
            raise LoginRefused(f"{self.cfg.trusted_proxy_header} is accepted only from web.trusted_proxies", 401)
        user = self.store.get(name)
        if user is None:
            self.throttle.failed(peer)
            audit("web_login", user=name[:64], peer=peer, via=Via.PROXY, outcome="unknown-user")
            raise LoginRefused(f"the proxy named user {name[:64]!r}, who is not in web.users_file", 401)
        return Principal(user.name, user.role, Via.PROXY, self.csrf_token(Via.PROXY, user.name, user.stamp))
