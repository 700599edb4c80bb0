"""A job's DICOM outputs: SEG, TID 1500 SR and Secondary Capture key images, written durably.

The outputs belong to the source's patient and study: the identity
attributes are copied exactly from the first source image, and the SEG
shares its Frame of Reference.  Every output gets a new series, and all UIDs
derive from the job key (source series UID and job version) and the options
that change the content, so writing the same job again gives the same UIDs
and a re-send is idempotent at the PACS.  Source headers are read without
pixel data; nothing holds the series' pixels but the volume itself.

The objects themselves are built by :mod:`dicomnode.outputs.seg`,
:mod:`dicomnode.outputs.report` and :mod:`dicomnode.outputs.preview`; this module checks the
inputs, names the objects and writes them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicomnode import __version__
from dicomnode.errors import OutputError
from dicomnode.dicom.uids import derived_uid
from dicomnode.outputs.other_models import MERGED, SEPARATE, merge_into, other_segs
from storage.errors import StorageError
from storage.files import durable_write

if TYPE_CHECKING:
    from ai.bundle import Bundle
    from ai.engine import Result
    from ai.findings import Finding
    from dicomnode.outputs.seg import SourceFrame
    from dicomnode.volume.reconstruct import Volume

logger = logging.getLogger(__name__)

IDENTITY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
)
TYPE2_IDENTITY = frozenset(IDENTITY) - {"IssuerOfPatientID", "StudyInstanceUID"}  # written empty when the source lacks them
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality", "Rows", "Columns")
REQUIRED_SINGLE_FRAME = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
REQUIRED_MULTI_FRAME = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
SHARED = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write, and their series."""

    seg: bool = True
    sr: bool = True
    preview: bool = True
    kos: bool = True  # Key Object Selection of the key source slices and key images (when there are findings)
    max_key_images: int = 6
    fractional: bool = False  # FRACTIONAL SEG from the probabilities instead of BINARY
    keep_empty_frames: bool = False  # empty frames are omitted by default
    seg_series_number: int = 9001
    sr_series_number: int = 9002
    preview_series_number: int = 9003
    kos_series_number: int = 9004
    number_by_source: bool = True  # series number = base + 10 x the source's SeriesNumber (one block per source series)
    series_description_prefix: str = "AI"
    multi_model_seg: str = SEPARATE  # several segmentation models: one SEG each (separate) or one for all (merged)
    manufacturer: str = "dicomnode"
    software_version: str = __version__


@dataclass(frozen=True)
class OutputFile:
    """One written output."""

    path: Path
    kind: str  # seg | sr | preview | kos
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str


def _read_sources(paths: Sequence[Path]) -> list[Dataset]:
    """The headers of ``paths`` (a multi-frame image appears once per frame; it is read once)."""
    unique = list(dict.fromkeys(paths))
    out: list[Dataset] = []
    for i, p in enumerate(unique, start=1):
        try:
            out.append(dcmread(p, stop_before_pixels=True))
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            # The file name holds UIDs: name the source by its place, the reason by its kind.
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise OutputError(f"cannot read source image {i} of {len(unique)}: {reason}") from exc
    return out


def _check_sources(paths: Sequence[Path], sources: list[Dataset], volume: Volume) -> None:
    from dicomnode.outputs.seg import is_multiframe

    nz = volume.array.shape[0]
    if len(volume.sop_uids) != nz:
        raise OutputError(
            f"the volume has {nz} slices but {len(volume.sop_uids)} source images (was it resampled?): "
            "outputs need the source grid"
        )
    if len(paths) != nz:
        raise OutputError(f"{len(paths)} source file(s) for {nz} slices")
    for i, ds in enumerate(sources, start=1):
        missing = [k for k in REQUIRED + (REQUIRED_MULTI_FRAME if is_multiframe(ds) else REQUIRED_SINGLE_FRAME) if not ds.get(k)]
        if missing:
            raise OutputError(f"source image {i} of {len(sources)} lacks {', '.join(missing)}")
        for key in SHARED:
            if ds.get(key) != sources[0].get(key):
                raise OutputError(f"source image {i} of {len(sources)} has another {key} than the first")
    by_path = dict(zip(dict.fromkeys(paths), sources))
    for z, (p, uid) in enumerate(zip(paths, volume.sop_uids), start=1):
        if str(by_path[p].SOPInstanceUID) != uid:
            raise OutputError(f"source file {z} of {nz} is not slice {z} of the volume: pass the files in volume order")


