"""storage: the database (SQLAlchemy) and durable files.

This package knows records and files, never DICOM parsing or tensors.  It
must not import :mod:`dicomnode` or :mod:`ai`.
"""

from __future__ import annotations

from storage.errors import StorageError

__all__ = ["StorageError"]
