"""What routing and selection know of a series and its study, without the database (the command line need not load SQLAlchemy)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.states import SeriesState


@dataclass(frozen=True)
class SeriesFacts:
    """What routing looks at: all from the series' headers and the association that sent it."""

    modality: str | None
    body_part: str | None
    series_description: str | None
    sop_class_uid: str | None
    calling_ae: str | None
    study_description: str | None = None
    protocol_name: str | None = None
    image_type: str | None = None
    slice_thickness: float | None = None
    kernel: str | None = None


@dataclass(frozen=True)
class StudySeries:
    """One series of a study, for selection."""

    id: int
    series_number: int | None
    state: str
    modality: str | None
    sop_class_uid: str | None
    series_description: str | None
    image_type: str | None
    slice_thickness: float | None
    kernel: str | None
    frame_of_reference_uid: str | None
    instances: int
    frames: int  # images in all (a multi-frame instance counts its frames)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient of one instance
    last_received_at: datetime
    completion_reason: str | None
    processed: bool  # a job of it produced results already
    selection: str | None
    acquisition_number: int | None = None  # of its first instance: recons of one acquisition share it

    def name(self) -> str:
        """``series 3 (1.0 mm, B70f)``: how a reason names it (no patient data)."""
        bits = [f"{self.slice_thickness:g} mm" if self.slice_thickness else "", self.kernel or ""]
        detail = ", ".join(b for b in bits if b)
        return f"series {self.series_number if self.series_number is not None else '?'}" + (f" ({detail})" if detail else "")


def is_receiving(s: StudySeries) -> bool:
    """Whether instances of the series are still arriving."""
    return s.state == SeriesState.RECEIVING