def _copy_identity(ds: Dataset, source: Dataset, frame_of_reference: bool = True) -> None:
    """Patient and study exactly as the source has them (type 2 absent becomes empty, so the object stays valid)."""
    for key in IDENTITY:
        if key in source:
            setattr(ds, key, source[key].value)
        elif key in TYPE2_IDENTITY:
            setattr(ds, key, "")
        elif key in ds:
            del ds[key]
    if "SpecificCharacterSet" in source:  # the copied names are decoded text: write them in the source's set
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    if frame_of_reference:
        ds.FrameOfReferenceUID = source.FrameOfReferenceUID


def _seg_identity(seg: Dataset, source: Dataset) -> None:
    """A SEG's patient, study and Frame of Reference, and the body part, as the source has them."""
    _copy_identity(seg, source)
    if "BodyPartExamined" in source:
        seg.BodyPartExamined = source.BodyPartExamined


def _save(ds: Dataset, path: Path, kind: str, texts: Sequence[str]) -> OutputFile:
    if "SpecificCharacterSet" not in ds and not all(t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"  # our own texts (model name, intended use) need more than ASCII
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"cannot encode the {kind}: {exc}") from exc
    try:
        durable_write(path, [buf.getbuffer()])
    except StorageError as exc:
        raise OutputError(f"cannot write the {kind}: {exc}") from exc
    return OutputFile(
        path, kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.file_meta.TransferSyntaxUID)
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _slice_names(frames: Sequence[SourceFrame]) -> list[str]:
    """How a viewer numbers each slice: its InstanceNumber, or its frame in a multi-frame image."""
    out = []
    for z, f in enumerate(frames, start=1):
        if f.frame is not None:
            out.append(f"frame {f.frame}")
        else:
            n = f.dataset.get("InstanceNumber")
            out.append(str(n) if n not in (None, "") else f"slice {z}")
    return out


def _key_references(
    frames: Sequence[SourceFrame], findings: Sequence[Finding], key_images: Sequence[Dataset]
) -> list[tuple[Dataset, int | None]]:
    """What the Key Object Selection flags: each finding's source slice (once), then the key images."""
    seen: set[int] = set()
    out: list[tuple[Dataset, int | None]] = []
    for f in findings:
        z = f.key_slice(len(frames))
        if z not in seen:
            seen.add(z)
            out.append((frames[z].dataset, frames[z].frame))
    return out + [(sc, None) for sc in key_images]


def _kos_description(bundle: Bundle, findings: Sequence[Finding], frames: Sequence[SourceFrame], job_key: str) -> str:
    """The Key Object Description: each finding, where it is, its size, its image and its tracking UID."""
    from dicomnode.outputs.seg import tracking_uid

    names = _slice_names(frames)
    parts = []
    for f in findings:
        ax = f.lesion.axes
        size = f"{ax.long_mm:.1f} x {ax.short_mm:.1f} mm, " if ax is not None else ""
        where = f"{f.where}, " if f.where else ""
        sure = f", probability {f.lesion.probability:.2f}" if f.lesion.probability is not None else ""
        parts.append(
            f"{f.name}: {where}{size}{f.lesion.volume_ml:.2f} mL{sure}, image {names[f.key_slice(len(frames))]} "
            f"(tracking UID {tracking_uid(job_key, f.label.value, f.number)})"
        )
    return f"AI findings of {bundle.name} {bundle.version} ({bundle.intended_use}): " + "; ".join(parts)


