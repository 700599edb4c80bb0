"""A result's findings: every lesion of every lesion label, numbered once for all outputs.

Findings are numbered by volume, largest first, across the lesion labels of
a bundle: "nodule 1" is the largest whatever the slice order, slice
thickness or patient position of the scan, and it is "nodule 1" in the SEG,
the SR, the key images and the Key Object Selection alike.  Each knows the
organ it lies in (``measurement.contains``), and through the organ's label
its anatomic site and side; when a lobe model ran too, the lobe it lies in
(:mod:`ai.placement`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ai.bundle import Bundle, Label
from ai.coding import Concept, Laterality
from ai.measure import LabelMeasurement, Lesion


@dataclass(frozen=True)
class Finding:
    """One lesion, as the reports present it.

    Attributes
    ----------
    number : int
        1 for the largest finding of the result.
    label : Label
        Its lesion label (what it is).
    lesion : Lesion
        Its measurements and voxels.
    organ : Label, optional
        The organ label it lies in, when the bundle says which organs contain it.
    lobe : Label, optional
        The lobe it lies in, from another model's lobes (see :func:`ai.placement.place_in_lobes`).
    lobe_model : str
        ``"name version"`` of the model whose lobes placed it.
    """

    number: int
    label: Label
    lesion: Lesion
    organ: Label | None = None
    lobe: Label | None = None
    lobe_model: str = ""

    @property
    def name(self) -> str:
        """``"nodule 3"``: the label's name and the finding's number."""
        return f"{self.label.name} {self.number}"

    @property
    def side(self) -> Laterality | None:
        """The side of the organ (or lobe) it lies in (None when unknown or unpaired)."""
        if self.organ is not None and self.organ.laterality is not None:
            return self.organ.laterality
        return self.lobe.laterality if self.lobe is not None else None

    @property
    def site(self) -> Concept | None:
        """Its anatomic site: its lobe, else the organ's site (or the organ itself), else the lesion label's site."""
        if self.lobe is not None and self.lobe.snomed_code:
            return Concept(self.lobe.snomed_code, self.lobe.snomed_meaning or self.lobe.name)
        if self.organ is not None:
            if self.organ.site is not None:
                return self.organ.site
            if self.organ.snomed_code:
                return Concept(self.organ.snomed_code, self.organ.snomed_meaning or self.organ.name)
        return self.label.site

    def key_slice(self, nz: int) -> int:
        """The slice it is shown and measured on: its long axis's, else its centre's (within ``nz`` slices)."""
        les = self.lesion
        z = les.axes.slice_index if les.axes is not None else round(float(les.centroid_voxel[0]))
        return min(max(z, 0), nz - 1)

    @property
    def where(self) -> str:
        """Where it is, in words: ``"upper lobe of right lung"``, ``"right lung"``, or ``""`` when unknown."""
        if self.lobe is not None:
            return lobe_words(self.lobe)
        return self.organ.name if self.organ is not None else ""


def lobe_words(lobe: Label) -> str:
    """A lobe in words with its side: ``"upper lobe of right lung"`` from "Upper lobe of lung" and right."""
    text = (lobe.snomed_meaning or lobe.name.replace("_", " ")).strip()
    side = lobe.laterality.value if lobe.laterality is not None else ""
    lower = text[:1].lower() + text[1:]
    if side and side not in lower.lower() and lower.endswith(" of lung"):
        return f"{lower[: -len('lung')]}{side} lung"
    if side and side not in lower.lower():
        return f"{lower} ({side})"
    return lower


def findings(measurements: Sequence[LabelMeasurement], bundle: Bundle) -> list[Finding]:
    """Every lesion of ``measurements``, numbered by volume (largest first) across lesion labels."""
    by_value = {lb.value: lb for lb in bundle.labels}
    pool: list[tuple[Label, Lesion]] = [
        (by_value[m.value], les) for m in measurements if m.value in by_value for les in m.lesions
    ]
    pool.sort(key=lambda p: (-round(p[1].volume_ml, 6), p[0].value, p[1].centroid_voxel))
    return [
        Finding(i, label, les, by_value.get(les.organ) if les.organ is not None else None)
        for i, (label, les) in enumerate(pool, start=1)
    ]
