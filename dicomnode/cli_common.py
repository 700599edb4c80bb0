"""What every CLI command shares: exit codes, logging set-up and the configuration."""

from __future__ import annotations

import argparse
import logging
import sys

from dicomnode.config import Config, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps; quieten pynetdicom below WARNING."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every PDU at INFO/DEBUG, including dataset contents, and
    # tracebacks for refused connections that we report in plain words.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.INFO)


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))
