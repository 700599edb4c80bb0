"""ai: tensors and models.  Knows nothing about DICOM.

This package must not import :mod:`dicomnode` or :mod:`storage`.
"""

from __future__ import annotations

from ai.errors import AIError

__all__ = ["AIError"]
