"""Volume reconstruction: geometry, rescale, codecs, mixed stacks, defects, against dcm2niix."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from dicomnode.errors import VolumeError
from dicomnode.testing.synthetic import SeriesSpec, make_slice, phantom_hu, write_series
from dicomnode.volume.reconstruct import VolumePolicy, reconstruct
from tests.helpers import require_tool
from tests.volume_helpers import assert_matches_dcm2niix, pydicom_hu

def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


_R = rotation(np.array([1.0, 0.3, 0.2]), 0.5)
OBLIQUE = tuple(float(v) for v in (*_R[:, 0], *_R[:, 1]))
ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
    "oblique": OBLIQUE,
}


def shuffle_names(files: list[Path]) -> None:
    """Rename files randomly and scramble InstanceNumber, so only positions can order them."""
    rng = random.Random(7)
    order = list(range(len(files)))
    rng.shuffle(order)
    for f, n in zip(files, order):
        ds = dcmread(f)
        ds.InstanceNumber = n + 1
        ds.save_as(f)
        f.rename(f.with_name(f"x{rng.randrange(10**9):09d}.dcm"))


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_orientations_match_dcm2niix(name: str, tmp_path: Path) -> None:
    spec = SeriesSpec(slices=12, rows=32, columns=40, orientation=ORIENTATIONS[name], seed=f"o-{name}")  # type: ignore[arg-type]
    d = tmp_path / "series"
    write_series(spec, d)
    shuffle_names(sorted(d.iterdir()))
    vol = reconstruct(d)
    assert vol.array.shape == (12, 32, 40)
    for k in range(12):  # slice k is the k-th along the normal, whatever the file order
        np.testing.assert_allclose(vol.array[k], np.clip(np.round(phantom_hu(spec, k) + 1024), 0, 4095) - 1024)
    np.testing.assert_allclose(vol.origin, spec.position(0), atol=1e-4)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.8, 2.5), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(vol.direction), 1.0, atol=1e-5)
    assert_matches_dcm2niix(vol, d, tmp_path / "nii")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    axis=st.lists(st.floats(-1, 1), min_size=3, max_size=3).filter(lambda v: np.linalg.norm(v) > 0.2),
    angle=st.floats(0, 6.28),
    spacing=st.floats(0.5, 5.0),
    count=st.integers(2, 9),
)
def test_any_orientation_and_spacing(tmp_path_factory: pytest.TempPathFactory, axis: list[float], angle: float, spacing: float, count: int) -> None:
    r = rotation(np.asarray(axis), angle)
    orientation = tuple(float(v) for v in (*r[:, 0], *r[:, 1]))
    spec = SeriesSpec(slices=count, rows=8, columns=6, orientation=orientation, slice_spacing=spacing, seed="h")  # type: ignore[arg-type]
    d = tmp_path_factory.mktemp("h")
    files = write_series(spec, d)
    random.Random(count).shuffle(files)
    vol = reconstruct(files)
    np.testing.assert_allclose(vol.spacing[2], spacing, rtol=1e-4)
    np.testing.assert_allclose(vol.origin, spec.position(0), atol=1e-3)
    np.testing.assert_allclose(vol.direction[:, 0], r[:, 0], atol=1e-5)
    np.testing.assert_allclose(vol.direction[:, 1], r[:, 1], atol=1e-5)
    for k in range(count):
        assert vol.array[k, 0, 0] == np.clip(np.round(phantom_hu(spec, k)[0, 0] + 1024), 0, 4095) - 1024


def test_rescale_per_slice_and_signed_pixels(tmp_path: Path) -> None:
    for spec in (SeriesSpec(slices=6, rescale_per_slice=True, seed="r"), SeriesSpec(slices=6, signed=True, seed="s")):
        d = tmp_path / spec.seed
        files = write_series(spec, d)
        vol = reconstruct(d)
        expect = np.stack([pydicom_hu(f) for f in files])
        np.testing.assert_allclose(vol.array, expect, atol=1e-4)
        assert vol.array.dtype == (np.float32 if spec.rescale_per_slice else np.int16)
        assert_matches_dcm2niix(vol, d, tmp_path / f"nii-{spec.seed}")


CODECS = [
    ("dcmcjpeg", [], "jpeg-lossless"),
    ("dcmcjpls", [], "jpeg-ls"),
    ("dcmcrle", [], "rle"),
    ("pydicom-j2k", [], "jpeg2000"),
]


@pytest.mark.parametrize(("tool", "args", "label"), CODECS)
def test_compressed_series_decode_to_the_same_volume(tool: str, args: list[str], label: str, tmp_path: Path) -> None:
    spec = SeriesSpec(slices=20, rows=48, columns=48, seed=f"c-{label}")
    plain = tmp_path / "plain"
    files = write_series(spec, plain)
    comp = tmp_path / label
    comp.mkdir()
    for f in files:
        out = comp / f.name
        if tool == "pydicom-j2k":
            from pydicom.uid import JPEG2000Lossless

            ds = dcmread(f)
            ds.compress(JPEG2000Lossless)
            ds.save_as(out)
        else:
            subprocess.run([require_tool(tool), *args, str(f), str(out)], check=True, capture_output=True)
    assert dcmread(comp / files[0].name).file_meta.TransferSyntaxUID.is_compressed
    ref = reconstruct(plain)
    for workers in (1, 2):  # in-process, and with worker processes
        vol = reconstruct(comp, VolumePolicy(workers=workers))
        np.testing.assert_array_equal(vol.array, ref.array)
    if label != "jpeg-ls":  # dcm2niix 1.0.20220720 has no JPEG-LS decoder
        assert_matches_dcm2niix(vol, comp, tmp_path / f"nii-{label}")


def test_enhanced_multiframe_ct_matches_dcm2niix(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    src = get_testdata_file("eCT_Supplemental.dcm")
    assert src, "pydicom-data is needed (installed by scripts/test.sh)"
    d = tmp_path / "ect"
    d.mkdir()
    shutil.copy(src, d / "ect.dcm")
    vol = reconstruct(d)
    ds = dcmread(src)
    assert vol.array.shape == (int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    assert_matches_dcm2niix(vol, d, tmp_path / "nii")


def test_vendor_files_from_pydicom(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        vol = reconstruct([Path(get_testdata_file(name))])  # type: ignore[arg-type]
        np.testing.assert_allclose(vol.array[0], pydicom_hu(Path(get_testdata_file(name))))  # type: ignore[arg-type]


def test_localizer_and_second_echo_are_left_out_and_recorded(tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    write_series(SeriesSpec(slices=10, seed="main"), d)
    scout = make_slice(SeriesSpec(slices=1, orientation=(1, 0, 0, 0, 0, -1), seed="main"), 0)
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = "1.2.3.99"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(d / "scout.dcm", enforce_file_format=True)
    for i in range(10):  # echo 2 at the same positions
        ds = make_slice(SeriesSpec(slices=10, seed="main"), i)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.{1000 + i}"
        ds.EchoNumbers = 2
        ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) + 1).astype(np.uint16).tobytes()
        ds.save_as(d / f"echo2-{i}.dcm", enforce_file_format=True)
    vol = reconstruct(d)
    assert vol.array.shape[0] == 10
    reasons = " | ".join(f"{e.count}: {e.reason}" for e in vol.excluded)
    assert "1: localizer" in reasons and "10: other echo" in reasons
    second = reconstruct(d, VolumePolicy(prefer={"echo": 2}))
    np.testing.assert_array_equal(second.array, vol.array + 1)
    with pytest.raises(VolumeError, match="asks for echo 3"):
        reconstruct(d, VolumePolicy(prefer={"echo": 3}))


def _series(tmp_path: Path, n: int = 10, **kw: object) -> list[Path]:
    return write_series(SeriesSpec(slices=n, seed="defect", **kw), tmp_path / "d")  # type: ignore[arg-type]


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    files = _series(tmp_path)
    files[4].unlink()
    with pytest.raises(VolumeError, match=r"missing slice.*gap of 5\.00 mm.*about 1 slice"):
        reconstruct(tmp_path / "d")


def test_duplicate_positions_name_the_instances(tmp_path: Path) -> None:
    files = _series(tmp_path)
    ds = dcmread(files[3])
    ds.ImagePositionPatient = dcmread(files[2]).ImagePositionPatient
    ds.save_as(files[3])
    with pytest.raises(VolumeError, match=r"duplicate slice positions: instance 3 of 10 \(InstanceNumber 3\) and instance 4 of 10 \(InstanceNumber 4\)"):
        reconstruct(tmp_path / "d")


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    _series(tmp_path)
    write_series(SeriesSpec(slices=6, orientation=(0, 1, 0, 0, 0, -1), seed="sag"), tmp_path / "d" / "sag")
    with pytest.raises(VolumeError, match="mixed orientations: 10 axial images and 6 sagittal images"):
        reconstruct(tmp_path / "d")


def test_inconsistent_size_is_refused(tmp_path: Path) -> None:
    files = _series(tmp_path)
    ds = make_slice(SeriesSpec(slices=10, rows=32, columns=32, seed="defect"), 5)
    ds.save_as(files[5], enforce_file_format=True)
    with pytest.raises(VolumeError, match="inconsistent image size: 32x32 and 64x64"):
        reconstruct(tmp_path / "d")


def test_nonuniform_spacing_refused_by_default_and_resampled_on_request(tmp_path: Path) -> None:
    files = _series(tmp_path)
    ds = dcmread(files[5])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.6]
    ds.save_as(files[5])
    with pytest.raises(VolumeError, match="non-uniform slice spacing"):
        reconstruct(tmp_path / "d")
    vol = reconstruct(tmp_path / "d", VolumePolicy(resample_nonuniform=True))
    assert vol.array.shape[0] == 10 and vol.spacing[2] == pytest.approx(2.5)
    assert any("resampled" in e.reason for e in vol.excluded)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    files = _series(tmp_path)
    for i, f in enumerate(files):
        ds = dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * i, z]
        ds.save_as(f)
    with pytest.raises(VolumeError, match="gantry tilt of 11.3 degrees"):
        reconstruct(tmp_path / "d")


def _blank(path: Path, compress: bool = False) -> None:
    """Make one slice uniform (all 0), optionally RLE-compressing it as a codec would have delivered it."""
    from pydicom.uid import RLELossless

    ds = dcmread(path)
    ds.PixelData = bytes(len(ds.PixelData))
    if compress:
        ds.compress(RLELossless)
    ds.save_as(path)


def test_a_compressed_slice_that_decodes_blank_among_good_ones_is_an_error(tmp_path: Path) -> None:
    files = _series(tmp_path)
    _blank(files[6], compress=True)
    with pytest.raises(VolumeError, match=r"instance 7 .*is compressed and decoded to a constant image.*decoder is broken"):
        reconstruct(tmp_path / "d")


def test_uniform_slices_are_accepted_where_no_codec_was_involved(tmp_path: Path) -> None:
    """Masked MPR or atlas ends, air above a head: uniform slices are data, not a broken codec."""
    files = _series(tmp_path)
    for f in (files[0], files[1], files[6], files[9]):  # uncompressed: never blamed, wherever they are
        _blank(f)
    vol = reconstruct(tmp_path / "d")
    assert vol.array.shape[0] == 10 and (vol.array[0] == vol.array[0].flat[0]).all()
    # A compressed run of uniform slices at the end (a masked end) is no decoder failure either.
    _blank(files[8], compress=True)
    _blank(files[9], compress=True)
    assert reconstruct(tmp_path / "d").array.shape[0] == 10


def test_convert_command_writes_nifti(tmp_path: Path) -> None:
    import sys

    import nibabel as nib

    _series(tmp_path)
    out = tmp_path / "v.nii.gz"
    r = subprocess.run([sys.executable, "-m", "dicomnode", "convert", str(tmp_path / "d"), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "64x64x10 voxels" in r.stdout
    assert nib.load(out).shape == (64, 64, 10)
    (tmp_path / "d" / "IM0005.dcm").unlink()
    r = subprocess.run([sys.executable, "-m", "dicomnode", "convert", str(tmp_path / "d"), str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and "missing slice" in r.stderr
