"""A study's series, as series selection sees them, and the record of each choice.

Selection (``dicomnode.selection``) decides which series of a study a model
runs on; it needs every series of the study at once: its state and timing,
its headers' facts, its slice count and orientation, and whether a job of it
was already processed.  The choice ("chosen" or "skipped", and why) is kept
on the series, for ``dicomnode jobs`` and the status page.
"""

from __future__ import annotations


from sqlalchemy import Engine, func, select, update

from storage.database import as_utc, read_transaction, write_transaction
from storage.models import Instance, Job, Series, table_of
from storage.facts import StudySeries as StudySeries  # re-exported: it needs no database
from storage.facts import is_receiving as is_receiving
from storage.states import JobState

_series = table_of(Series)
_instances = table_of(Instance)
_jobs = table_of(Job)
PROCESSED = (JobState.DELIVERING, JobState.DONE, JobState.DELIVERY_FAILED)


def study_series(engine: Engine, study_uid: str) -> list[StudySeries]:
    """Every series of a study, oldest first."""
    with read_transaction(engine) as conn:
        rows = conn.execute(select(_series).where(_series.c.study_uid == study_uid).order_by(_series.c.id)).all()
        ids = [r.id for r in rows]
        counts: dict[int, tuple[int, int]] = {}
        orient: dict[int, object] = {}
        acquisitions: dict[int, int | None] = {}
        if ids:
            for r in conn.execute(
                select(
                    _instances.c.series_id, func.count().label("n"), func.sum(_instances.c.number_of_frames).label("frames"),
                    func.min(_instances.c.id).label("first"),
                ).where(_instances.c.series_id.in_(ids)).group_by(_instances.c.series_id)
            ):
                counts[r.series_id] = (int(r.n), int(r.frames or 0))
                orient[r.first] = r.series_id
            firsts = list(orient)
            orient = {}
            for r in conn.execute(
                select(_instances.c.series_id, _instances.c.orientation, _instances.c.acquisition_number)
                .where(_instances.c.id.in_(firsts))
            ):
                orient[r.series_id] = r.orientation
                acquisitions[r.series_id] = r.acquisition_number
        done = {
            r.series_id
            for r in conn.execute(select(_jobs.c.series_id).where(_jobs.c.series_id.in_(ids), _jobs.c.state.in_(PROCESSED)))
        } if ids else set()
    out = []
    for r in rows:
        n, frames = counts.get(r.id, (0, 0))
        out.append(StudySeries(
            r.id, r.series_number, r.state, r.modality, r.sop_class_uid, r.series_description, r.image_type,
            r.slice_thickness, r.kernel, r.frame_of_reference_uid, n, frames, _orientation(orient.get(r.id)),
            as_utc(r.last_received_at), r.completion_reason, r.id in done, r.selection, acquisitions.get(r.id),
        ))
    return out


def _orientation(value: object) -> tuple[float, ...] | None:
    """The JSON column's list as a tuple."""
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else None


def study_associations(engine: Engine, study_uid: str) -> set[str]:
    """The associations that carried the study's instances."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(_instances.c.assoc_uid).distinct()
            .join(_series, _series.c.id == _instances.c.series_id)
            .where(_series.c.study_uid == study_uid)
        ).all()
    return {r.assoc_uid for r in rows}


def record_selection(engine: Engine, series_id: int, selection: str, reason: str) -> None:
    """Keep why a series was chosen or skipped."""
    with write_transaction(engine) as conn:
        conn.execute(update(_series).where(_series.c.id == series_id).values(selection=selection, selection_reason=reason))


