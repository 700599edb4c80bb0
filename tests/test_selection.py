"""Series selection rules on a study's series, and when a study is ready."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dicomnode.errors import ConfigError
from dicomnode.selection import SelectionConfig, choose, parse_selection, study_wait
from storage.study import StudySeries

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
CFG = SelectionConfig()


def series(i: int, thickness: float = 1.0, kernel: str = "B70f", **kw: object) -> StudySeries:
    base = StudySeries(
        id=i, series_number=i, state="complete", modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_description=f"Thorax {thickness} {kernel}", image_type="ORIGINAL\\PRIMARY\\AXIAL", slice_thickness=thickness,
        kernel=kernel, frame_of_reference_uid="1.2.3", instances=300, frames=300, orientation=AXIAL,
        last_received_at=NOW - timedelta(seconds=60), completion_reason="association_released", processed=False, selection=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def chosen(study: list[StudySeries]) -> list[int]:
    return [s.id for s in study if choose(s, study, CFG).chosen]


def test_one_series_per_acquisition_thin_lung_kernel_axial() -> None:
    study = [
        series(1, frames=2, instances=2, image_type="ORIGINAL\\PRIMARY\\LOCALIZER", series_description="Topogram"),
        series(2, 5.0, "B31f"), series(3, 1.0, "B70f"), series(4, 1.0, "B31f"),
        series(5, 2.0, "B70f", orientation=CORONAL, series_description="Cor 2.0"),
        series(6, 0.6, "B31f", image_type="DERIVED\\SECONDARY\\MIP", series_description="MIP 10 mm"),
    ]
    assert chosen(study) == [3]  # thin, lung kernel, axial; the rest says why not
    reasons = {s.id: choose(s, study, CFG).reason for s in study}
    assert "localizer" in reasons[1] and "series 3 (1 mm, B70f) of the same acquisition is processed instead" in reasons[2]
    assert "derived secondary" in reasons[6] and "processed instead" in reasons[5]


def test_another_acquisition_is_processed_too_and_thickness_range_first() -> None:
    study = [series(1, 0.4, "B70f"), series(2, 1.5, "B31f"), series(3, 1.0, "B70f", frame_of_reference_uid="9.9")]
    assert chosen(study) == [2, 3]  # 0.4 mm is outside 0.5-3 mm; the other acquisition stands alone
    assert "the only volumetric series of its acquisition" in choose(study[2], study, CFG).reason


def test_two_phases_in_one_frame_of_reference_are_two_acquisitions() -> None:
    study = [series(1, 1.0, acquisition_number=2), series(2, 5.0, "B31f", acquisition_number=2), series(3, 1.0, acquisition_number=3)]
    assert chosen(study) == [1, 3]  # arterial and venous: one result each, from their thin recons


def test_too_few_images_and_a_better_series_that_comes_late() -> None:
    assert not choose(series(1, frames=12), [series(1, frames=12)], CFG).chosen
    thick_done = series(1, 5.0, "B31f", processed=True)
    thin = series(2, 1.0, "B70f")
    choice = choose(thin, [thick_done, thin], CFG)
    assert choice.chosen and "better than series 1" in choice.reason  # a new run for that series only
    assert not choose(series(3, 5.0, "B31f"), [series(2, 1.0, processed=True), series(3, 5.0, "B31f")], CFG).chosen


def test_the_study_must_have_arrived() -> None:
    me = series(1, last_received_at=NOW - timedelta(seconds=2))
    wait, why = study_wait(me, [me], NOW, CFG, associations=1)
    assert wait == 0  # one association, released: the whole study came
    wait, why = study_wait(me, [me], NOW, CFG, associations=2)
    assert wait == pytest.approx(8.0) and "quiet" in why
    other = series(2, state="receiving", last_received_at=NOW - timedelta(seconds=1))
    wait, why = study_wait(me, [me, other], NOW, CFG, associations=1)
    assert wait >= 1 and "still arriving" in why
    assert study_wait(replace(me, last_received_at=NOW - timedelta(seconds=30)), [me], NOW + timedelta(seconds=30), CFG, 2)[0] == 0


def test_the_section_is_validated() -> None:
    assert parse_selection({"kernels": ["B6"]}).kernels_configured
    assert not parse_selection({}).kernels_configured
    for bad, message in (({"min_slice": 3}, "unknown key"), ({"thickness_mm": [3, 1]}, "thickness_mm"),
                         ({"kernels": ["("]}, "not a valid regular expression"), ({"enabled": "yes"}, "true or false")):
        with pytest.raises(ConfigError, match=message):
            parse_selection(bad)
