"""What every CLI command shares: exit codes, logging set-up and the configuration."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dicomnode.config import Config, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class JSONFormatter(logging.Formatter):
    """One JSON object per record, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str = "text", audit_file: Path | None = None) -> None:
    """Log to stderr (text with timestamps, or JSON lines); the audit trail goes to ``audit_file``.

    pynetdicom is quietened below WARNING.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    audit = logging.getLogger("dicomnode.audit")
    audit.propagate = False  # its own file, whatever the console level
    if audit_file is not None:
        audit_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(audit_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        audit.addHandler(file_handler)
        audit.setLevel(logging.INFO)
    # pynetdicom logs every PDU at INFO/DEBUG, including dataset contents, and
    # tracebacks for refused connections that we report in plain words.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.INFO)


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))
