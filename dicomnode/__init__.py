"""dicomnode: an AI DICOM node for hospitals.

The ``dicomnode`` package is the DICOM world: networking, series handling,
the pipeline and the command-line interface.  It may import :mod:`ai` and
:mod:`storage`; neither of those imports it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from dicomnode.errors import DicomNodeError

__all__ = ["DicomNodeError", "__version__"]
