"""Exceptions of the :mod:`dicomnode` package.

Every error the package raises on purpose derives from :class:`DicomNodeError`,
so that callers (the CLI, the job runner) can catch one type and show its
message, which is written for a PACS administrator.
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Root of all errors raised by :mod:`dicomnode`."""


class ConfigError(DicomNodeError):
    """The configuration file or an environment override is invalid.

    The message names the offending key, e.g. ``node.port``.
    """


class NetworkError(DicomNodeError):
    """A DICOM association could not be made or a peer refused an operation."""


class IngestError(DicomNodeError):
    """An incoming instance could not be accepted.

    Parameters
    ----------
    message : str
        Human-readable reason, without patient data.
    status : int
        The DICOM status code to return to the sending peer.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class VolumeError(DicomNodeError):
    """A series cannot become a trustworthy volume; the message says why and names the instances involved."""


class OutputError(DicomNodeError):
    """A result could not be written as DICOM (SEG, SR or preview); the message says why."""
