"""A result's findings: every lesion of every lesion label, numbered once for all outputs.

Findings are numbered by volume, largest first, across the lesion labels of
a bundle: "nodule 1" is the largest whatever the slice order, slice
thickness or patient position of the scan, and it is "nodule 1" in the SEG,
the SR, the key images and the Key Object Selection alike.  Each knows the
organ it lies in (``measurement.contains``), and through the organ's label
its anatomic site and side.
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
    """

    number: int
    label: Label
    lesion: Lesion
    organ: Label | None = None

    @property
    def name(self) -> str:
        """``"nodule 3"``: the label's name and the finding's number."""
        return f"{self.label.name} {self.number}"

    @property
    def side(self) -> Laterality | None:
        """The side of the organ it lies in (None when unknown or unpaired)."""
        return self.organ.laterality if self.organ is not None else None

    @property
    def site(self) -> Concept | None:
        """Its anatomic site: the organ's site (or the organ itself), else the lesion label's site."""
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
        """Where it is, in words: ``"right lung"``, or ``""`` when unknown."""
        return self.organ.name if self.organ is not None else ""


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
