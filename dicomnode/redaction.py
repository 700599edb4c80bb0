"""Identifiers kept out of sight: masking of DICOM UIDs and storage paths in text and log records.

DICOM treats UIDs as identifiers (a Study Instance UID leads to a patient as
surely as the PatientID does), and the node stores instances under
``<study>/<series>/<sop>.dcm``.  The node's own messages name instances by
position ("instance 12 of 300") and series and jobs by internal number;
this module is the backstop for text the node does not write itself
(library exceptions, third-party log records): :func:`redact` masks
anything that looks like a UID or a path under the storage folder, and
:class:`RedactingFilter` applies it to every log record at INFO and above.

Not masked: the UIDs the DICOM standard itself defines (``1.2.840.10008.*``:
SOP classes, transfer syntaxes), version numbers (``2.13.0``) and IPv4
addresses (``10.0.0.5``), which have fewer components than any UID a
device issues.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

UID_MASK = "<uid>"
PATH_MASK = "<path>"

# A UID issued by a device: a root 0, 1 or 2 and at least four more components
# (so that version numbers and IPv4 addresses stay readable), or the 2.25 arc of
# UUID-derived UIDs (three components, the last a long number).  Components are
# matched loosely (leading zeros, which are invalid, still count) because a
# malformed UID is as identifying as a valid one.  The standard's own UIDs
# (1.2.840.10008.*) identify SOP classes and transfer syntaxes, not patients.
_UID = re.compile(
    r"(?<![\d.])(?!1\.2\.840\.10008\.)"
    r"(?:[0-2](?:\.\d+){4,}|2\.25\.\d{6,}(?:\.\d+)*)"
    r"(?!\d)"
)

# A path below a folder: up to the next blank or quote, not counting the punctuation that ends a sentence.
_BELOW = r"/[^\s'\"]*[^\s'\":,;.)\]]"


def redact(text: str, paths: Iterable[Path | str] = ()) -> str:
    """``text`` with UIDs replaced by ``<uid>`` and the data paths under ``paths`` by ``<path>``.

    Parameters
    ----------
    text : str
        A message, an exception's text or a formatted traceback.
    paths : iterable of path
        Folders whose data files are named after identifiers (the storage
        folder, whose ``incoming/<study>/<series>/<sop>.dcm``, quarantine and
        outputs are).  A path inside a subfolder of one of them is replaced
        whole, up to the next blank or quote; the folder itself and the files
        directly in it (the database, the audit log, the first web password)
        stay readable, an administrator needs to find them.

    Returns
    -------
    str
    """
    for folder in paths:
        root = str(folder).rstrip("/")
        if not root:
            continue
        below = rf"/[^\s'\"/]+{_BELOW}"  # into a subfolder: incoming/..., quarantine/..., outputs/...
        if root.startswith("/"):
            pattern = re.escape(root) + below
        else:  # a relative folder ("storage") only where a path starts
            pattern = r"(?<![\w/.-])" + re.escape(root) + below
        text = re.sub(pattern, PATH_MASK, text)
    return _UID.sub(UID_MASK, text)


def describe_exception(exc: BaseException, paths: Iterable[Path | str] = ()) -> str:
    """A library's exception in words fit for a job's error or a log line: one line, no file path, no UID.

    An ``OSError`` is its ``strerror`` (its text names the file); anything
    else is its type and the first line of its text, masked by :func:`redact`.
    """
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {redact(first, paths)}" if first else type(exc).__name__


def contains_uid(text: str) -> bool:
    """Whether ``text`` holds something :func:`redact` would mask as a UID."""
    return _UID.search(text) is not None


class RedactingFilter(logging.Filter):
    """A handler filter that masks UIDs and storage paths in records at ``level`` and above.

    The message is rendered, masked and stored back on the record (``args``
    cleared), and so are the traceback and stack of an exception record.
    Records below ``level`` (DEBUG, for a developer at the node) pass unchanged.

    Parameters
    ----------
    paths : iterable of path
        Folders whose paths are masked (the node's storage folder).
    level : int
        The lowest level that is masked (default INFO).
    """

    def __init__(self, paths: Iterable[Path | str] = (), level: int = logging.INFO) -> None:
        super().__init__()
        self.paths = [str(p) for p in paths]
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        if record.levelno < self.level or getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself, unmasked text must not go out
            message = str(record.msg)
        record.msg, record.args = redact(message, self.paths), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.paths)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.paths)
        record._redacted = True  # several handlers share one record: mask it once
        return True
