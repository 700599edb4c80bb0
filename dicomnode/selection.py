"""Which series of a study a model runs on, decided once the study has arrived.

A CT study holds more than the series a model needs: a topogram, thin and
thick reconstructions of one acquisition, reformats, MIPs.  Running every
one gives contradictory reports (the thin and the thick recon disagree on the
nodule count) and clutters the PACS.  So a job first waits for its study
(:func:`study_wait`): no series of it still arriving, and either quiet for
``selection.study_quiet_seconds`` or sent whole on one association that was
released.  Then :func:`choose` keeps, per acquisition (Frame of Reference),
one volumetric series (an acquisition: the same Frame of Reference and
AcquisitionNumber):

- never a localizer, nor DERIVED/SECONDARY images, MIPs or MPRs (unless
  allowed), nor fewer than ``min_slices`` images;
- axial rather than coronal or sagittal reformats of the same acquisition;
- slices within ``thickness_mm`` first, a preferred reconstruction kernel
  next (the model's ``selection.kernels``, e.g. lung kernels for nodules,
  unless ``[selection] kernels`` is set), then the thinnest, then the most
  images.

A series that arrives after its acquisition was processed runs only if it
is better by these rules (a new, versioned run for that series alone).
Every choice is recorded on the series with its reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dicomnode.errors import ConfigError
from storage.states import CompletionReason
from storage.facts import StudySeries, is_receiving

# Reconstruction kernels that show lung parenchyma sharply, by vendor (searched case-insensitively).
LUNG_KERNELS = (r"LUNG", r"SHARP", r"BONE ?PLUS", r"\bBR?[5-9]\d", r"\bI[5-9]\d", r"\bFC5\d", r"\bFC8\d", r"^Y[ABC]$", r"^L$")
AXIAL_COSINE = math.cos(math.radians(30))  # a slice normal within 30 degrees of the patient's head-foot axis
_REFORMAT = re.compile(r"\b(MIP|MINIP|MPR|VRT|VR|3D|REFORMAT(TED)?|CURVED|PROJECTION)\b", re.IGNORECASE)
_LOCALIZER = re.compile(r"\b(TOPOGRAM|SCOUT|LOCALI[SZ]ER|SURVIEW|SCANOGRAM|PILOT)\b", re.IGNORECASE)


@dataclass(frozen=True)
class SelectionConfig:
    """The ``[selection]`` section."""

    enabled: bool = True
    study_quiet_seconds: float = 10.0  # a study is ready once nothing of it arrived for this long...
    complete_on_release: bool = True  # ...or at once when one released association carried all of it
    min_slices: int = 20  # a volume needs at least this many images
    allow_localizer: bool = False
    allow_derived: bool = False  # DERIVED\SECONDARY images, MIPs, MPRs and other reformats
    prefer_axial: bool = True
    thickness_mm: tuple[float, float] = (0.5, 3.0)  # preferred slice thickness
    kernels: tuple[str, ...] = LUNG_KERNELS  # preferred kernels (regular expressions); empty: no preference
    kernels_configured: bool = False  # set in [selection]: it wins over a model's own selection.kernels


@dataclass(frozen=True)
class Choice:
    """Whether a series is processed, and why."""

    chosen: bool
    reason: str


def _image_type(s: StudySeries) -> set[str]:
    return {t.strip().upper() for t in (s.image_type or "").split("\\") if t.strip()}


def is_axial(s: StudySeries) -> bool | None:
    """Whether the slices are axial (None when the orientation is unknown)."""
    o = s.orientation
    if not o or len(o) != 6:
        return None
    nz = o[0] * o[4] - o[1] * o[3]  # z component of row x column
    return abs(nz) >= AXIAL_COSINE


def exclusion(s: StudySeries, cfg: SelectionConfig) -> str | None:
    """Why a series can never be a model's input (None when it can)."""
    kinds = _image_type(s)
    text = s.series_description or ""
    if not cfg.allow_localizer and ("LOCALIZER" in kinds or _LOCALIZER.search(text)):
        return f"{s.name()} is a localizer (ImageType {s.image_type or '-'}, {text!r})"
    if not cfg.allow_derived:
        if {"DERIVED", "SECONDARY"} <= kinds:
            return f"{s.name()} holds derived secondary images (ImageType {s.image_type})"
        if kinds & {"MIP", "MINIP", "MPR", "PROJECTION IMAGE", "REFORMATTED", "CURVED", "VOLUME"} or _REFORMAT.search(text):
            return f"{s.name()} is a reformat or projection (ImageType {s.image_type or '-'}, {text!r})"
    if s.frames < cfg.min_slices:
        return f"{s.name()} has only {s.frames} image(s); a volume needs at least {cfg.min_slices} (selection.min_slices)"
    return None


def _kernel_rank(s: StudySeries, kernels: Sequence[str]) -> int:
    return 0 if s.kernel and any(re.search(k, s.kernel, re.IGNORECASE) for k in kernels) else 1


def _rank(s: StudySeries, cfg: SelectionConfig) -> tuple[Any, ...]:
    lo, hi = cfg.thickness_mm
    t = s.slice_thickness
    in_range = t is not None and lo <= t <= hi
    return (
        0 if is_axial(s) is not False or not cfg.prefer_axial else 1,
        0 if in_range else 1,
        _kernel_rank(s, cfg.kernels),
        t if t is not None else math.inf,
        -s.frames,
        s.series_number if s.series_number is not None else math.inf,
        s.id,
    )


