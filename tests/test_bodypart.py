"""Body part from a vocabulary, then the descriptions, then nothing (the anatomy gate decides)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicomnode.bodypart import body_regions, covers
from dicomnode.routing import Router, RoutingConfig, SeriesFacts

CT = SeriesFacts("CT", None, None, "1.2.840.10008.5.1.4.1.1.2", "SCANNER")


@pytest.mark.parametrize(
    "value", ["CHEST", "chest", " Chest ", "THORAX", "Thorax", "LUNG", "CHESTABDOMEN", "CHEST_ABDOMEN_PELVIS",
              "Chest/Abdomen/Pelvis", "WHOLEBODY", "WHOLE_BODY", "TORSO", "THORAX_ABDOMEN"],
)
def test_spellings_of_the_chest(value: str) -> None:
    r = body_regions(value)
    assert "CHEST" in r.regions and r.source == "BodyPartExamined"
    assert covers(("CHEST",), r)


@pytest.mark.parametrize("value", ["HEAD", "BRAIN", "ABDOMEN", "PELVIS", "KNEE", "ABDOMEN_PELVIS", "NECK"])
def test_other_regions_are_not_the_chest(value: str) -> None:
    r = body_regions(value, "Thorax 1.0")  # the body part wins over a description
    assert r.known and "CHEST" not in r.regions and not covers(("CHEST",), r)


@pytest.mark.parametrize(
    ("series", "study", "protocol", "source"),
    [
        ("Thorax 1.0 B70f", None, None, "SeriesDescription"),
        ("1.0 B70f", "CT CHEST W/O CONTRAST", None, "StudyDescription"),
        ("Recon 2", "", "LDCT Lung Screening", "ProtocolName"),
        ("C/A/P venous", None, None, "SeriesDescription"),
    ],
)
def test_an_empty_body_part_is_read_from_the_descriptions(series: str, study: str | None, protocol: str | None, source: str) -> None:
    r = body_regions("", series, study, protocol)
    assert "CHEST" in r.regions and r.source == source
    assert source in r.describe()


def test_nothing_said_leaves_it_to_the_image() -> None:
    r = body_regions(None, "Recon 3 1.0 mm", None, None)
    assert not r.known and covers(("CHEST",), r)  # the model runs; its anatomy gate decides
    assert not body_regions("XYZZY").known


class _Model:
    def __init__(self, name: str, body: tuple[str, ...]) -> None:
        self.name, self.task, self.modalities, self.body_parts = name, "segmentation", ("CT",), body


def test_default_routing_uses_the_vocabulary_and_says_why() -> None:
    chest = _Model("chest", ("CHEST",))
    router = Router((), RoutingConfig(), ["pacs"])

    def plan(facts: SeriesFacts) -> str:
        p = router.plan(facts, lambda n: chest, lambda: [chest])
        return f"{p.action.value}: {p.reason}"

    assert plan(replace(CT, body_part="THORAX")).startswith("run: model filters; body part CHEST (BodyPartExamined 'THORAX')")
    assert plan(replace(CT, body_part="lung")).startswith("run:")
    assert "the model's anatomy gate decides" in plan(CT)  # nothing says: run, the gate looks at the image
    assert plan(replace(CT, body_part="HEAD")).startswith("ignore: no model applies to modality CT / body part HEAD, read as HEAD")
    assert plan(replace(CT, study_description="CT Brain")).startswith("ignore:")
