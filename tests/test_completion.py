"""Series completion in a running node: which evidence completed the series, and when."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE

from dicomnode.node import Node
from dicomnode.net.scu import iter_dicom_files, parse_peer, send_files
from tests.conftest import jobs_of, series_of, wait_for_jobs
from tests.helpers import wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"


def open_assoc(node: Node):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    return assoc


def test_expected_count_completes_before_the_association_ends(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory(series_toml="quiet_seconds = 60")
    files = make_series("iia", slices=6, images_in_acquisition=True)
    assoc = open_assoc(node)
    try:
        for f in files:
            assert assoc.send_c_store(f).Status == 0
        [job] = wait_for_jobs(node, 1)  # while the association is still open
        assert job.completion_reason == "expected_count"
    finally:
        assoc.release()


def test_one_instance_per_association_waits_for_the_quiet_period(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory(series_toml="quiet_seconds = 3")
    files = make_series("single", slices=5)
    dest = parse_peer(f"DICOMNODE@127.0.0.1:{node.cfg.node.port}")
    for info in iter_dicom_files(files):
        assert send_files([info], dest).sent == 1
    [job] = wait_for_jobs(node, 1)
    assert job.completion_reason == "quiet_period"
    assert job.instance_count == 5 and job.version == 1


def test_missing_slice_waits_then_completes_with_the_reason(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory(series_toml="quiet_seconds = 0.5\nincomplete_timeout_seconds = 3")
    files = make_series("gap", slices=10)
    del files[4]
    dest = parse_peer(f"DICOMNODE@127.0.0.1:{node.cfg.node.port}")
    assert send_files(list(iter_dicom_files(files)), dest).sent == 9
    # Released and quiet, but a slice is missing: no job yet...
    wait_for(lambda: (lambda s: s and s[0].instance_count == 9)(series_of(node)), 10, what="9 instances")
    assert jobs_of(node) == []
    # ...until the incomplete timeout, which records why.
    [job] = wait_for_jobs(node, 1, timeout=15)
    assert job.completion_reason == "incomplete_timeout"
    [series] = series_of(node)
    assert "gap" in (series.completion_detail or "") and "1 slice(s) missing" in (series.completion_detail or "")


def test_gap_filled_late_completes_normally(node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]) -> None:
    node = node_factory(series_toml="quiet_seconds = 60\nincomplete_timeout_seconds = 120")
    files = make_series("fill", slices=8)
    dest = parse_peer(f"DICOMNODE@127.0.0.1:{node.cfg.node.port}")
    assert send_files(list(iter_dicom_files(files[:3] + files[4:])), dest).sent == 7
    # The missing slice arrives in its own association; the whole series did not
    # pass through one association, so only counts and gaps can decide: no gap now,
    # but no announced count either, so it completes on the quiet period.  Re-sending
    # the whole series in one association completes it at once.
    assert send_files(list(iter_dicom_files(files)), dest).sent == 8
    [job] = wait_for_jobs(node, 1)
    assert job.completion_reason == "association_released" and job.instance_count == 8
