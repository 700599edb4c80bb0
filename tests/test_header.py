"""The receiver's header reader: structure walk, refusals, file meta encoding."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from dicomnode.dicom import status
from dicomnode.errors import IngestError
from dicomnode.dicom.header import parse_header
from dicomnode.dicom.uids import IMPLEMENTATION_CLASS_UID
from dicomnode.receive.ingest import IMPLEMENTATION_VERSION, file_meta_bytes
from dicomnode.testing.synthetic import SeriesSpec, make_slice


def encode(ds: Dataset, ts: UID) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = ts.is_little_endian
    buf.is_implicit_VR = ts.is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue()


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_reads_identity_geometry_and_counts(ts: UID) -> None:
    spec = SeriesSpec(slices=5, images_in_acquisition=True, seed="hdr")
    ds = make_slice(spec, 2)
    h, st = parse_header(encode(ds, ts), ts)
    assert (h.study_uid, h.series_uid, h.sop_uid) == (spec.study_uid, spec.series_uid, spec.sop_uid(2))
    assert h.modality == "CT" and h.patient_id == "PHANTOM-001" and h.body_part == "CHEST"
    assert h.position == pytest.approx(spec.position(2)) and h.orientation == (1, 0, 0, 0, 1, 0)
    assert h.expected_count == 5 and h.number_of_frames == 1 and h.instance_number == 3
    assert st.pixel_value_length == 64 * 64 * 2


@pytest.mark.parametrize("cut", [5, 300, -100])
def test_truncated_data_is_refused(cut: int) -> None:
    data = encode(make_slice(SeriesSpec(seed="t"), 0), ExplicitVRLittleEndian)
    with pytest.raises(IngestError, match="truncated") as err:
        parse_header(data[:cut], ExplicitVRLittleEndian)
    assert err.value.status == status.ERROR_CANNOT_UNDERSTAND


def test_short_native_pixel_data_is_refused() -> None:
    ds = make_slice(SeriesSpec(seed="p"), 0)
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(IngestError, match="pixel data truncated: 1000 bytes"):
        parse_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)


def test_missing_and_unsafe_uids_are_refused() -> None:
    ds = make_slice(SeriesSpec(seed="u"), 0)
    del ds.SeriesInstanceUID
    with pytest.raises(IngestError, match="SeriesInstanceUID is missing"):
        parse_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    ds = make_slice(SeriesSpec(seed="u"), 0)
    ds.StudyInstanceUID = "../../etc"
    with pytest.raises(IngestError, match="StudyInstanceUID is not a valid UID"):
        parse_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)


def test_request_mismatch() -> None:
    data = encode(make_slice(SeriesSpec(seed="m"), 0), ExplicitVRLittleEndian)
    with pytest.raises(IngestError) as err:
        parse_header(data, ExplicitVRLittleEndian, affected_sop_class="1.2.840.10008.5.1.4.1.1.4")
    assert err.value.status == status.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_undefined_length_sequences_are_walked() -> None:
    ds = make_slice(SeriesSpec(seed="sq"), 0)
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3"
    inner = Dataset()
    inner.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        h, _ = parse_header(encode(ds, ts), ts)
        assert h.modality == "CT"


def test_encapsulated_jpeg2000_file() -> None:
    ds = dcmread(get_testdata_file("JPEG2000.dcm"))
    ts = ds.file_meta.TransferSyntaxUID
    data = encode(ds, ts)
    h, st = parse_header(data, ts)
    assert st.pixel_value_length is None and h.sop_uid == ds.SOPInstanceUID
    with pytest.raises(IngestError, match="truncated"):
        parse_header(data[:-50], ts)


@pytest.mark.parametrize("sop", ["1.2.3.4", "1.2.3.45"])  # even and odd lengths
def test_file_meta_matches_pydicom(sop: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    meta.SourceApplicationEntityTitle = "CT1"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    assert file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", sop, ExplicitVRLittleEndian, "CT1") == buf.getvalue()
