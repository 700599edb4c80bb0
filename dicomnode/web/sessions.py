"""Login sessions and the failed-login throttle, both in memory and both bounded.

Session tokens are 256 random bits; only their SHA-256 is kept, so a token is
looked up by its digest (no comparison that leaks timing) and a memory dump
yields no usable cookie.  Sessions end after ``web.session_idle_minutes``
without a request, after ``web.session_max_hours`` in any case, at logout,
and when the node restarts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

MAX_SESSIONS = 10_000  # the oldest session is dropped beyond this
MAX_TRACKED_ADDRESSES = 4096  # the failed-login throttle forgets the least recently seen address beyond this


@dataclass
class Session:
    """One logged-in browser."""

    user: str
    stamp: str  # the user's password stamp at login: a password change ends the session
    csrf: str  # the token forms and X-CSRF-Token must carry
    created: float
    last_seen: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SessionStore:
    """Server-side sessions keyed by the digest of a random token.

    Parameters
    ----------
    idle_seconds, max_seconds : float
        A session ends after this long without a request, or this long after login.
    clock : callable, optional
        Monotonic seconds (tests pass their own).
    """

    def __init__(self, idle_seconds: float, max_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, user: str, stamp: str) -> tuple[str, Session]:
        """A new session for ``user``: ``(token for the cookie, session)``; a fresh token at every login."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(user, stamp, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._sessions[_digest(token)] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session of ``token`` (its idle timer restarts), or ``None``."""
        key = _digest(token)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.last_seen > self.idle_seconds or now - session.created > self.max_seconds:
                del self._sessions[key]
                return None
            session.last_seen = now
            return session

    def drop(self, token: str) -> bool:
        """End the session of ``token`` (logout); whether there was one."""
        with self._lock:
            return self._sessions.pop(_digest(token), None) is not None

    def __len__(self) -> int:
        return len(self._sessions)


def client_key(address: str) -> str:
    """The throttle's key for a client address: the address, or its /64 for IPv6 (one host has many)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """At most ``max_failures`` failed logins per client address within ``window_seconds``.

    Memory is bounded: each address keeps at most ``max_failures`` timestamps,
    and at most :data:`MAX_TRACKED_ADDRESSES` addresses are tracked.  A
    successful login does not clear the count: otherwise anyone with one
    account could guess another's password without limit.
    """

    def __init__(self, max_failures: int, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may try now."""
        with self._lock:
            return self._wait(self._failures.get(client_key(address)))

    def _wait(self, times: deque[float] | None) -> float:
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(0.0, self.window_seconds - (self._clock() - times[0]))

    def failed(self, address: str) -> None:
        """Count a failed login from ``address``."""
        key = client_key(address)
        with self._lock:
            self._count(key)

    def _count(self, key: str) -> None:
        times = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        times.append(self._clock())
        self._failures[key] = times  # most recently seen last
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def attempt(self, address: str) -> float:
        """Count a password check from ``address`` as failed before it runs; seconds to wait instead (0: go ahead).

        Counting first means that guesses sent all at once cannot exceed the
        limit while the checks run.  Call :meth:`forgive` when it succeeds.
        """
        key = client_key(address)
        with self._lock:
            wait = self._wait(self._failures.get(key))
            if wait == 0:
                self._count(key)
            return wait

    def forgive(self, address: str) -> None:
        """Take back the count of one :meth:`attempt` that turned out to be a right password."""
        with self._lock:
            times = self._failures.get(client_key(address))
            if times:
                times.pop()

    def __len__(self) -> int:
        return len(self._failures)
