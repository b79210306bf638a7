"""Put volumes in acquisition order and notice the ones that never come.

Files can arrive out of order, twice, or not at all. The sequencer releases
volumes strictly in index order; when a later volume has waited longer than
``missing_timeout_s`` for an earlier one, the earlier one is declared
missing so that the run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Released(Generic[T]):
    """A volume index released in order, with its item or None when missing."""

    index: int
    item: T | None


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
            return f"volume {index} is beyond the run's {self.stop} volumes"
        if index < self.next_index:
            return f"volume {index} arrived after the run moved past it (duplicate or too late)"
        if index in self._pending:
            return f"volume {index} arrived twice"
        self._pending[index] = (item, t_arrived)
        return None

    def release(self, now: float) -> list[Released[T]]:
        """Volumes ready in order at time ``now``, missing ones as ``item=None``."""
        out: list[Released[T]] = []
        while not self.done:
            if self.next_index in self._pending:
                item, _ = self._pending.pop(self.next_index)
                out.append(Released(self.next_index, item))
            elif self._pending and now - min(t for _, t in self._pending.values()) >= self.missing_timeout_s:
                out.append(Released(self.next_index, None))
            else:
                break
            self.next_index += 1
        return out

    def time_to_deadline(self, now: float) -> float | None:
        """Seconds until :meth:`release` may declare a volume missing, or None if nothing waits."""
        if not self._pending:
            return None
        oldest = min(t for _, t in self._pending.values())
        return max(0.0, oldest + self.missing_timeout_s - now)
