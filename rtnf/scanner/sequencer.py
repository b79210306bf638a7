"""Put volumes in acquisition order and notice the ones that never come.

Files can arrive out of order, twice, or not at all. The sequencer releases
volumes strictly in index order; when a later volume has waited longer than
``missing_timeout_s`` for an earlier one, the earlier one is declared
missing so that the run goes on. :class:`LatenessJudge` tells which
volumes came late, against the pace they are fed at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Released(Generic[T]):
    """A volume index released in order, with its item or None when missing.

    ``held`` is true for a volume that arrived but was held back while an
    earlier one was awaited: the time it waited is not its own lateness.
    """

    index: int
    item: T | None
    held: bool = False


class Sequencer(Generic[T]):
    """Order volumes ``first .. stop - 1`` and detect missing ones.

    Parameters
    ----------
    first : int
        First index to release.
    stop : int
        One past the last index of the run.
    missing_timeout_s : float
        How long a later volume waits for an earlier one before the earlier
        one is declared missing.
    """

    def __init__(self, first: int, stop: int, missing_timeout_s: float) -> None:
        self.next_index = first
        self.stop = stop
        self.missing_timeout_s = missing_timeout_s
        self._pending: dict[int, tuple[T, float]] = {}
        self._held: set[int] = set()  # pending volumes a release had to hold back for an earlier one

    @property
    def pending(self) -> int:
        """Number of volumes waiting for an earlier one."""
        return len(self._pending)

    @property
    def done(self) -> bool:
        """True once every index of the run has been released."""
        return self.next_index >= self.stop

    def push(self, index: int, item: T, t_arrived: float) -> str | None:
        """Offer a volume. Returns None if accepted, else why it was refused."""
        if index >= self.stop:
            # No volume number here: the caller names the file, and its own
            # numbering (acquisitions from 0 here) would only confuse.
            return f"beyond the run's {self.stop} volumes"
        if index < self.next_index:
            return "this volume arrived after the run moved past it (duplicate or too late)"
        if index in self._pending:
            return "this volume arrived twice"
        self._pending[index] = (item, t_arrived)
        return None

    def release(self, now: float) -> list[Released[T]]:
        """Volumes ready in order at time ``now``, missing ones as ``item=None``."""
        out: list[Released[T]] = []
        while not self.done:
            if self.next_index in self._pending:
                item, _ = self._pending.pop(self.next_index)
                out.append(Released(self.next_index, item, self.next_index in self._held))
                self._held.discard(self.next_index)
            elif self._pending and now - min(t for _, t in self._pending.values()) >= self.missing_timeout_s:
                out.append(Released(self.next_index, None))
            else:
                self._held.update(self._pending)  # waiting for next_index, which has not come (yet)
                break
            self.next_index += 1
        return out

    def time_to_deadline(self, now: float) -> float | None:
        """Seconds until :meth:`release` may declare a volume missing, or None if nothing waits."""
        if not self._pending:
            return None
        oldest = min(t for _, t in self._pending.values())
        return max(0.0, oldest + self.missing_timeout_s - now)


class LatenessJudge:
    """Whether each volume came late, judged against the pace volumes are fed at.

    Live, the scanner acquires one volume every TR by its own clock, which
    nothing stalls: acquisition ``k`` is expected at ``k * TR + offset``,
    where ``offset`` is the smallest ``t_detected_j - j * TR`` seen so far
    (the earliest-arriving volume defines "on time", so a late first volume
    or a backlog does not shift the expectation). A volume is late when it
    arrives more than :attr:`LATE_AFTER_TR` of a TR (at least
    :attr:`MIN_LATE_S`) after its expected arrival -- so every volume of a
    backlog (rtnf stopped or stalled, the export held up) is late even when
    each was sent a few ms after rtnf saw it -- or when it waited longer
    than one TR to be sent. ``t_detected`` stays the time rtnf saw the file.
    When the header gives the acquisition time (``Volume.t_acquired``, e.g.
    DICOM AcquisitionTime, scanner-sim's NIfTI ``descrip``), that is the
    scanner's clock instead: the offset between it and ours is the smallest
    ``t_detected - t_acquired`` seen so far, a volume is late when its own
    exceeds that by the same margin, and the TR in the margin is the pace of
    the acquisition times when faster (a simulation played at ``speed``).
    A replay feeds files at its own pace (``TR / speed``) on a schedule from
    its first volume, which is the expectation then; a replay as fast as
    possible feeds every file at once, each waits its turn, and arrival
    times say nothing about lateness: no volume is judged late. A volume
    held back while a missing one was awaited came on time: its wait counts
    from its release, not its arrival.

    Parameters
    ----------
    tr_s : float
        Repetition time in seconds (the config's).
    pace_s : float, optional
        Seconds between volumes of a replay (0: as fast as possible); None
        for a live run.
    """

    SLACK_S = 0.05  # scheduling jitter of the threads that stamp arrivals
    # Live: late when more than half a TR behind the scanner's clock (the
    # next volume is then nearer than this one's slot), but never for less
    # than 0.3 s -- export, file-system and polling jitter at short TRs.
    LATE_AFTER_TR = 0.5
    MIN_LATE_S = 0.3

    def __init__(self, tr_s: float, pace_s: float | None = None) -> None:
        self.tr_s = tr_s
        self.interval_s = tr_s if pace_s is None else pace_s
        self.scheduled = pace_s is not None
        self._first: tuple[int, float] | None = None
        self._offset: float | None = None  # live: smallest t_detected - acquisition * TR so far
        self._lag: float | None = None  # live: smallest t_detected - t_acquired so far
        self._last_acquired: tuple[int, float] | None = None
        self._steps: list[float] = []  # recent t_acquired steps per acquisition (the scanner's pace)

    def is_late(
        self,
        acquisition: int,
        t_detected: float,
        t_published: float,
        t_released: float | None = None,
        t_acquired: float | None = None,
    ) -> bool:
        """Judge one volume (call once per volume received, in release order).

        Parameters
        ----------
        acquisition : int
            Acquisition index of the volume (0-based, dummies included).
        t_detected, t_published : float
            When its file was complete and when it was sent (UNIX s).
        t_released : float, optional
            For a volume the sequencer held back while an earlier one was
            awaited (:attr:`Released.held`): when it was released. Its time
            to be sent counts from then.
        t_acquired : float, optional
            Its acquisition time by the scanner's clock (``Volume.t_acquired``),
            when its header gives one; used by live runs (see the class).
        """
        if self.scheduled and self.interval_s == 0:
            return False
        arrived_late = self._arrived_late(acquisition, t_detected, t_acquired)
        t_ready = t_detected if t_released is None else max(t_detected, t_released)
        return arrived_late or t_published - t_ready > self.interval_s

    def _late_after(self, interval_s: float) -> float:
        return max(self.LATE_AFTER_TR * interval_s, self.MIN_LATE_S)

    def _arrived_late(self, acquisition: int, t_detected: float, t_acquired: float | None = None) -> bool:
        if self._first is None:
            self._first = (acquisition, t_detected)
        if self.scheduled:
            first_acq, first_t = self._first
            expected = first_t + (acquisition - first_acq) * self.interval_s
            return t_detected > expected + 0.5 * self.interval_s + self.SLACK_S
        if t_acquired is not None and self._by_scanner_clock(acquisition, t_acquired):
            # The header's acquisition time: late when it took longer from
            # acquisition to arrival than the quickest volume so far.
            lag = t_detected - t_acquired
            if self._lag is None or lag < self._lag:
                self._lag = lag
            pace = sorted(self._steps)[len(self._steps) // 2] if self._steps else self.tr_s
            return lag - self._lag > self._late_after(min(pace, self.tr_s))
        # Against the TR: acquisition k is due at k * TR + offset. A dropped
        # volume does not make the next one late: this counts acquisitions.
        offset = t_detected - acquisition * self.tr_s
        if self._offset is None or offset < self._offset:
            self._offset = offset
        expected = acquisition * self.tr_s + self._offset
        return t_detected - expected > self._late_after(self.tr_s)

    def _by_scanner_clock(self, acquisition: int, t_acquired: float) -> bool:
        """Book-keep the scanner's pace; False when ``t_acquired`` cannot be trusted.

        Acquisition times must go forward with the acquisitions, by no more
        than an hour a volume (a clock set back or a day boundary of a
        time-of-day stamp): otherwise the TR rule judges the volume.
        """
        last = self._last_acquired
        if last is not None and acquisition != last[0]:
            step = (t_acquired - last[1]) / (acquisition - last[0])
            if not 0 < step < 3600:
                return False
            self._steps = (self._steps + [step])[-10:]
        if last is None or acquisition > last[0]:
            self._last_acquired = (acquisition, t_acquired)
        return True
