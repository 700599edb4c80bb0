"""Deciding when a series is complete, from evidence rather than a timer alone.

Signals, strongest first:

``expected_count``
    The headers announce how many instances there are (ImagesInAcquisition,
    PET NumberOfSlices x NumberOfTimeSlices, NumberOfTemporalPositions x the
    distinct slice positions), that many have arrived and the slice positions
    have no gap.
``association_released``
    The association that carried *every* instance of the series was released
    normally and the positions have no gap.  (A sender that opens one
    association per instance never triggers this, because a lone single-frame
    slice is not taken as a whole series; it falls back to the quiet period.
    An aborted association never counts.)
``quiet_period``
    Nothing arrived for ``quiet_seconds`` and no evidence says anything is missing.
``incomplete_timeout``
    Evidence says instances are missing (a gap in positions, fewer than
    announced), but nothing arrived for ``incomplete_timeout_seconds``: the
    series is completed anyway, with the missing evidence in the detail, so
    that it never hangs.

Completion and the job it queues are one transaction, so exactly one job is
queued per completed version of a series, across restarts.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from sqlalchemy import Engine

from dicomnode.background import BackgroundLoop
from dicomnode.config import SeriesConfig
from dicomnode.dicom.geometry import DEFAULT_GAP_FACTOR, find_gaps, stack_distances
from storage.errors import StorageError
from storage.series import (
    InstanceGeometry,
    OpenSeries,
    SeriesFacts,
    complete_series,
    note_incomplete,
    open_series,
    series_geometry,
)
from storage.states import CompletionReason

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Verdict:
    """Whether to complete a series now, and why."""

    complete: bool
    reason: CompletionReason | None = None
    detail: str | None = None
    missing: str | None = None  # evidence that something is missing, if any


def gap_lines(geometry: Sequence[InstanceGeometry], factor: float = DEFAULT_GAP_FACTOR) -> list[str]:
    """Describe missing slices in the stack the volume will be built from, one line per gap.

    The stack and the gap rule are those of reconstruction
    (:mod:`dicomnode.dicom.geometry`): the largest orientation group (others
    are localizers or a mix that reconstruction refuses anyway), and within
    it, where positions repeat, the sub-stack reconstruction keeps.

    Returns
    -------
    list of str
        Empty when nothing is missing.
    """
    return [g.describe() for g in find_gaps(stack_distances(geometry), factor)]


def judge(
    series: OpenSeries,
    geometry: Sequence[InstanceGeometry],
    now: datetime,
    cfg: SeriesConfig,
    released_assoc: str | None = None,
    released_carried: int | None = None,
) -> Verdict:
    """Decide whether ``series`` is complete now.

    Parameters
    ----------
    series : storage.series.OpenSeries
        The series' counters as committed.
    geometry : sequence of storage.series.InstanceGeometry
        Its instances.
    now : datetime
        Current time (UTC).
    cfg : SeriesConfig
        Quiet period, timeout, gap factor.
    released_assoc : str, optional
        UID of an association that was just released normally.
    released_carried : int, optional
        How many distinct instances of this series that association carried
        (new ones and identical re-sends).  When given, the release completes
        the series if it carried all of them; otherwise every stored instance
        must have arrived on ``released_assoc``.
    """
    count = series.instance_count
    missing: list[str] = gap_lines(geometry, cfg.gap_factor)
    expected = series.expected_count
    if series.temporal_positions and series.temporal_positions > 1:
        positions = {g.position for g in geometry if g.position is not None}
        if positions:
            expected = max(expected or 0, len(positions) * series.temporal_positions)
    if expected is not None and count < expected:
        missing.append(f"{count} of {expected} announced instances received")
    if series.incomplete_evidence:  # e.g. an instance refused (disk full), an association aborted
        missing.append(series.incomplete_evidence)
    missing_text = "; ".join(missing) or None
    idle = (now - series.last_received_at).total_seconds()

    if not missing:
        if expected is not None:
            return Verdict(True, CompletionReason.EXPECTED_COUNT, f"{count} of {expected} announced instances")
        carried_all = (
            released_carried >= count
            if released_carried is not None
            else bool(geometry) and all(g.assoc_uid == released_assoc for g in geometry)
        )
        # One single-frame slice is not evidence of a whole series: senders that
        # open one association per instance would complete after the first.
        # A lone multi-frame or projection (no position) image is.
        lone_ok = count >= 2 or any(g.number_of_frames > 1 or g.position is None for g in geometry)
        if released_assoc is not None and cfg.complete_on_release and count > 0 and carried_all and lone_ok:
            return Verdict(True, CompletionReason.ASSOCIATION_RELEASED, f"{count} instances, all in one association")
        if idle >= cfg.quiet_seconds:
            return Verdict(True, CompletionReason.QUIET_PERIOD, f"{count} instances, nothing new for {idle:.0f} s")
        return Verdict(False)
    if idle >= cfg.incomplete_timeout_seconds:
        return Verdict(True, CompletionReason.INCOMPLETE_TIMEOUT, f"{count} instances; incomplete: {missing_text}", missing_text)
    return Verdict(False, missing=missing_text)


class CompletionMonitor(BackgroundLoop):
    """Background thread that completes series and queues their jobs.

    The database is the only state: hints from the receiver (an instance was
    stored, an association was released) only make it look sooner.  After a
    restart it finds the open series in the database and their quiet timers
    continue from the last arrival.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    cfg : SeriesConfig
    priority : callable, optional
        The priority of a new job from its series' routing facts, decided in
        the transaction that queues it (see :meth:`dicomnode.routing.Router.priority`).
    """

    def __init__(
        self,
        engine: Engine,
        cfg: SeriesConfig,
        priority: Callable[[SeriesFacts], int] | None = None,
    ) -> None:
        super().__init__("series-completion", cfg.check_interval_seconds)
        self.engine = engine
        self.cfg = cfg
        self.priority = priority
        # (kind, series id, payload): "released" carries (association UID, instances), "evidence" a text or None.
        self._hints: queue.SimpleQueue[tuple[str, int, tuple[str, int] | str | None]] = queue.SimpleQueue()
        self._next_scan = 0.0
        self._waiting_logged: dict[int, str] = {}
        # Silence while the node was down is not evidence that a series is
        # complete: quiet timers restart when the node starts, so that senders
        # have time to reconnect and re-send after a crash or restart.
        self._started_at = datetime.now(timezone.utc)

    # -- hints (called from association threads) --------------------------
    def instance_stored(self, series_id: int, has_count_evidence: bool) -> None:
        """Hint: an instance of ``series_id`` was committed.

        Only instances whose headers announce a count can complete a series
        before its association ends, so the others are not worth a look.
        """
        if has_count_evidence:
            self._hints.put(("stored", series_id, None))
            self.wake()

    def association_aborted(self, assoc_uid: str, carried: dict[int, int]) -> None:
        """The association ``assoc_uid`` was aborted: the series it carried may be missing instances.

        Each of them waits for ``incomplete_timeout_seconds`` (or for a later
        association that carries it and is released normally).
        """
        evidence = f"the association that carried {sum(carried.values())} instance(s) of it was aborted"
        for series_id in carried:
            self._hints.put(("evidence", series_id, evidence))
        self.wake()

    def association_released(self, assoc_uid: str, carried: dict[int, int], refused: int = 0) -> None:
        """Hint: the association ``assoc_uid`` was released normally.

        ``carried`` maps each series id to the number of distinct instances
        of it that the association stored or re-sent.  With nothing
        ``refused``, it also clears the evidence of missing instances that an
        earlier aborted association or refusal left on those series (the
        sender sent them again).
        """
        for series_id, n in carried.items():
            if not refused:
                self._hints.put(("evidence", series_id, None))
            self._hints.put(("released", series_id, (assoc_uid, n)))
        self.wake()

    # -- the loop ------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor thread (quiet timers count from now)."""
        self._started_at = datetime.now(timezone.utc)
        super().start()

    def step(self) -> bool:
        """Judge the series hinted at since the last step, and every open series once per interval."""
        released: dict[int, tuple[str, int]] = {}
        touched: set[int] = set()
        evidence: dict[int, str | None] = {}
        while True:
            try:
                kind, series_id, payload = self._hints.get_nowait()
            except queue.Empty:
                break
            if kind == "released" and isinstance(payload, tuple):
                released[series_id] = payload
            elif kind == "evidence" and not isinstance(payload, tuple):
                evidence[series_id] = payload  # the latest hint wins: an abort, then a clean re-send, clears it
                touched.add(series_id)
            else:
                touched.add(series_id)
        scan = time.monotonic() >= self._next_scan
        try:
            # Recorded here, in the monitor's thread, before judging: the listener's threads never wait for it.
            for text in set(evidence.values()):
                note_incomplete(self.engine, series_ids=[k for k, v in evidence.items() if v == text], evidence=text)
            self.check(released=released, touched=touched, full_scan=scan)
        except StorageError as exc:
            logger.error("series completion check failed, will retry: %s", exc)
        if scan:
            self._next_scan = time.monotonic() + self.cfg.check_interval_seconds
        return False

    def check(
        self,
        *,
        released: dict[int, tuple[str, int]] | None = None,
        touched: set[int] | None = None,
        full_scan: bool = True,
        now: datetime | None = None,
    ) -> list[int]:
        """Judge open series and complete those that are done.

        Returns
        -------
        list of int
            Ids of the jobs queued.
        """
        released = released or {}
        touched = touched or set()
        now = now or datetime.now(timezone.utc)
        jobs: list[int] = []
        for s in open_series(self.engine):
            seen = s
            if s.last_received_at < self._started_at:
                s = replace(s, last_received_at=self._started_at)
            idle = (now - s.last_received_at).total_seconds()
            interesting = (
                s.id in released
                or idle >= self.cfg.quiet_seconds
                or (s.id in touched and (s.expected_count is not None and s.instance_count >= s.expected_count))
                or (s.id in touched and s.temporal_positions)
            )
            if not interesting or (not full_scan and s.id not in released and s.id not in touched):
                continue
            assoc_uid, carried = released.get(s.id, (None, None))
            verdict = judge(s, series_geometry(self.engine, s.id), now, self.cfg, assoc_uid, carried)
            if not verdict.complete:
                if verdict.missing and idle >= self.cfg.quiet_seconds and self._waiting_logged.get(s.id) != verdict.missing:
                    self._waiting_logged[s.id] = verdict.missing
                    logger.warning(
                        "series %d looks incomplete (%s); waiting up to %.0f s for the rest",
                        s.id,
                        verdict.missing,
                        self.cfg.incomplete_timeout_seconds,
                    )
                continue
            job_id = complete_series(
                self.engine,
                s.id,
                seen_count=seen.instance_count,
                seen_last_received_at=seen.last_received_at,
                reason=verdict.reason or CompletionReason.QUIET_PERIOD,
                detail=verdict.detail,
                priority=self.priority,
            )
            if job_id is None:
                continue  # something arrived meanwhile: judge again later
            self._waiting_logged.pop(s.id, None)
            log = logger.warning if verdict.reason == CompletionReason.INCOMPLETE_TIMEOUT else logger.info
            log(
                "series %d complete (%s): %s -> job %d (version %d)",
                s.id,
                verdict.reason,
                verdict.detail,
                job_id,
                s.version + 1,
            )
            jobs.append(job_id)
        return jobs
