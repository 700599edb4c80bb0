"""Which body regions a series shows: BodyPartExamined through a vocabulary, then the descriptions.

Vendors spell BodyPartExamined in many ways (CHEST, THORAX, LUNG,
CHEST_ABDOMEN_PELVIS, "Chest "), and many leave it empty.  A value is
compared case-insensitively with spaces, underscores and dashes removed, and
mapped to the regions it covers (CHESTABDOMEN covers CHEST and ABDOMEN).
When it is empty or unknown, the words of the SeriesDescription, then the
StudyDescription, then the ProtocolName decide.  When nothing says, the
region is unknown: a model that declares body parts still runs, and its
anatomy gate looks at the image itself (a job with no plausible anatomy ends
"not applicable", never "failed").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD, NECK, CHEST, ABDOMEN, PELVIS, EXTREMITY, SPINE, BREAST, HEART = (
    "HEAD", "NECK", "CHEST", "ABDOMEN", "PELVIS", "EXTREMITY", "SPINE", "BREAST", "HEART"
)
TRUNK = frozenset({CHEST, ABDOMEN, PELVIS})
WHOLE = frozenset({HEAD, NECK, CHEST, ABDOMEN, PELVIS, SPINE})

# BodyPartExamined values (normalised: upper case, letters and digits only) -> regions.
VOCABULARY: dict[str, frozenset[str]] = {
    **{k: frozenset({CHEST}) for k in ("CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "THX", "TORAX", "TORACE", "BRUST",
                                        "POUMON", "PULMONARY", "CHESTWALL", "RIBS", "MEDIASTINUM")},
    **{k: frozenset({HEART, CHEST}) for k in ("HEART", "CARDIAC", "CORONARY", "AORTA", "THORACICAORTA")},
    **{k: frozenset({CHEST, ABDOMEN}) for k in ("CHESTABDOMEN", "THORAXABDOMEN", "CHESTABD", "THORAXABD")},
    **{k: TRUNK for k in ("CHESTABDOMENPELVIS", "THORAXABDOMENPELVIS", "CAP", "TAP", "CHESTABDPELVIS", "TORSO", "TRUNK",
                          "THORAXABDOMENBECKEN", "CHESTABDOMENPELVICS")},
    **{k: WHOLE for k in ("WHOLEBODY", "WHOLE", "WB", "HEADTOTOE", "EYETOTHIGH", "SKULLTOTHIGH")},
    **{k: frozenset({ABDOMEN}) for k in ("ABDOMEN", "ABD", "LIVER", "KIDNEY", "PANCREAS", "UPPERABDOMEN")},
    **{k: frozenset({ABDOMEN, PELVIS}) for k in ("ABDOMENPELVIS", "ABDPELVIS", "ABDOMENPELVIC")},
    **{k: frozenset({PELVIS}) for k in ("PELVIS", "PROSTATE", "BLADDER", "HIP", "HIPS", "BECKEN")},
    **{k: frozenset({HEAD}) for k in ("HEAD", "BRAIN", "SKULL", "CRANIUM", "KOPF", "SCHAEDEL", "IAC", "ORBIT", "SINUS", "FACE")},
    **{k: frozenset({HEAD, NECK}) for k in ("HEADNECK", "HEADANDNECK", "HN")},
    **{k: frozenset({NECK}) for k in ("NECK", "CSPINE", "HALS", "THYROID", "LARYNX")},
    **{k: frozenset({SPINE}) for k in ("SPINE", "TSPINE", "LSPINE", "LUMBARSPINE", "THORACICSPINE", "SACRUM")},
    **{k: frozenset({BREAST}) for k in ("BREAST", "MAMMA")},
    **{k: frozenset({EXTREMITY}) for k in ("KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW", "SHOULDER", "ARM", "LEG",
                                            "EXTREMITY", "LOWEREXTREMITY", "UPPEREXTREMITY", "FEMUR", "TIBIA")},
}

# Words of a description that name a region (whole words, upper case).
_WORDS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = tuple(
    (re.compile(pattern), regions)
    for pattern, regions in (
        (r"\b(C/A/P|CAP|TAP|CHEST[ /+-]*ABD(OMEN)?[ /+-]*PELV(IS)?|THORAX[ /+-]*ABD(OMEN)?[ /+-]*(PELV(IS)?|BECKEN))\b", TRUNK),
        (r"\bWHOLE[ -]?BODY\b", WHOLE),
        (r"\b(CHEST|THORAX|THORACIC|THORAC|THOR|LUNGS?|PULMONARY|PULM|CTPA|LDCT|LUNG[ -]?SCREEN(ING)?|HRCT)\b", frozenset({CHEST})),
        (r"\b(ABDOMEN|ABDO|ABD|LIVER|PANCREAS|RENAL|KIDNEYS?)\b", frozenset({ABDOMEN})),
        (r"\b(PELVIS|PELVIC|PROSTATE)\b", frozenset({PELVIS})),
        (r"\b(HEAD|BRAIN|SKULL|CRANIAL|CRANIUM|CT[ -]?HEAD)\b", frozenset({HEAD})),
        (r"\b(NECK|CERVICAL)\b", frozenset({NECK})),
    )
)


@dataclass(frozen=True)
class BodyRegions:
    """The regions a series shows, and what said so.

    Attributes
    ----------
    regions : frozenset of str
        Canonical regions (CHEST, ABDOMEN...); empty when unknown.
    source : str
        The attribute that decided (``BodyPartExamined``, ``SeriesDescription``,
        ``StudyDescription``, ``ProtocolName``), or ``""`` when none did.
    evidence : str
        Its value (a description, no patient data), for the job's record.
    """

    regions: frozenset[str]
    source: str = ""
    evidence: str = ""

    @property
    def known(self) -> bool:
        """Whether any attribute named a region."""
        return bool(self.regions)

    def describe(self) -> str:
        """For logs and job reasons: ``CHEST (BodyPartExamined 'THORAX')`` or ``unknown``."""
        if not self.regions:
            return "unknown (no body part, and no description names one)"
        return f"{'+'.join(sorted(self.regions))} ({self.source} {self.evidence!r})"


def normalise(value: str | None) -> str:
    """``"Chest_Abdomen pelvis "`` -> ``"CHESTABDOMENPELVIS"``."""
    return re.sub(r"[^A-Z0-9]", "", (value or "").upper())


def regions_of_body_part(value: str | None) -> frozenset[str]:
    """The regions a BodyPartExamined value covers (empty when empty or not in the vocabulary)."""
    key = normalise(value)
    if key in VOCABULARY:
        return VOCABULARY[key]
    return regions_of_text(value)  # e.g. "CHEST/ABDOMEN" spelled with a separator the vocabulary lacks


def regions_of_text(text: str | None) -> frozenset[str]:
    """The regions the words of a description name (the first pattern that matches wins)."""
    upper = (text or "").upper()
    for pattern, regions in _WORDS:
        if pattern.search(upper):
            return regions
    return frozenset()


def body_regions(
    body_part: str | None,
    series_description: str | None = None,
    study_description: str | None = None,
    protocol_name: str | None = None,
) -> BodyRegions:
    """The regions a series shows: BodyPartExamined first, then the descriptions, in that order."""
    found = regions_of_body_part(body_part)
    if found:
        return BodyRegions(found, "BodyPartExamined", (body_part or "").strip())
    for source, text in (
        ("SeriesDescription", series_description), ("StudyDescription", study_description), ("ProtocolName", protocol_name)
    ):
        found = regions_of_text(text)
        if found:
            return BodyRegions(found, source, (text or "").strip())
    return BodyRegions(frozenset())


def covers(wanted: tuple[str, ...] | frozenset[str], series: BodyRegions) -> bool:
    """Whether a series may run a model (or match a rule) that asks for the body parts ``wanted``.

    Nothing wanted: yes.  Regions known: they must meet the wanted ones.
    Unknown: yes, and the model's anatomy gate decides from the image.
    """
    if not wanted:
        return True
    if not series.known:
        return True
    want: set[str] = set()
    for w in wanted:
        want |= regions_of_body_part(w) or {normalise(w)}
    return bool(want & series.regions)
