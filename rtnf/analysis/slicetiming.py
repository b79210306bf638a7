"""Real-time slice-timing correction: every slice moved to one reference time, from past volumes only.

Slice ``k`` of volume ``i`` is acquired at ``i * TR + s_k`` (``s_k`` its slice
time, seconds from the volume's start); the corrected value is that slice's
time series interpolated at ``i * TR + r``, the reference time. Offline tools
(SPM, FSL, AFNI) interpolate the whole series; in real time only the volumes
seen so far exist, so the reference defaults to the *first* slice's time
``r = min(s)``: every later slice is moved back in time, between the previous
volume's and this volume's sample of that slice. A reference later than some
slices extrapolates those slices from the same samples (allowed, noisier).

Methods
-------
``linear``
    The last two samples of each slice (2 volumes): ``x_i + w_k (x_{i-1} - x_i)``
    with ``w_k = (s_k - r) / TR``.
``cubic``
    Lagrange polynomial through the last four samples of each slice
    (volumes ``i-3 .. i``): smoother signals are followed more closely, noise is
    amplified a little more (the weights reach about -0.07 and 1.07).

Nodes are placed at the volumes' true times, so a missing volume just widens
the interval between the samples that were there (Lagrange weights computed
for that pattern and cached). Samples more than ``n_points`` volumes old are
dropped: after a longer gap the next volume passes through uncorrected, like
the run's first volume (there is nothing to interpolate from). The
uncorrected volumes are kept (interpolation needs the samples as acquired).

The history is keyed by the volume's index (its acquisition slot), never by
the order of the calls: a volume given again replaces its own sample (it is
neither counted twice nor left uncorrected), a volume whose processing failed
after it was corrected is taken out with :meth:`SliceTimer.forget` (the
volumes around it are then interpolated across it, as around one that never
came), and a volume only ever interpolates from volumes acquired before it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

METHOD_POINTS = {"linear": 2, "cubic": 4}
"""Samples (volumes) each method interpolates through."""

ORDERS = ("ascending", "descending", "interleaved", "interleaved_siemens")
"""Named slice orders (along the array's slice axis, index 0 first)."""


def order_slice_times(order: str, n_slices: int, tr_s: float) -> tuple[float, ...]:
    """Slice times (s) of a named single-band order, slices ``TR / n`` apart.

    Parameters
    ----------
    order : {"ascending", "descending", "interleaved", "interleaved_siemens"}
        ``interleaved`` acquires indices 0, 2, 4, ... then 1, 3, 5, ...;
        ``interleaved_siemens`` does the same for an odd slice count and starts
        with 1, 3, 5, ... for an even one (Siemens' "interleaved").
    n_slices : int
        Slices along the slice axis.
    tr_s : float
        Repetition time (s).
    """
    k = np.arange(n_slices)
    if order == "ascending":
        acquired = k
    elif order == "descending":
        acquired = k[::-1]
    elif order == "interleaved" or (order == "interleaved_siemens" and n_slices % 2 == 1):
        acquired = np.r_[k[0::2], k[1::2]]
    elif order == "interleaved_siemens":
        acquired = np.r_[k[1::2], k[0::2]]
    else:
        raise ValueError(f"unknown slice order {order!r}; allowed: {', '.join(ORDERS)}")
    times = np.empty(n_slices)
    times[acquired] = np.arange(n_slices) * tr_s / n_slices  # position in the acquisition -> time
    return tuple(float(t) for t in times)


@lru_cache(maxsize=64)
def _lagrange_weights(ages: tuple[int, ...], shifts: tuple[float, ...]) -> np.ndarray:
    """Weights, shape (len(ages), n_slices), of the samples ``ages`` volumes old for each slice.

    Sample ``a`` of slice ``k`` lies at ``-a + shift_k`` TRs from the current
    volume's start; the target is 0 (the reference time): ``shift_k = (s_k - r) / TR``.
    """
    nodes = -np.asarray(ages, dtype=np.float64)[:, None] + np.asarray(shifts)[None, :]  # (n_points, n_slices)
    w = np.ones_like(nodes)
    for j in range(len(ages)):
        for m in range(len(ages)):
            if m != j:
                w[j] *= (0.0 - nodes[m]) / (nodes[j] - nodes[m])
    return w


class SliceTimer:
    """Slice-timing correction of a run, volume after volume.

    Parameters
    ----------
    slice_times_s : sequence of float
        Acquisition time (s from the volume's start) of each index along ``axis``.
    tr_s : float
        Repetition time (s).
    axis : int
        Array axis the slices are along.
    reference_s : float or None
        Reference time (s from the volume's start); None: the first slice's (``min(slice_times_s)``).
    method : {"linear", "cubic"}
    """

    def __init__(self, slice_times_s: Sequence[float], tr_s: float, axis: int = 2,
                 reference_s: float | None = None, method: str = "linear") -> None:
        if method not in METHOD_POINTS:
            raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHOD_POINTS)}")
        times = np.asarray(slice_times_s, dtype=np.float64)
        self.slice_times_s = tuple(float(t) for t in times)
        self.tr_s = float(tr_s)
        self.axis = int(axis)
        self.reference_s = float(times.min()) if reference_s is None else float(reference_s)
        self.method = method
        self.n_points = METHOD_POINTS[method]
        self._shifts = tuple(float(v) for v in (times - self.reference_s) / self.tr_s)
        # Past samples by volume index; those older than n_points volumes before the latest index are dropped.
        self._history: dict[int, np.ndarray] = {}

    @property
    def n_slices(self) -> int:
        """Slices along the slice axis."""
        return len(self.slice_times_s)

    def _shape(self, ndim: int) -> tuple[int, ...]:
        """Shape that broadcasts a per-slice vector along :attr:`axis` of an ``ndim`` array."""
        shape = [1] * ndim
        shape[self.axis] = self.n_slices
        return tuple(shape)

    def weights(self, ages: tuple[int, ...]) -> np.ndarray:
        """Per-slice weights (float32, shape (len(ages), n_slices)) of samples ``ages`` volumes old."""
        return _lagrange_weights(ages, self._shifts).astype(np.float32)

    def correct(self, index: int, data: np.ndarray) -> np.ndarray:
        """The corrected volume ``index`` (0-based, volumes counted with the missing ones).

        ``data`` is kept (not copied: the caller must not change it) as the
        sample of volume ``index`` for the next volumes, replacing an earlier
        one of the same index. Only volumes with a lower index serve as past
        samples. The first volume, and one after a gap longer than the
        method's reach, is returned as it is.
        """
        if data.shape[self.axis] != self.n_slices:
            raise ValueError(f"volume has {data.shape[self.axis]} slices along axis {self.axis}, "
                             f"slice times give {self.n_slices}")
        index = int(index)
        # The nearest n_points - 1 earlier volumes within reach, newest first.
        ages = sorted(index - j for j in self._history if 0 < index - j <= self.n_points)[: self.n_points - 1]
        past = [self._history[index - a] for a in ages]
        self._remember(index, data)
        if not past:
            return data
        ages = (0, *ages)
        samples = [data, *past]
        w = self.weights(ages)
        shape = self._shape(data.ndim)
        if len(samples) == 2:  # linear: x0 + w1 (x1 - x0), the two weights sum to 1
            return data + w[1].reshape(shape) * (samples[1] - data)
        out = w[0].reshape(shape) * data
        for wj, xj in zip(w[1:], samples[1:]):
            out += wj.reshape(shape) * xj
        return out

    def _remember(self, index: int, data: np.ndarray) -> None:
        """Keep ``data`` as volume ``index``'s sample; drop samples no later volume can reach."""
        self._history[index] = data
        oldest = max(self._history) - self.n_points  # a volume after the latest reaches back this far at most
        for j in [j for j in self._history if j < oldest]:
            del self._history[j]

    def forget(self, index: int) -> None:
        """Take volume ``index``'s sample out (its processing failed): later volumes interpolate across it."""
        self._history.pop(int(index), None)

    def reset(self) -> None:
        """Forget the past volumes: the next one passes through as the first."""
        self._history.clear()
