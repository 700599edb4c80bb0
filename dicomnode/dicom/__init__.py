"""Stage 0, the DICOM vocabulary: status codes, SOP classes, UIDs, the header walker, slice geometry.

Everything else builds on these; they import no other stage.
"""
