"""Synthetic DICOM series with known geometry, for tests, benchmarks and demos.

No real patient data ships with the node; these series are generated.  The
UIDs derive from a seed, so the same call always writes the same series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from dicomnode.dicom.uids import derived_uid

if TYPE_CHECKING:
    from ai.phantoms import Phantom

@dataclass(frozen=True)
class SeriesSpec:
    """Geometry and identity of a synthetic CT series."""

    slices: int = 20
    rows: int = 64
    columns: int = 64
    pixel_spacing: tuple[float, float] = (0.8, 0.8)
    slice_spacing: float = 2.5
    orientation: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0)
    origin: tuple[float, float, float] = (-100.0, -100.0, -50.0)
    seed: str = "series-1"
    patient_id: str = "PHANTOM-001"
    patient_name: str = "Phantom^Chest"
    body_part: str | None = "CHEST"  # None: no BodyPartExamined at all
    series_description: str | None = None  # default: "Synthetic chest CT <seed>"
    images_in_acquisition: bool = False
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    signed: bool = False  # PixelRepresentation 1: store HU directly as int16
    rescale_per_slice: bool = False  # slope and intercept differ between slices
    # Where slice i+1 lies from slice i (unit vector); default: the row x column normal.  A feet-first
    # scan stacks its slices against that normal.
    slice_direction: tuple[float, float, float] | None = None
    patient_position: str = "HFS"

    def rescale(self, index: int) -> tuple[float, float]:
        """(slope, intercept) of slice ``index``."""
        if self.signed:
            return 1.0, 0.0
        if self.rescale_per_slice:
            return (1.0, 0.5, 2.0)[index % 3], self.rescale_intercept + 8.0 * (index % 2)
        return self.rescale_slope, self.rescale_intercept

    @property
    def study_uid(self) -> UID:
        return derived_uid(self.seed, "study")

    @property
    def series_uid(self) -> UID:
        return derived_uid(self.seed, "series")

    def sop_uid(self, index: int) -> UID:
        return derived_uid(self.seed, "sop", index)

    def position(self, index: int) -> tuple[float, float, float]:
        o = np.asarray(self.orientation, dtype=float)
        normal = np.asarray(self.slice_direction, dtype=float) if self.slice_direction is not None else np.cross(o[:3], o[3:])
        p = np.asarray(self.origin) + index * self.slice_spacing * normal
        return (float(p[0]), float(p[1]), float(p[2]))


def phantom_hu(spec: SeriesSpec, index: int) -> np.ndarray:
    """HU of one slice: air, a body ellipse with two lungs, varying a little from slice to slice."""
    r, c = spec.rows, spec.columns
    y, x = np.ogrid[-1 : 1 : complex(0, r), -1 : 1 : complex(0, c)]
    hu = np.full((r, c), -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1] = 40.0
    lung = ((x + 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1
    lung |= ((x - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1
    hu[lung] = -850.0
    hu += 10.0 * np.sin(index / 3.0)  # slices differ, so a mixed-up order shows
    hu[: r // 8, : c // 8] += np.arange((r // 8) * (c // 8)).reshape(r // 8, c // 8) % 7  # texture
    return hu


def phantom_slice(spec: SeriesSpec, index: int) -> np.ndarray:
    """Stored values of one slice (uint16, or int16 when ``spec.signed``)."""
    hu = phantom_hu(spec, index)
    if spec.signed:
        return np.round(hu).astype(np.int16)
    slope, intercept = spec.rescale(index)
    stored = np.round((hu - intercept) / slope)
    return np.clip(stored, 0, 4095).astype(np.uint16)


def make_slice(spec: SeriesSpec, index: int, stored: np.ndarray | None = None) -> Dataset:
    """One CT Image Storage dataset (with file meta) of the series.

    ``stored`` replaces the built-in phantom's pixels (rows x columns, uint16, or
    int16 when ``spec.signed``).
    """
    now = datetime(2026, 1, 2, 3, 4, 5)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = spec.sop_uid(index)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = spec.sop_uid(index)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "ACC" + spec.seed[-8:]
    ds.Modality = "CT"
    ds.Manufacturer = "dicomnode synthetic"
    ds.ReferringPhysicianName = "Referrer^Doctor"
    ds.SeriesDescription = (spec.series_description if spec.series_description is not None else f"Synthetic chest CT {spec.seed}")[:64]
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    if spec.body_part is not None:
        ds.BodyPartExamined = spec.body_part
    ds.PatientPosition = spec.patient_position
    ds.SliceThickness = spec.slice_spacing
    ds.KVP = 120
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [f"{v:.10g}" for v in spec.position(index)]
    ds.ImageOrientationPatient = [f"{v:.10g}" for v in spec.orientation]
    ds.FrameOfReferenceUID = derived_uid(spec.seed, "for")
    ds.PositionReferenceIndicator = ""
    if spec.images_in_acquisition:
        ds.ImagesInAcquisition = spec.slices
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if spec.signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if spec.signed else 0
    slope, intercept = spec.rescale(index)
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    pixels = phantom_slice(spec, index) if stored is None else stored
    if pixels.shape != (spec.rows, spec.columns):
        raise ValueError(f"slice {index} has shape {pixels.shape}, not {spec.rows}x{spec.columns}")
    ds.PixelData = pixels.astype(np.int16 if spec.signed else np.uint16).tobytes()
    return ds


def write_series(
    spec: SeriesSpec, out_dir: Path, indices: Sequence[int] | None = None, volume: np.ndarray | None = None
) -> list[Path]:
    """Write the series (or only ``indices``) as Part 10 files ``IM0001.dcm``...

    ``volume`` (``[z, y, x]``) gives the stored pixels instead of the built-in phantom.

    Returns
    -------
    list of pathlib.Path
        The files, in index order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(spec.slices) if indices is None else indices:
        p = out_dir / f"IM{i + 1:04d}.dcm"
        make_slice(spec, i, None if volume is None else volume[i]).save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def write_phantom(ph: Phantom, out_dir: Path) -> list[Path]:
    """Write a chest phantom (:func:`ai.phantoms.generate`) as a CT series with its own identity.

    The image orientation, slice direction and PatientPosition follow the
    phantom's (supine or prone, head- or feet-first), so the series means
    the same patient anatomy as its label map.
    """
    px, py, dz = ph.spacing
    nz, ny, nx = ph.hu.shape
    d = np.asarray(ph.direction, dtype=float)
    spec = SeriesSpec(
        slices=nz, rows=ny, columns=nx, pixel_spacing=(py, px), slice_spacing=dz, origin=ph.origin_lps,
        orientation=(float(d[0, 0]), float(d[1, 0]), float(d[2, 0]), float(d[0, 1]), float(d[1, 1]), float(d[2, 1])),
        slice_direction=(float(d[0, 2]), float(d[1, 2]), float(d[2, 2])), patient_position=ph.position,
        seed=f"phantom-{ph.seed}", patient_id=f"PHANTOM-{ph.seed:04d}", patient_name=f"Phantom^{ph.seed}", signed=True,
    )
    return write_series(spec, out_dir, volume=ph.hu)
