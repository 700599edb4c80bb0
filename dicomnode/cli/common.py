"""What every CLI command shares: exit codes, logging set-up and the configuration."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TextIO

from dicomnode.config import Config, load_config
from dicomnode.redaction import RedactingFilter
from storage.permissions import make_private_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class JSONFormatter(logging.Formatter):
    """One JSON object per record, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # as the redacting filter left it
            entry["exception"] = record.exc_text
        return json.dumps(entry)


# Libraries that log at INFO or WARNING what the node must not show at those
# levels: highdicom names the source SOP Instance UID of every SEG it builds,
# pydicom quotes element values (a patient's name) when it warns about them,
# pynetdicom logs every PDU and the datasets in them, SQLAlchemy logs
# statements, uvicorn every request.  They speak only when the node logs at DEBUG.
QUIET_LOGGERS: dict[str, int] = {
    "pynetdicom": logging.CRITICAL,  # refused connections come as tracebacks; the node reports them in words
    "pydicom": logging.ERROR,
    "highdicom": logging.ERROR,
    "sqlalchemy": logging.WARNING,
    "alembic": logging.WARNING,
    "uvicorn": logging.WARNING,
    "uvicorn.access": logging.WARNING,
    "uvicorn.error": logging.WARNING,
    "fastapi": logging.WARNING,
    "starlette": logging.WARNING,
    "httpx": logging.WARNING,
    "PIL": logging.WARNING,
    "monai": logging.WARNING,
    "torch": logging.WARNING,
    "SimpleITK": logging.WARNING,
    "nibabel": logging.WARNING,
    "asyncio": logging.WARNING,
    "multipart": logging.WARNING,
    "py.warnings": logging.WARNING,
}
_WARNINGS_LOGGER = "py.warnings"


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line: str | None = None
) -> None:
    """``warnings.showwarning`` that logs instead of printing: a library's warnings at DEBUG, the node's at WARNING.

    Library warnings (pydicom's about element values, for one) quote the data
    they are about, and mean nothing to a PACS administrator.
    """
    third_party = "site-packages" in filename or "dist-packages" in filename
    logging.getLogger(_WARNINGS_LOGGER).log(
        logging.DEBUG if third_party else logging.WARNING, "%s: %s (%s:%d)", category.__name__, message,
        Path(filename).name, lineno,
    )


def configure_logging(
    level: str, fmt: str = "text", audit_file: Path | None = None, storage_dir: Path | None = None
) -> None:
    """Log to stderr (text with timestamps, or JSON lines); the audit trail goes to ``audit_file``.

    Unless ``level`` is DEBUG, third-party loggers are quietened (:data:`QUIET_LOGGERS`)
    and Python warnings go to the log at DEBUG.  Every handler masks UIDs and
    paths under ``storage_dir`` in records at INFO and above
    (:class:`dicomnode.redaction.RedactingFilter`): a backstop, the node's own
    messages name instances by position.  The audit file is created 0600.
    """
    debug = level.upper() == "DEBUG"
    # The storage folder as configured, absolute and with links resolved: messages may use any of them.
    forms = {str(storage_dir), str(storage_dir.absolute()), str(storage_dir.resolve())} if storage_dir is not None else set()
    masked = sorted(forms, key=len, reverse=True)  # longest first: /a/b/storage before storage
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(masked))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    audit = logging.getLogger("dicomnode.audit")
    audit.propagate = False  # its own file, whatever the console level
    if audit_file is not None:
        make_private_file(audit_file)  # before FileHandler opens it: 0600 whatever the umask
        file_handler = logging.FileHandler(audit_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        file_handler.addFilter(RedactingFilter(masked))
        audit.addHandler(file_handler)
        audit.setLevel(logging.INFO)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if debug else quiet)
    warnings.showwarning = _show_warning
    if debug:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)  # its DEBUG dumps every PDU byte


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))
