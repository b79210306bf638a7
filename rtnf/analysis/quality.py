"""Per-volume data quality: framewise displacement, DVARS, global signal, spikes.

Small pure functions (:func:`framewise_displacement`, :func:`fd_step`,
:func:`dvars`, :func:`global_signal`, :func:`robust_z`) and one streaming
monitor, :class:`QualityMonitor`, that turns each volume's motion parameters
and realigned brain-mask values into a :class:`QualityRow` with flags. The
monitor keeps O(1) state: the previous volume's parameters and mask values,
and fixed-size windows of recent DVARS and global-signal differences.

Definitions
-----------
Framewise displacement (Power et al. 2012, NeuroImage 59:2142):
``FD_i = sum_k |d_k| + r * sum_k |d_(k+3)|`` with ``d = params_i - params_(i-1)``,
translations in mm, rotations in radians converted to arc length on a sphere of
radius ``r = 50 mm``; ``FD_0 = 0``.

DVARS (Power et al. 2012; Smyser et al. 2010): RMS over the brain mask of the
backward temporal difference of the realigned volume,
``DVARS_i = sqrt(mean_v (Y_i(v) - Y_(i-1)(v))^2)``, in image intensity units;
``DVARS_0`` is undefined (None). The relative DVARS divides it by the median
DVARS of the run so far (about 1 on quiet volumes, like Nichols' standardised
DVARS, whose expected value is 1).

Global signal: mean of the realigned volume over the brain mask.

Spikes: a volume is a spike when its DVARS, or the absolute backward difference
of its global signal, lies more than ``spike_z`` robust standard deviations
(1.4826 x median absolute deviation) above the median of the recent window
(the run so far, up to ``window`` volumes). Flagged values do not enter the
window, so one artefact does not hide the next. A spike is brief: when
``new_level_volumes`` volumes in a row are flagged by the same measure, its
level has changed for good (a coil or shim change, the switch to fitted
multi-echo weights) and those values become its window; otherwise every later
volume would be flagged against the old level and censored for the rest of
the run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "framewise_displacement",
    "fd_step",
    "dvars",
    "global_signal",
    "robust_z",
    "QualityMonitor",
    "QualityRow",
]

#: Power et al. (2012): rotations as arc length on a sphere of this radius (mm).
FD_RADIUS_MM = 50.0


def fd_step(params: Sequence[float], previous: Sequence[float] | None, radius_mm: float = FD_RADIUS_MM) -> float:
    """Framewise displacement of one volume (Power et al. 2012).

    Parameters
    ----------
    params, previous : sequence of 6 float
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (radians) of this
        and of the previous volume; ``previous=None`` (first volume) gives 0.
    radius_mm : float
        Sphere radius converting rotations to displacements, in millimeters.

    Returns
    -------
    float
        Framewise displacement in millimeters.
    """
    if previous is None:
        return 0.0
    d = np.abs(np.asarray(params, dtype=np.float64) - np.asarray(previous, dtype=np.float64))
    if d.shape != (6,):
        raise ValueError(f"Invalid value for the 'params' parameter: shape {d.shape}. Allowed: 6 motion parameters.")
    return float(d[:3].sum() + radius_mm * d[3:].sum())


def framewise_displacement(params: np.ndarray, radius_mm: float = FD_RADIUS_MM) -> np.ndarray:
    """Framewise displacement of a whole series of motion parameters.

    Parameters
    ----------
    params : ndarray, shape (n_volumes, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (radians).
    radius_mm : float
        Sphere radius converting rotations to displacements, in millimeters.

    Returns
    -------
    ndarray, shape (n_volumes,)
        FD in millimeters; 0 for the first volume.
    """
    p = np.asarray(params, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 6:
        raise ValueError(
            f"Invalid value for the 'params' parameter: shape {p.shape}. Allowed: (n_volumes, 6) motion parameters."
        )
    d = np.abs(np.diff(p, axis=0))
    fd = np.zeros(p.shape[0])
    fd[1:] = d[:, :3].sum(axis=1) + radius_mm * d[:, 3:].sum(axis=1)
    return fd


def dvars(values: np.ndarray, previous: np.ndarray | None) -> float | None:
    """DVARS: RMS over the mask of the backward temporal difference.

    Parameters
    ----------
    values, previous : ndarray, shape (n_voxels,)
        This and the previous volume's realigned values at the same brain-mask
        voxels (image intensity units). ``previous=None`` gives None.

    Returns
    -------
    float or None
        DVARS in image intensity units.
    """
    if previous is None:
        return None
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(previous, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"Invalid value for the 'values' parameter: shape {a.shape}. Allowed: the previous volume's shape {b.shape}"
            " (the same non-empty mask)."
        )
    d = a - b
    return float(np.sqrt(np.mean(d * d)))


def global_signal(values: np.ndarray) -> float:
    """Mean of the realigned volume over the brain mask (image intensity units)."""
    a = np.asarray(values)
    if a.size == 0:
        raise ValueError("Invalid value for the 'values' parameter: an empty array. Allowed: brain-mask values.")
    return float(np.mean(a, dtype=np.float64))


GLOBAL_LEVEL_FACTOR = 10.0
"""A volume whose global signal is more than this factor above or below the run's level (the median of
the accepted volumes' global signals) is a spike. BOLD moves the global mean by a few percent, a first
volume before steady state by up to about 3 times; a scaling fault or an empty volume by far more."""


def _near_level(gs: float, level: float) -> bool:
    """Whether a global signal lies within :data:`GLOBAL_LEVEL_FACTOR` of the run's level."""
    if not np.isfinite(gs) or level <= 0:
        return bool(np.isfinite(gs))
    return level / GLOBAL_LEVEL_FACTOR <= gs <= level * GLOBAL_LEVEL_FACTOR


def robust_z(value: float, history: Sequence[float] | np.ndarray) -> float:
    """Robust z-score of ``value`` against ``history``: (value - median) / (1.4826 MAD).

    Returns 0 when the history is empty; when the MAD is 0 the z is 0 for a
    value equal to the median and +/-inf otherwise.
    """
    h = np.asarray(history, dtype=np.float64)
    if h.size == 0:
        return 0.0
    med = float(np.median(h))
    mad = 1.4826 * float(np.median(np.abs(h - med)))
    if mad == 0.0:
        return 0.0 if value == med else float(np.sign(value - med) * np.inf)
    return (value - med) / mad


@dataclass(frozen=True)
class QualityRow:
    """Quality of one volume.

    Attributes
    ----------
    framewise_displacement : float
        FD in millimeters (0 for the first volume).
    dvars : float or None
        DVARS in image intensity units (None for the first volume).
    dvars_rel : float or None
        DVARS divided by the median DVARS of the window (None until
        ``min_history`` values).
    dvars_z : float or None
        Robust z of DVARS against the window (None until ``min_history``).
    global_signal : float
        Mean over the brain mask.
    global_signal_z : float or None
        Robust z of the absolute backward difference of the global signal.
    spike : bool
        DVARS or global-signal change above ``spike_z``.
    motion_outlier : bool
        FD above ``fd_threshold_mm``.
    censored : bool
        ``spike or motion_outlier``.
    reasons : tuple of str
        Why the volume was censored (empty if it was not).
    """

    framewise_displacement: float
    dvars: float | None
    dvars_rel: float | None
    dvars_z: float | None
    global_signal: float
    global_signal_z: float | None
    spike: bool
    motion_outlier: bool
    censored: bool
    reasons: tuple[str, ...] = field(default=())


class QualityMonitor:
    """Streaming per-volume quality with thresholds.

    Parameters
    ----------
    fd_threshold_mm : float
        Volumes with framewise displacement above this (mm) are motion
        outliers (Power et al. 2012 used 0.5 mm; 0.2-0.3 mm is stricter).
    spike_z : float
        Robust z (DVARS, or global-signal change) above which a volume is a spike.
    window : int
        Number of recent unflagged volumes the robust statistics use.
    min_history : int
        No spike is flagged before this many values are in the window.
    radius_mm : float
        FD sphere radius in millimeters.
    new_level_volumes : int
        Consecutive volumes flagged by DVARS (or by the global-signal change)
        after which that measure's window restarts from them: a lasting new
        level, not a spike.

    Notes
    -----
    :meth:`update` must be called for the volumes in acquisition order; a
    missing volume is skipped with :meth:`skip` (the next volume's FD and
    DVARS are then taken against the last volume seen).
    """

    def __init__(
        self,
        fd_threshold_mm: float = 0.5,
        spike_z: float = 5.0,
        window: int = 100,
        min_history: int = 10,
        radius_mm: float = FD_RADIUS_MM,
        new_level_volumes: int = 5,
    ) -> None:
        for name, v in (("fd_threshold_mm", fd_threshold_mm), ("spike_z", spike_z), ("radius_mm", radius_mm)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"Invalid value for the '{name}' parameter: {v!r}. Allowed: a number > 0.")
        for name, v, lo in (("window", window, 3), ("min_history", min_history, 2),
                            ("new_level_volumes", new_level_volumes, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"Invalid value for the '{name}' parameter: {v!r}. Allowed: an integer >= {lo}.")
        if min_history > window:
            raise ValueError(
                f"Invalid value for the 'min_history' parameter: {min_history!r}. Allowed: at most window={window}."
            )
        self.fd_threshold_mm = float(fd_threshold_mm)
        self.spike_z = float(spike_z)
        self.window = window
        self.min_history = min_history
        self.radius_mm = float(radius_mm)
        self.new_level_volumes = new_level_volumes
        self.reset()

    def reset(self) -> None:
        """Forget the run (new run)."""
        self._levels: deque[float] = deque(maxlen=self.window)  # accepted volumes' global signals
        self._params: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._gs: float | None = None
        self._dvars_hist: deque[float] = deque(maxlen=self.window)
        self._dgs_hist: deque[float] = deque(maxlen=self.window)
        # Values of the current streak of consecutive flags, per measure (see new_level_volumes).
        self._dvars_streak: list[float] = []
        self._dgs_streak: list[float] = []

    def _track(
        self, hist: deque[float], streak: list[float], value: float | None, flagged: bool
    ) -> tuple[deque[float], list[float]]:
        """A measure's window and streak after this volume: a long enough streak of flags becomes the window."""
        if not flagged or value is None:
            return hist, []
        streak = [*streak, value]
        if len(streak) < self.new_level_volumes:
            return hist, streak
        return deque(streak, maxlen=self.window), []

    def skip(self) -> None:
        """Note a missing volume (nothing changes: the next volume compares with the last one seen)."""

    def checkpoint(self) -> dict[str, Any]:
        """The state :meth:`update` changes, for :meth:`rollback` (a few short windows: microseconds)."""
        return {"_levels": self._levels.copy(), "_params": self._params, "_values": self._values, "_gs": self._gs,
                "_dvars_hist": self._dvars_hist.copy(), "_dgs_hist": self._dgs_hist.copy(),
                "_dvars_streak": list(self._dvars_streak), "_dgs_streak": list(self._dgs_streak)}

    def rollback(self, state: dict[str, Any]) -> None:
        """Back to a :meth:`checkpoint`: the volume updated since is as if it never came (its processing failed)."""
        for name, value in state.items():
            setattr(self, name, value)

    def update(self, params: Sequence[float], values: np.ndarray) -> QualityRow:
        """Quality of the next volume.

        Parameters
        ----------
        params : sequence of 6 float
            Its motion parameters (mm, radians).
        values : ndarray, shape (n_voxels,)
            Its realigned values at the brain-mask voxels (the same voxels every
            volume), e.g. ``Realigner.sample(volume, params, brain_indices)``.

        Returns
        -------
        QualityRow
        """
        p = np.asarray(params, dtype=np.float64)
        vals = np.asarray(values, dtype=np.float64)
        fd = fd_step(p, self._params, self.radius_mm)
        dv = dvars(vals, self._values)
        gs = global_signal(vals)
        dgs = None if self._gs is None else abs(gs - self._gs)

        ready = len(self._dvars_hist) >= self.min_history
        dv_z = robust_z(dv, self._dvars_hist) if (dv is not None and ready) else None
        dv_rel = dv / float(np.median(self._dvars_hist)) if (dv is not None and ready) else None
        gs_z = robust_z(dgs, self._dgs_hist) if (dgs is not None and len(self._dgs_hist) >= self.min_history) else None

        reasons = []
        motion_outlier = fd > self.fd_threshold_mm
        if motion_outlier:
            reasons.append(f"framewise displacement {fd:.2f} mm > {self.fd_threshold_mm:g} mm")
        spike = False
        level = float(np.median(self._levels)) if self._levels else None
        if level is not None and not _near_level(gs, level):
            # Needs only one earlier volume: a volume of absurd intensity (a scaling fault, an all-zero volume)
            # among the first volumes must not enter the baseline, nor be what the next volume is compared with.
            reasons.append(f"global signal {gs:.4g}, the run's level is {level:.4g}")
            return QualityRow(fd, dv, None, None, gs, None, True, motion_outlier, True, tuple(reasons))
        self._levels.append(gs)
        if dv_z is not None and dv_z > self.spike_z:
            spike = True
            reasons.append(f"DVARS robust z {dv_z:.1f} > {self.spike_z:g}")
        if gs_z is not None and gs_z > self.spike_z:
            spike = True
            reasons.append(f"global signal change robust z {gs_z:.1f} > {self.spike_z:g}")
        dv_flag = dv_z is not None and dv_z > self.spike_z
        gs_flag = gs_z is not None and gs_z > self.spike_z
        self._dvars_hist, self._dvars_streak = self._track(self._dvars_hist, self._dvars_streak, dv, dv_flag)
        self._dgs_hist, self._dgs_streak = self._track(self._dgs_hist, self._dgs_streak, dgs, gs_flag)
        if not spike and not motion_outlier:
            if dv is not None:
                self._dvars_hist.append(dv)
            if dgs is not None:
                self._dgs_hist.append(dgs)
        self._params, self._values, self._gs = p, vals, gs
        return QualityRow(
            framewise_displacement=fd,
            dvars=dv,
            dvars_rel=dv_rel,
            dvars_z=dv_z,
            global_signal=gs,
            global_signal_z=gs_z,
            spike=spike,
            motion_outlier=motion_outlier,
            censored=spike or motion_outlier,
            reasons=tuple(reasons),
        )
