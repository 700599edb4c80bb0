"""``multipart/related`` bodies of DICOM parts (DICOMweb STOW-RS and WADO-RS), split as they arrive.

:class:`PartSplitter` is fed the body in chunks of any size and hands back
each complete part (its headers and content) as soon as the boundary after it
has arrived; it holds at most one part, and a part larger than ``max_part``
is skipped without being held (handed back as ``None``).  ``done`` tells
whether the closing boundary came: a body cut short leaves its last part
unfinished, and that part is never handed back.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSING = b"--"


@dataclass
class Part:
    """One part: its headers (lower-case names) and its content."""

    headers: dict[str, str]
    content: bytes


def boundary_param(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type of ``content_type`` (lower case) and its parameters (lower-case names, unquoted values)."""
    main, _, params = content_type.partition(";")
    found: dict[str, str] = {}
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.strip():
            found[k.strip().lower()] = v.strip().strip('"')
    return main.strip().lower(), found


def parse_part(raw: bytes) -> Part:
    """A part's headers and content (no headers: the content is all of it)."""
    head, sep, content = raw.partition(b"\r\n\r\n")
    if not sep:
        return Part({}, raw)
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        k, _, v = line.partition(":")
        if k.strip():
            headers[k.strip().lower()] = v.strip()
    return Part(headers, content)


class PartSplitter:
    """Splits a multipart body fed in chunks into its parts.

    Parameters
    ----------
    boundary : str
        The body's boundary.
    max_part : int
        Parts larger than this many bytes are skipped (handed back as ``None``).
    """

    def __init__(self, boundary: str, max_part: int) -> None:
        self.delim = b"\r\n--" + boundary.encode()
        self.max_part = max_part
        self.buf = b"\r\n"  # the first boundary has no line break before it
        self.in_part = False
        self.oversized = False
        self.done = False

    def feed(self, chunk: bytes) -> list[Part | None]:
        """The parts that ``chunk`` completes (``None`` for a skipped oversized part)."""
        out: list[Part | None] = []
        if self.done:
            return out
        self.buf += chunk
        while True:
            at = self.buf.find(self.delim)
            if at < 0:
                keep = len(self.delim)
                if self.in_part and len(self.buf) > self.max_part + keep:
                    self.oversized = True  # keep only what may hold the start of the next boundary
                    self.buf = self.buf[-keep:]
                elif not self.in_part and len(self.buf) > 1 << 16:  # a preamble before the first boundary
                    self.buf = self.buf[-keep:]
                return out
            rest = self.buf[at + len(self.delim):]
            if len(rest) < 2:
                return out  # the two bytes after the boundary decide (more parts, or the end): wait for them
            if self.in_part:
                out.append(None if self.oversized else parse_part(self.buf[:at]))
            self.oversized = False
            if rest.startswith(CLOSING):
                self.done = True
                self.buf = b""
                return out
            eol = rest.find(b"\r\n")
            if eol < 0:
                if self.in_part:  # the part was handed back already: do not hand it back again
                    self.in_part = False
                self.buf = self.buf[at:]
                return out
            self.buf = rest[eol + 2:]
            self.in_part = True
