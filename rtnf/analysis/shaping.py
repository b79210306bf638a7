"""Shaping: a block's success judged against the participant's own earlier blocks.

OpenNFT's intermittent PSC feedback counts a regulation block as a success
when its value beats the median of the previous blocks' values, carried
from one run to the next (``nfbCalc.m``: ``regSuccess``). rtnf generalises
it (``[feedback.shaping]``): the threshold is the ``percentile`` of the
previous blocks' values (all of them, or the ``last_blocks`` most recent),
taken over this run's blocks and, with ``history = "session"`` or
``"study"``, the participant's earlier feedback runs (read from their
recorded tables by :mod:`rtnf.run.shaping_history`). Until ``min_blocks``
values exist the threshold is 0: the block must beat its baseline, which is
also the rule without shaping.

A block's value is the mean of the feedback signal (after despiking and
smoothing) over the block shifted by the hemodynamic lag, oriented as
success (minus the mean in a block that asks for a decrease): exactly the
signal an intermittent score shows, and for continuous feedback the mean of
the table's ``feedback_signal`` over those rows. It is ready at the
volume where the lagged block ends. No files here: the history comes in as
numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

NO_SHAPING_THRESHOLD = 0.0
"""The threshold without shaping, and with it until ``min_blocks`` blocks exist: the block beats its baseline."""


def shaping_threshold(
    history: Iterable[float], percentile: float = 50.0, min_blocks: int = 2, last_blocks: int | None = None
) -> float:
    """The threshold the next block must exceed, from the previous blocks' values.

    Parameters
    ----------
    history : iterable of float
        Previous blocks' values, oldest first (signal units: percent, beta or t, oriented as success).
    percentile : float
        Percentile in [0, 100] (linear interpolation, NumPy's default).
    min_blocks : int
        Fewer values than this give :data:`NO_SHAPING_THRESHOLD`.
    last_blocks : int, optional
        Only the most recent values count.

    Returns
    -------
    float
        The threshold, in the units of ``history``.
    """
    values = [float(v) for v in history if np.isfinite(v)]
    if last_blocks is not None:
        values = values[-last_blocks:]
    if len(values) < min_blocks:
        return NO_SHAPING_THRESHOLD
    return float(np.percentile(values, percentile))


@dataclass(frozen=True)
class BlockScore:
    """A scored block: its value, the threshold it had to beat, and whether it did."""

    value: float
    threshold: float
    success: bool


class Shaper:
    """The running threshold of one run: scores each block against the blocks before it.

    Parameters
    ----------
    history : iterable of float
        Earlier runs' block values, oldest first (empty for ``history = "run"``).
    percentile, min_blocks, last_blocks
        As :func:`shaping_threshold`. ``percentile=None`` turns shaping off:
        the threshold stays :data:`NO_SHAPING_THRESHOLD`.
    """

    def __init__(
        self,
        history: Iterable[float] = (),
        percentile: float | None = None,
        min_blocks: int = 2,
        last_blocks: int | None = None,
    ) -> None:
        self.percentile = percentile
        self.min_blocks = min_blocks
        self.last_blocks = last_blocks
        self.values: list[float] = [float(v) for v in history if np.isfinite(v)]
        self._threshold = self._compute()

    def _compute(self) -> float:
        if self.percentile is None:
            return NO_SHAPING_THRESHOLD
        return shaping_threshold(self.values, self.percentile, self.min_blocks, self.last_blocks)

    @property
    def threshold(self) -> float:
        """The threshold the next block must exceed (signal units, oriented as success)."""
        return self._threshold

    def score(self, value: float) -> BlockScore:
        """Judge a block's value against the current threshold, then add it to the history."""
        result = BlockScore(float(value), self._threshold, bool(value > self._threshold))
        self.values.append(float(value))
        self._threshold = self._compute()
        return result