def _why(best: StudySeries, cfg: SelectionConfig, others: int) -> str:
    bits = []
    if is_axial(best):
        bits.append("axial")
    lo, hi = cfg.thickness_mm
    if best.slice_thickness is not None:
        bits.append(f"{best.slice_thickness:g} mm" + (f" (within {lo:g}-{hi:g} mm)" if lo <= best.slice_thickness <= hi else ""))
    if best.kernel:
        bits.append(f"kernel {best.kernel}" + (" (preferred)" if _kernel_rank(best, cfg.kernels) == 0 else ""))
    bits.append(f"{best.frames} images")
    alone = "the only volumetric series of its acquisition" if not others else f"the best of {others + 1} of its acquisition"
    return f"{alone}: {', '.join(bits)}"


def same_acquisition(a: StudySeries, b: StudySeries) -> bool:
    """Whether two series are reconstructions of one acquisition.

    Same modality and Frame of Reference, and the same AcquisitionNumber where
    both have one (the arterial and venous phases of one examination share a
    Frame of Reference but not an acquisition).
    """
    if a.modality != b.modality or a.frame_of_reference_uid is None or a.frame_of_reference_uid != b.frame_of_reference_uid:
        return False
    return a.acquisition_number is None or b.acquisition_number is None or a.acquisition_number == b.acquisition_number


def choose(me: StudySeries, study: Sequence[StudySeries], cfg: SelectionConfig) -> Choice:
    """Whether ``me`` is the series its acquisition should be processed from."""
    excluded = exclusion(me, cfg)
    if excluded:
        return Choice(False, excluded)
    same = [
        s for s in study
        if s.id != me.id and same_acquisition(s, me) and not is_receiving(s) and exclusion(s, cfg) is None
    ]
    best = min([me, *same], key=lambda s: _rank(s, cfg))
    if best.id != me.id:
        return Choice(False, f"{best.name()} of the same acquisition is processed instead ({_why(best, cfg, len(same))})")
    done = [s for s in same if s.processed]
    if done:
        return Choice(True, f"better than {', '.join(s.name() for s in done)}, processed before it arrived ({_why(me, cfg, len(same))})")
    return Choice(True, _why(me, cfg, len(same)))


def study_wait(
    me: StudySeries, study: Sequence[StudySeries], now: datetime, cfg: SelectionConfig, associations: int
) -> tuple[float, str]:
    """Seconds a job of ``me`` should still wait for its study (0: ready), and what it waits for.

    Parameters
    ----------
    associations : int
        How many associations carried the study's instances.
    """
    arriving = [s for s in study if s.id != me.id and is_receiving(s)]
    last = max(s.last_received_at for s in study)
    quiet = (now - last).total_seconds()
    if arriving:
        return max(1.0, cfg.study_quiet_seconds - quiet), f"{len(arriving)} other series of the study still arriving"
    if quiet >= cfg.study_quiet_seconds:
        return 0.0, ""
    released = all(s.completion_reason == CompletionReason.ASSOCIATION_RELEASED for s in study)
    if cfg.complete_on_release and associations == 1 and released:
        return 0.0, ""  # the whole study came on one association, released normally
    return cfg.study_quiet_seconds - quiet, f"the study has been quiet for {quiet:.0f} of {cfg.study_quiet_seconds:g} s"


def parse_selection(data: Mapping[str, Any] | Any) -> SelectionConfig:
    """Validate ``[selection]``.

    Raises
    ------
    ConfigError
        A key is unknown or a value invalid; the message names it.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"selection: must be a table, got {data!r}")
    d = SelectionConfig()
    unknown = sorted(set(data) - (set(SelectionConfig.__dataclass_fields__) - {"kernels_configured"}))
    if unknown:
        raise ConfigError(f"selection.{unknown[0]}: unknown key (allowed: {', '.join(SelectionConfig.__dataclass_fields__)})")

    def flag(key: str) -> bool:
        v = data.get(key, getattr(d, key))
        if not isinstance(v, bool):
            raise ConfigError(f"selection.{key}: must be true or false, got {v!r}")
        return v

    def number(key: str, lo: float) -> float:
        v = data.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
            raise ConfigError(f"selection.{key}: must be a number >= {lo:g}, got {v!r}")
        return float(v)

    thickness = data.get("thickness_mm", list(d.thickness_mm))
    if not (isinstance(thickness, list) and len(thickness) == 2 and all(isinstance(v, (int, float)) for v in thickness)
            and 0 <= thickness[0] <= thickness[1]):
        raise ConfigError(f"selection.thickness_mm: must be [min, max] in mm, got {thickness!r}")
    kernels = data.get("kernels", list(d.kernels))
    if not (isinstance(kernels, list) and all(isinstance(k, str) for k in kernels)):
        raise ConfigError(f"selection.kernels: must be a list of regular expressions, got {kernels!r}")
    for k in kernels:
        try:
            re.compile(k)
        except re.error as exc:
            raise ConfigError(f"selection.kernels: {k!r} is not a valid regular expression: {exc}") from exc
    return SelectionConfig(
        enabled=flag("enabled"), study_quiet_seconds=number("study_quiet_seconds", 0.0),
        complete_on_release=flag("complete_on_release"), min_slices=int(number("min_slices", 1)),
        allow_localizer=flag("allow_localizer"), allow_derived=flag("allow_derived"), prefer_axial=flag("prefer_axial"),
        thickness_mm=(float(thickness[0]), float(thickness[1])), kernels=tuple(kernels), kernels_configured="kernels" in data,
    )
