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

    Live, volumes come one TR apart by the scanner's clock: a volume is late
    when it arrives well after the time the previous ones predict (the median
    of recent intervals, so no clock needs to agree with the scanner's), or
    when it waited longer than one TR to be sent. A replay feeds files at its
    own pace (``TR / speed``) on a schedule from its first volume, which is
    the expectation then; a replay as fast as possible feeds every file at
    once, each waits its turn, and arrival times say nothing about lateness:
    no volume is judged late. A volume held back while a missing one was
    awaited came on time: its wait counts from its release, not its arrival.

    Parameters
    ----------
    tr_s : float
        Repetition time in seconds (the config's).
    pace_s : float, optional
        Seconds between volumes of a replay (0: as fast as possible); None
        for a live run.
    """

    SLACK_S = 0.05  # scheduling jitter of the threads that stamp arrivals

    def __init__(self, tr_s: float, pace_s: float | None = None) -> None:
        self.interval_s = tr_s if pace_s is None else pace_s
        self.scheduled = pace_s is not None
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None
        self._intervals: list[float] = []

    def is_late(
        self, acquisition: int, t_detected: float, t_published: float, t_released: float | None = None
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
        """
        if self.scheduled and self.interval_s == 0:
            return False
        arrived_late = self._arrived_late(acquisition, t_detected)
        t_ready = t_detected if t_released is None else max(t_detected, t_released)
        return arrived_late or t_published - t_ready > self.interval_s

    def _arrived_late(self, acquisition: int, t_detected: float) -> bool:
        if self._first is None:
            self._first = (acquisition, t_detected)
        if self.scheduled:
            first_acq, first_t = self._first
            expected = first_t + (acquisition - first_acq) * self.interval_s
            return t_detected > expected + 0.5 * self.interval_s + self.SLACK_S
        # Live: a dropped volume does not make the next one late, the
        # prediction counts the volumes in between.
        late = False
        if self._last is not None:
            last_acq, last_t = self._last
            steps = acquisition - last_acq
            if steps > 0:
                if len(self._intervals) >= 3:
                    usual = sorted(self._intervals)[len(self._intervals) // 2]
                    late = t_detected > last_t + usual * steps + 0.5 * usual + self.SLACK_S
                self._intervals = (self._intervals + [(t_detected - last_t) / steps])[-10:]
        if self._last is None or t_detected > self._last[1]:
            self._last = (acquisition, t_detected)
        return late
