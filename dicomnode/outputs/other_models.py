"""The SEGs of further segmentation models that ran on the same series, separate or merged into the first's.

A job may run several segmentation models on one series (TotalSegmentator's
lung lobes beside the nodule model).  Each further model gets a report of its
own; its segments go into a SEG of its own (``outputs.multi_model_seg =
"separate"``, the default, series number ``seg_series_number + 2 + 2K`` for
the K-th further model, its report the next) or into the first model's SEG
(``"merged"``, see :mod:`dicomnode.outputs.seg_merge`).  Tracking UIDs are
rooted in the job key and the model's name, so the same label of two models
is two things.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom import Dataset

from dicomnode.errors import OutputError
from dicomnode.outputs.seg import Segment, SegParams, SourceFrame, build_seg, plan_segments
from dicomnode.outputs.seg_merge import merge_segmentations, segment_count

if TYPE_CHECKING:
    from ai.bundle import Bundle
    from ai.engine import Result

SEPARATE, MERGED = "separate", "merged"  # outputs.multi_model_seg


@dataclass(frozen=True)
class OtherSeg:
    """A further model's result and its SEG (``None`` when it found nothing or SEGs are off)."""

    bundle: Bundle
    result: Result
    seed: str  # root of its tracking UIDs
    segments: list[Segment]
    seg: Dataset | None


def other_segs(
    frames: Sequence[SourceFrame],
    others: Sequence[tuple[Bundle, Result]],
    job_key: str,
    *,
    write_seg: bool,
    fractional: bool,
    keep_empty_frames: bool,
    seg_series_number: Callable[[int], int],
    uid: Callable[[str, str], str],
    description: Callable[[Bundle], str],
    manufacturer: str,
    software_version: str,
) -> list[OtherSeg]:
    """Segments and SEG of each further model, in order (the K-th is numbered ``seg_series_number(K)``).

    Raises
    ------
    OutputError
        A further model gave no label map, or its SEG cannot be built.
    """
    from ai.findings import findings as number_findings

    out = []
    for k, (b, r) in enumerate(others, start=1):
        labels = r.labels
        if labels is None:
            raise OutputError(f"the further model {b.name} is not a segmentation model: it cannot have a SEG")
        seed = f"{job_key}/{b.name}"
        if not r.findings:
            r = dataclasses.replace(r, findings=number_findings(r.measurements, b))
        segments = plan_segments(labels, b, r.findings, seed)
        seg = None
        if write_seg and segments:
            seg = build_seg(
                frames, labels, r.probabilities, b, segments,
                SegParams(
                    series_uid=uid("seg", f"series/{b.name}"), sop_uid=uid("seg", f"instance/{b.name}"), uid_seed=seed,
                    series_number=seg_series_number(k), series_description=description(b),
                    manufacturer=manufacturer, software_version=software_version,
                    fractional=fractional, keep_empty_frames=keep_empty_frames,
                ),
            )
        out.append(OtherSeg(b, r, seed, segments, seg))
    return out


def merge_into(first: Dataset | None, first_labels: np.ndarray | None, extra: Sequence[OtherSeg]) -> tuple[Dataset | None, list[OtherSeg]]:
    """One SEG for every model: ``first`` (or, when the first model found nothing, the first further SEG) holds all.

    The further models' segments are renumbered to their numbers in the merged SEG.
    """
    with_seg = [o for o in extra if o.seg is not None]
    if not with_seg:
        return first, list(extra)
    base = first if first is not None else with_seg[0].seg
    assert base is not None
    rest = [o.seg for o in with_seg if o.seg is not base and o.seg is not None]
    occupied = first_labels > 0 if first_labels is not None and first is not None else None
    overlap = False
    for o in with_seg:
        mask = o.result.labels > 0 if o.result.labels is not None else None
        if mask is None:
            continue
        if occupied is None:
            occupied = mask
        else:
            overlap = overlap or bool(np.logical_and(occupied, mask).any())
            occupied = occupied | mask
    merged = merge_segmentations(base, rest, overlap)
    offset = segment_count(first) if first is not None else 0
    out = []
    for o in extra:
        if o.seg is None:
            out.append(o)
            continue
        segments = [dataclasses.replace(s, number=s.number + offset) for s in o.segments]
        offset += segment_count(o.seg)
        out.append(dataclasses.replace(o, segments=segments, seg=merged))
    return merged, out
