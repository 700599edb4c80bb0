"""What a notification says about a job: its outcome, its study, and the findings of its report.

Read from the database and from the job's own files: the identity (patient,
study, accession number) from its SR (a copy of the source's) or, for a job
that made no report, from a source image's header; the findings from the
SR's measurement groups (name, volume, site).  Nothing here is logged: a
notification goes to a RIS or an EHR, which need the patient and study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, select

from storage.models import Job, Series, table_of
from storage.outbox import outputs_for
from storage.queue import series_files
from storage.states import OutputKind

if TYPE_CHECKING:
    from dicomnode.config import NodeConfig

_jobs = table_of(Job)
_series = table_of(Series)


@dataclass
class JobSummary:
    """A job's end, as a notification tells it."""

    job: int
    event: str  # done | failed
    state: str
    error: str | None
    model: str | None
    patient_id: str = ""
    patient_name: str = ""
    study_instance_uid: str = ""
    accession_number: str = ""
    study_date: str = ""
    modality: str = ""
    series_number: int | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""  # one line: "2 finding(s): nodule 1 (upper lobe of right lung) 0.52 mL, probability 0.91; ..."
    intended_use: str = ""

    def as_json(self) -> dict[str, Any]:
        """The webhook's body."""
        return {**asdict(self), "event": f"job.{self.event}"}


def _findings(sr: Dataset) -> tuple[list[dict[str, Any]], str]:
    """Each measurement group of a TID 1500 report (its tracking identifier, volume, site) and the report's comment."""
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=False)
    content: Any = report.content  # a MeasurementReport (typed as its base class)
    out = []
    for g in content.get_volumetric_roi_measurement_groups():
        name = str(g.tracking_identifier)
        volume = next((float(m.value) for m in g.get_measurements() if m.name.meaning == "Volume"), None)
        probability = next((float(m.value) for m in g.get_measurements() if m.name.meaning == "Probability"), None)
        site = ""
        for fs in g.finding_sites or []:
            site = str(fs.value.meaning)
            lat = fs.get("ContentSequence")
            if lat:
                site = f"{site}, {lat[0].ConceptCodeSequence[0].CodeMeaning}".lower()
        out.append({"name": name, "volume_ml": volume, "site": site, "probability": probability})
    comment = ""
    for item in sr.ContentSequence:
        for sub in item.get("ContentSequence", []):
            if sub.get("ValueType") == "TEXT":
                comment = str(sub.TextValue)
    return out, comment


def summarize(engine: Engine, node: NodeConfig, job_id: int, event: str) -> JobSummary:
    """The summary of a job that ended."""
    from storage.database import read_transaction
    from storage.quarantine import locate_files

    with read_transaction(engine) as conn:
        job = conn.execute(select(_jobs).where(_jobs.c.id == job_id)).one()
        series = conn.execute(select(_series).where(_series.c.id == job.series_id)).one()
    s = JobSummary(job=job_id, event=event, state=job.state, error=job.error, model=job.model, modality=series.modality or "",
                   series_number=series.series_number, study_instance_uid=series.study_uid)
    header: Dataset | None = None
    sr = next((o for o in outputs_for(engine, job_id) if o.kind == OutputKind.SR), None)
    try:
        if sr is not None:
            ds = dcmread(node.storage_dir / sr.path)
            header = ds
            s.findings, comment = _findings(ds)
            s.intended_use = comment.split("Intended use:", 1)[-1].split(".")[0].strip() if "Intended use:" in comment else ""
        else:
            files = series_files(engine, job.series_id)[:1]  # the identity of one source image (the files may be quarantined)
            where = locate_files(engine, job.series_id, [rel for _, rel, _ in files], node.incoming_dir, node.quarantine_dir)
            if files and where[files[0][1]].is_file():
                header = dcmread(where[files[0][1]], stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError):
        pass  # the identity may still be there (header); the findings are left out
    if header is not None:
        s.patient_id = str(header.get("PatientID", "") or "")
        s.patient_name = str(header.get("PatientName", "") or "")
        s.accession_number = str(header.get("AccessionNumber", "") or "")
        s.study_date = str(header.get("StudyDate", "") or "")
    lesions = [f for f in s.findings if f["name"].split(" ")[-1].isdigit()]
    if event == "failed":
        s.summary = f"AI processing failed: {job.error or job.state}"
    elif lesions:
        s.summary = f"{len(lesions)} finding(s): " + "; ".join(
            f"{f['name']}" + (f" ({f['site']})" if f["site"] else "") + (f" {f['volume_ml']:.2f} mL" if f["volume_ml"] is not None else "")
            + (f", probability {f['probability']:.2f}" if f.get("probability") is not None else "")
            for f in lesions
        )
    else:
        s.summary = "no finding" if sr is not None else f"job {job.state}"
    return s