def write_outputs(
    source_paths: Sequence[Path],
    volume: Volume,
    result: Result,
    bundle: Bundle,
    out_dir: Path,
    *,
    job_key: str,
    options: OutputOptions = OutputOptions(),
    notes: Sequence[str] = (),
    others: Sequence[tuple[Bundle, Result]] = (),
) -> list[OutputFile]:
    """Write the SEG, SR and key images of one job into ``out_dir``.

    Parameters
    ----------
    source_paths : sequence of pathlib.Path
        The source file of each slice of ``volume``, in volume order (a
        multi-frame source repeats once per slice).
    volume : Volume
        The reconstructed source volume (pixels for the key images).
    result : Result
        The model's labels on the source grid, measurements and class
        probabilities.  A classifier's result (no label map) gives an SR only.
    bundle : Bundle
        The model: labels, codes, colours, name, version, intended use.
    out_dir : pathlib.Path
        Where the files go (``seg.dcm``, ``sr.dcm``, ``preview-N.dcm``, ``kos.dcm``).
    job_key : str
        ``<source series UID>/<job version>``: the root of every output UID.
    options : OutputOptions
        Which outputs, SEG type, empty frames, series numbers and descriptions.
    notes : sequence of str
        What the report and the key images must say about the source, e.g.
        that the series was incomplete when it was processed.
    others : sequence of (Bundle, Result)
        Further segmentation models that ran on the same volume.  Each gets
        its own report (``sr-K.dcm``) and, as ``options.multi_model_seg``
        says, its own SEG (``seg-K.dcm``, ``separate``) or its segments in the
        first model's SEG (``merged``).  Key images and the Key Object
        Selection show the first model's findings.

    Returns
    -------
    list of OutputFile
        What was written: SEG, SR, the key images, then the Key Object Selection, then the other models' SEGs and reports.

    Raises
    ------
    OutputError
        The inputs disagree or an object cannot be built or written; the
        message says which, without patient data.
    """
    from ai.findings import findings as number_findings
    from dicomnode.outputs.kos import build_kos
    from dicomnode.outputs.key_image import build_key_image
    from dicomnode.outputs.preview import key_images, patient_orientation
    from dicomnode.outputs.report import SRParams, build_sr
    from dicomnode.outputs.seg import SegParams, build_seg, plan_segments, source_frames, tracking_uid
    from dicomnode.outputs.sr_content import Geometry

    labels = result.labels
    if labels is None and not result.class_probabilities and not result.classifications:
        raise OutputError(f"the model {bundle.name} produced no label map and no class scores")
    if labels is not None and labels.shape != volume.array.shape:
        raise OutputError(f"the label map {labels.shape} does not match the volume {volume.array.shape}")
    sources = _read_sources(source_paths)
    _check_sources(source_paths, sources, volume)
    frames: list[SourceFrame] = source_frames(sources, volume)
    first = sources[0]
    variant = f"{'fractional' if options.fractional else 'binary'}-{'all' if options.keep_empty_frames else 'sparse'}"
    merged = options.multi_model_seg == MERGED and bool(others)
    if merged:  # another content, so other UIDs than the first model's SEG alone
        variant += "-merged-" + "-".join(b.name for b, _ in others)
    if labels is not None and not result.findings:  # a result measured outside the engine: number its lesions here
        result = dataclasses.replace(result, findings=number_findings(result.measurements, bundle))

    def uid(kind: str, what: str, n: int = 0) -> str:
        return str(derived_uid("dicomnode-output", job_key, kind, variant if kind == "seg" else "", what, n))

    source_number = _int_or_none(first.get("SeriesNumber"))
    source_text = str(first.get("SeriesDescription", "") or "").strip()

    def number(base: int) -> int:
        """Per source series: the base plus ten times its number (source 3: SEG 9031, SR 9032...)."""
        return base + 10 * source_number if options.number_by_source and source_number is not None else base

    def description(kind: str, model: Bundle = bundle) -> str:
        """The series description: which source series, which model, and its intended use (a PACS list shows it)."""
        warning = model.intended_use.split(";")[-1].strip() or model.intended_use
        p, name = options.series_description_prefix, model.name
        long_src = f" of series {source_number}" if source_number is not None else ""
        short_src = f" of {source_number}" if source_number is not None else ""
        candidates = [
            f"{p} {name} {kind}{long_src} {source_text} - {model.intended_use}",
            f"{p} {name} {kind}{long_src} {source_text} - {warning}",
            f"{p} {name} {kind}{long_src} - {warning}",
            f"{p} {name} {kind}{short_src} - {warning}",
            f"{p} {kind}{long_src} - {warning}",
        ]
        for text in (" ".join(c.split()) for c in candidates):
            if len(text) <= 64:
                return text
        return " ".join(candidates[-1].split())[:64]

    texts = [options.series_description_prefix] + [
        t for b in (bundle, *(b for b, _ in others)) for t in (b.name, b.version, b.intended_use, *(lb.name for lb in b.labels))
    ]
    written: list[OutputFile] = []
    seg_ds: Dataset | None = None
    segments = plan_segments(labels, bundle, result.findings, job_key) if labels is not None else []
    if labels is None:
        logger.info("%s is a classifier: writing its report only", bundle.name)
    if options.seg and segments and labels is not None:
        seg_ds = build_seg(
            frames, labels, result.probabilities, bundle, segments,
            SegParams(
                series_uid=uid("seg", "series"), sop_uid=uid("seg", "instance"), uid_seed=job_key,
                series_number=number(options.seg_series_number), series_description=description("SEG"),
                manufacturer=options.manufacturer, software_version=options.software_version,
                fractional=options.fractional, keep_empty_frames=options.keep_empty_frames,
            ),
        )
        _seg_identity(seg_ds, first)
    elif options.seg and labels is not None:
        logger.info("%s found nothing to segment: no SEG (the report says so)", bundle.name)
    geo = Geometry(frames, volume.affine, str(first.FrameOfReferenceUID))
    extra = other_segs(
        frames, others, job_key, write_seg=options.seg, fractional=options.fractional,
        keep_empty_frames=options.keep_empty_frames, seg_series_number=lambda k: number(options.seg_series_number + 2 + 2 * k),
        uid=uid, description=lambda b: description("SEG", b),
        manufacturer=options.manufacturer, software_version=options.software_version,
    )
    for o in extra:
        if o.seg is not None:
            _seg_identity(o.seg, first)
    if merged:
        seg_ds, extra = merge_into(seg_ds, labels, extra)
    if seg_ds is not None:
        written.append(_save(seg_ds, out_dir / "seg.dcm", "seg", texts))
    if options.sr:
        sr = build_sr(
            frames, labels, geo, seg_ds, segments, result, bundle,
            SRParams(
                series_uid=uid("sr", "series"), sop_uid=uid("sr", "instance"), uid_seed=job_key,
                series_number=number(options.sr_series_number), series_description=description("report"),
                manufacturer=options.manufacturer, software_version=options.software_version,
            ),
            notes=notes,
        )
        _copy_identity(sr, first, frame_of_reference=False)  # an SR has no Frame of Reference of its own
        written.append(_save(sr, out_dir / "sr.dcm", "sr", texts))
    key_scs: list[Dataset] = []
    if options.preview and labels is not None:
        series_uid = uid("preview", "series")
        orientation = patient_orientation(volume.direction)
        by_number = {f.number: f for f in result.findings}
        images = key_images(
            volume.array, labels, bundle, volume.spacing, volume.direction, result.findings,
            instance_numbers=_slice_names(frames), limit=options.max_key_images, notes=notes,
        )
        for i, img in enumerate(images, start=1):
            f = by_number.get(img.finding) if img.finding is not None else None
            sc = build_key_image(
                frames[img.slice_index].dataset, img, bundle, series_uid=series_uid, sop_uid=uid("preview", "instance", i),
                instance_number=i, series_number=number(options.preview_series_number),
                series_description=description("key images"),
                manufacturer=options.manufacturer, software_version=options.software_version, orientation=orientation,
                source=frames[img.slice_index],
                tracking=(f.name, tracking_uid(job_key, f.label.value, f.number)) if f is not None else None,
            )
            _copy_identity(sc, first, frame_of_reference=False)
            written.append(_save(sc, out_dir / f"preview-{i}.dcm", "preview", texts))
            key_scs.append(sc)
    if options.kos and result.findings:
        kos = build_kos(
            _key_references(frames, result.findings, key_scs),
            description=_kos_description(bundle, result.findings, frames, job_key),
            series_uid=uid("kos", "series"), sop_uid=uid("kos", "instance"), series_number=number(options.kos_series_number),
            series_description=description("key objects"), manufacturer=options.manufacturer,
            software_version=options.software_version,
        )
        _copy_identity(kos, first, frame_of_reference=False)
        written.append(_save(kos, out_dir / "kos.dcm", "kos", texts))
    for k, o in enumerate(extra, start=1):
        if o.seg is not None and not merged:
            written.append(_save(o.seg, out_dir / f"seg-{k}.dcm", "seg", texts))
        if options.sr:
            sr = build_sr(
                frames, o.result.labels, geo, o.seg, o.segments, o.result, o.bundle,
                SRParams(
                    series_uid=uid("sr", f"series/{o.bundle.name}"), sop_uid=uid("sr", f"instance/{o.bundle.name}"),
                    uid_seed=o.seed, series_number=number(options.sr_series_number + 2 + 2 * k),
                    series_description=description("report", o.bundle),
                    manufacturer=options.manufacturer, software_version=options.software_version,
                ),
                notes=notes,
            )
            _copy_identity(sr, first, frame_of_reference=False)
            written.append(_save(sr, out_dir / f"sr-{k}.dcm", "sr", texts))
    logger.info(
        "wrote %d output object(s) for %s: %s", len(written), bundle.name, ", ".join(o.kind for o in written) or "none"
    )
    return written
