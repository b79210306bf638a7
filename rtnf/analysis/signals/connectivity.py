"""Connectivity feedback: the coupling of two ROIs, volume by volume.

Two built-in signals on the :class:`~rtnf.analysis.signals.base.FeedbackSignal`
interface, both computed from the ROIs' *cleaned* signals
(:attr:`VolumeInput.clean`: each ROI's mean minus the drift and motion fitted
so far by the incremental model, as delivered at each volume) over a sliding
window of the last ``window_s`` seconds:

``connectivity`` (:class:`SlidingCorrelation`)
    The Pearson correlation of the two ROIs within the window, optionally
    Fisher-z transformed, optionally partial (a third ROI or the global
    signal regressed out of both).
``ppi`` (:class:`PsychophysiologicalInteraction`)
    The psychophysiological interaction within the window (O'Reilly et al.
    2012): how much more the target follows the seed during the regulation
    condition than outside it.

Config example::

    [signals.acc_insula]
    class = "connectivity"
    rois = ["acc", "insula"]
    window_s = 30
    fisher_z = true
    partial = "global"          # or a third ROI's name, or leave it out

    [signals.acc_insula_ppi]
    class = "ppi"
    rois = ["acc", "insula"]    # seed, target
    condition = "up"            # default: the protocol's first task condition
    window_s = 60

    [feedback]
    source = "acc_insula"

The window
----------
The window of volume ``i`` holds the kept volumes ``i - W + 1 ... i`` with
``W = round(window_s / tr_s)``. Censored volumes, volumes that never arrived
and volumes whose cleaned value is missing (or whose partial signal is) are
left out, so the window may hold fewer than ``W`` volumes; until it holds
``min_volumes`` usable ones the value is None with a :attr:`reason`. Each
volume's cleaned value is the one the model gave when it arrived (no
revision as the model learns), so a value is reproducible from the table.
Each step costs O(W): a ring buffer of the last ``W`` volumes, centred sums
in two passes (no running sums: they lose digits on scanner intensities of
thousands with fluctuations of a few units).

References
----------
O'Reilly JX, Woolrich MW, Behrens TEJ, Smith SM, Johansen-Berg H (2012). Tools
of the trade: psychophysiological interactions and functional connectivity.
Soc Cogn Affect Neurosci 7(5):604-609.

Gitelman DR, Penny WD, Ashburner J, Friston KJ (2003). Modeling regional and
psychophysiologic interactions in fMRI: the importance of hemodynamic
deconvolution. NeuroImage 19(1):200-207.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import FeedbackSignal, SignalContext, SignalError, VolumeInput

__all__ = ["SlidingCorrelation", "PsychophysiologicalInteraction", "psych_regressor", "GLOBAL", "GLOBAL_VOXELS",
           "MIN_VOLUMES", "PPI_MIN_VOLUMES", "R_CLIP"]

GLOBAL = "global"
"""``partial = "global"``: regress out the global signal (mean of the realigned volume over the brain mask)."""

GLOBAL_VOXELS = 4000
"""About how many brain-mask voxels (every k-th, C order) the global signal is the mean of."""

MIN_VOLUMES = 5
"""Fewest usable volumes a correlation is ever computed from (and the smallest window allowed)."""

PPI_MIN_VOLUMES = 8
"""Fewest usable volumes a PPI regression (four parameters) is ever computed from."""

R_CLIP = 1.0 - 1e-7
"""A correlation is clipped to +/- this before the Fisher z transform (|z| <= 8.4 instead of infinity)."""


class _Window:
    """The last ``size`` kept volumes' values, by volume index (a ring buffer).

    Parameters
    ----------
    size : int
        Window length in volumes.
    n_values : int
        Values stored per volume.
    """

    def __init__(self, size: int, n_values: int) -> None:
        self.size = size
        self.index = np.full(size, -(2**62), dtype=np.int64)  # volume index held in each slot
        self.values = np.zeros((n_values, size))

    def add(self, index: int, values: tuple[float, ...]) -> None:
        """Store volume ``index``'s values (over whatever its slot held: a volume >= size earlier)."""
        slot = index % self.size
        self.index[slot] = index
        self.values[:, slot] = values

    def current(self, index: int) -> np.ndarray:
        """Mask of the slots holding volumes ``index - size + 1 ... index``."""
        return (self.index > index - self.size) & (self.index <= index)


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _window_volumes(window_s: float, tr_s: float, smallest: int) -> int:
    """Window length in volumes, ``round(window_s / tr_s)``; :class:`SignalError` when below ``smallest``."""
    n = int(round(window_s / tr_s))
    if n < smallest:
        raise SignalError(
            f"invalid value for 'window_s': {window_s:g} s is {n} volumes at TR {tr_s:g} s. "
            f"Allowed: at least {smallest} volumes ({smallest * tr_s:g} s)."
        )
    return n


def _min_volumes(given: int | None, window: int, smallest: int) -> int:
    """``given``, or by default half the window but at least ``smallest``; checked against the window."""
    n = max(smallest, math.ceil(window / 2)) if given is None else given
    if not smallest <= n <= window:
        raise SignalError(
            f"invalid value for 'min_volumes': {n}. Allowed: from {smallest} to the window's {window} volumes."
        )
    return n


def _distinct(value: tuple[str, str]) -> tuple[str, str]:
    if value[0] == value[1]:
        raise ValueError(f"two different ROIs are needed, got {list(value)}")
    return value


class SlidingCorrelation(FeedbackSignal):
    """Sliding-window correlation of two ROIs' cleaned signals (built-in name ``"connectivity"``).

    Each volume, over the usable volumes ``k`` of the window (see the module
    docstring), with ``a``, ``b`` the two ROIs' cleaned signals (scanner
    intensity units) centred on their window means::

        r = sum(a b) / sqrt(sum(a a) sum(b b))

    With ``partial``, the correlation of the residuals of ``a`` and ``b``
    after regression on ``[1, c]``, ``c`` the partial signal::

        r = (r_ab - r_ac r_bc) / sqrt((1 - r_ac**2) (1 - r_bc**2))

    The value is ``arctanh(r)`` with ``fisher_z`` (``r`` clipped to
    :data:`R_CLIP` first), else ``r``; dimensionless. None (with
    :attr:`reason`) while the window holds fewer than ``min_volumes`` usable
    volumes or while a signal is constant in it.

    Outputs (``signal_<name>_r``, ``signal_<name>_n``): the correlation
    before the transform, and the number of volumes it used.

    The global signal (``partial = "global"``) is the mean of the realigned
    volume over every k-th voxel of the brain mask (about
    :data:`GLOBAL_VOXELS` of them, resampled by :attr:`VolumeInput.sample`),
    or ``VolumeInput.global_signal`` when the pipeline provides one.
    :class:`VolumeInput` carries no cleaned global signal: this one is raw,
    drift included, so within a window it also removes the ROIs' share of a
    linear trend (negligible for the cleaned signals, which have none to
    speak of). An ROI named ``"global"`` cannot be the partial signal: the
    name means the global signal.
    """

    class Config(BaseModel):
        """The keys of a ``[signals.<name>]`` table with ``class = "connectivity"``.

        Attributes
        ----------
        rois : tuple of str
            The two ROIs (names of ``[rois.<name>]`` tables), in any order.
        window_s : float
            Window length in seconds (rounded to whole volumes; at least
            :data:`MIN_VOLUMES` volumes).
        fisher_z : bool
            Feed back Fisher's ``z = arctanh(r)`` (default) instead of ``r``.
        partial : str or None
            A third ROI whose cleaned signal is regressed out of both, or
            ``"global"`` for the global signal; None (default) for a plain correlation.
        min_volumes : int or None
            Usable volumes needed in the window before a value is given;
            default half the window, at least :data:`MIN_VOLUMES`.
        """

        model_config = ConfigDict(extra="forbid")

        rois: tuple[str, str]
        window_s: float = Field(30.0, gt=0, le=3600)
        fisher_z: bool = True
        partial: Optional[str] = None
        min_volumes: Optional[int] = Field(None, ge=MIN_VOLUMES)

        @field_validator("rois")
        @classmethod
        def _two_rois(cls, v: tuple[str, str]) -> tuple[str, str]:
            return _distinct(v)

        @field_validator("partial")
        @classmethod
        def _partial_not_a_pair_roi(cls, v: str | None, info) -> str | None:  # noqa: ANN001
            rois = info.data.get("rois")
            if v is not None and rois is not None and v in rois:
                raise ValueError(f"the partial signal {v!r} is one of the correlated ROIs {list(rois)}")
            return v

    columns: ClassVar[tuple[str, ...]] = ("r", "n")

    def __init__(self, name: str, config: BaseModel) -> None:
        super().__init__(name, config)
        self.window_volumes: int | None = None
        self.min_volumes: int | None = None
        self._window: _Window | None = None
        self._global_indices: np.ndarray | None = None

    def fit(self, context: SignalContext) -> None:
        """Check the ROIs, size the window, and for ``partial = "global"`` pick the brain voxels.

        Raises
        ------
        SignalError
            An unknown ROI, or a window shorter than :data:`MIN_VOLUMES` volumes
            or than ``min_volumes``.
        """
        cfg = self.config
        for roi in cfg.rois:
            context.require_roi(roi)
        if cfg.partial == GLOBAL:
            brain = np.asarray(context.brain_indices)
            if brain.size == 0:
                raise SignalError("invalid value for 'partial': 'global', but the run has no brain mask")
            # a few thousand voxels spread over the brain give its mean as well as all of them (the global
            # signal is spatially coherent) at a fraction of the resampling: 0.2 ms instead of 1.2 ms at 64x64x36
            self._global_indices = brain[:: max(1, brain.size // GLOBAL_VOXELS)]
        elif cfg.partial is not None:
            context.require_roi(cfg.partial)
        self.window_volumes = _window_volumes(cfg.window_s, context.tr_s, MIN_VOLUMES)
        self.min_volumes = _min_volumes(cfg.min_volumes, self.window_volumes, MIN_VOLUMES)
        self._window = _Window(self.window_volumes, 3 if cfg.partial is not None else 2)

    def _partial_value(self, volume: VolumeInput) -> float | None:
        partial = self.config.partial
        if partial != GLOBAL:
            return volume.clean.get(partial)
        given = getattr(volume, "global_signal", None)
        if given is not None:
            return float(given)
        return float(np.mean(volume.sample(self._global_indices)))

    def step(self, volume: VolumeInput) -> float | None:
        """The window's (partial) correlation after volume ``volume`` (Fisher z or r; None with a reason)."""
        if self._window is None:
            raise SignalError(f"signals.{self.name}: step before fit")
        a_name, b_name = self.config.rois
        a, b = volume.clean.get(a_name), volume.clean.get(b_name)
        values: tuple[float | None, ...] = (a, b)
        skipped = ""
        if volume.censored:
            skipped = "this volume is censored"
        elif not _finite(a, b):
            skipped = "this volume has no cleaned value of " + " and ".join(
                n for n, v in ((a_name, a), (b_name, b)) if not _finite(v))
        elif self.config.partial is not None:
            c = self._partial_value(volume)
            values = (a, b, c)
            if not _finite(c):
                skipped = f"this volume has no {self.config.partial} signal"
        if not skipped:
            self._window.add(volume.index, values)  # type: ignore[arg-type]
        return self._value(volume.index, skipped)

    def _value(self, index: int, skipped: str) -> float | None:
        window = self._window
        mask = window.current(index)
        n = int(mask.sum())
        self.outputs = {"r": None, "n": float(n)}
        left_out = f" ({skipped}: left out)" if skipped else ""
        if n < self.min_volumes:  # type: ignore[operator]
            self.reason = (f"window holds {n} usable volumes of the {self.min_volumes} needed "
                           f"({self.window_volumes}-volume window){left_out}")
            return None
        x = window.values[:, mask]
        x = x - x.mean(axis=1, keepdims=True)
        sxx = x @ x.T  # centred sums of squares and products
        var = np.diag(sxx)
        scale = np.sum(np.abs(window.values[:, mask]), axis=1) / n
        flat = var <= (1e-12 * np.maximum(scale, 1e-300)) ** 2 * n
        if flat.any():
            names = [*self.config.rois, self.config.partial][: len(var)]
            self.reason = "constant in the window: " + ", ".join(nm for nm, f in zip(names, flat) if f)
            return None
        if self.config.partial is None:
            r = sxx[0, 1] / math.sqrt(var[0] * var[1])
        else:
            # residuals on [1, c]: s_ab.c = s_ab - s_ac s_bc / s_cc, and likewise for s_aa.c, s_bb.c
            saa = var[0] - sxx[0, 2] ** 2 / var[2]
            sbb = var[1] - sxx[1, 2] ** 2 / var[2]
            sab = sxx[0, 1] - sxx[0, 2] * sxx[1, 2] / var[2]
            if not (saa > 1e-12 * var[0] and sbb > 1e-12 * var[1]):
                self.reason = f"{self.config.partial} explains all of an ROI's signal in the window"
                return None
            r = sab / math.sqrt(saa * sbb)
        r = min(1.0, max(-1.0, float(r)))
        self.outputs["r"] = r
        self.reason = None
        if self.config.fisher_z:
            return math.atanh(min(R_CLIP, max(-R_CLIP, r)))
        return r


class PsychophysiologicalInteraction(FeedbackSignal):
    """Coupling of two ROIs during a condition versus outside it: a windowed PPI (built-in name ``"ppi"``).

    The PPI model of O'Reilly et al. (2012), fitted by least squares over the
    usable volumes of the window (see the module docstring)::

        target = b0 + b1 seed + b2 psych + b3 (seed x psych) + e

    with ``seed`` and ``target`` the two ROIs' cleaned signals, each
    z-scored within the window (``standardize``, the default: so the slopes
    do not depend on the ROIs' intensities), and ``psych`` the
    psychological regressor of ``condition``: its blocks convolved with
    SPM's canonical HRF (the model's task regressor, plateau 1 in a long
    block; ``psych = "hrf"``, the default) or the protocol's labels (1 in the
    condition's volumes, 0 elsewhere; ``psych = "boxcar"``). The value is
    ``b3``: the slope of target on seed at ``psych = 1`` (the condition's
    plateau) minus that at ``psych = 0`` (every other volume: baseline and
    other task conditions), in target standard deviations per seed standard
    deviation (intensity ratio without ``standardize``). Positive: the two
    ROIs are more coupled during the condition. ``b3`` does not change if
    ``seed`` or ``psych`` is shifted (shifts go into ``b1``/``b2``), so the
    centring O'Reilly et al. advise for interpreting the main effects does not
    change the fed-back value. The interaction is formed on the BOLD signals,
    without deconvolution to the neural level (Gitelman et al. 2003): the
    usual choice for block designs, which a regulation protocol is.

    A PPI needs both conditions in the window: None (with :attr:`reason`)
    until the window holds ``min_volumes`` usable volumes, at least
    ``min_each`` of them with ``psych >= 0.5`` and ``min_each`` with
    ``psych < 0.5``; so ``window_s`` should exceed a block (default 60 s).

    Outputs (``signal_<name>_slope_condition``, ``..._slope_baseline``,
    ``..._n``): ``b1 + b3``, ``b1`` and the number of volumes used.
    """

    class Config(BaseModel):
        """The keys of a ``[signals.<name>]`` table with ``class = "ppi"``.

        Attributes
        ----------
        rois : tuple of str
            (seed, target): names of ``[rois.<name>]`` tables.
        condition : str or None
            The regulation condition; default the protocol's first task condition.
        window_s : float
            Window length in seconds (rounded to whole volumes; at least
            :data:`PPI_MIN_VOLUMES` volumes).
        psych : {"hrf", "boxcar"}
            Psychological regressor: the condition's HRF-convolved blocks, or its labels.
        standardize : bool
            z-score seed and target within the window (default), so ``b3`` is in standard deviations.
        min_volumes : int or None
            Usable volumes needed in the window; default half the window, at least :data:`PPI_MIN_VOLUMES`.
        min_each : int
            Usable volumes needed in the window on each side of ``psych = 0.5``.
        """

        model_config = ConfigDict(extra="forbid")

        rois: tuple[str, str]
        condition: Optional[str] = None
        window_s: float = Field(60.0, gt=0, le=3600)
        psych: Literal["hrf", "boxcar"] = "hrf"
        standardize: bool = True
        min_volumes: Optional[int] = Field(None, ge=PPI_MIN_VOLUMES)
        min_each: int = Field(3, ge=2)

        @field_validator("rois")
        @classmethod
        def _two_rois(cls, v: tuple[str, str]) -> tuple[str, str]:
            return _distinct(v)

    columns: ClassVar[tuple[str, ...]] = ("slope_condition", "slope_baseline", "n")

    def __init__(self, name: str, config: BaseModel) -> None:
        super().__init__(name, config)
        self.condition: str | None = None
        self.psych_regressor: np.ndarray | None = None
        """The psychological regressor per kept volume (set by :meth:`fit`)."""
        self.window_volumes: int | None = None
        self.min_volumes: int | None = None
        self._window: _Window | None = None

    def fit(self, context: SignalContext) -> None:
        """Check the ROIs and the condition, build the psychological regressor, size the window.

        Raises
        ------
        SignalError
            An unknown ROI, a condition that is not a task condition of the
            protocol, or a window too short.
        """
        cfg = self.config
        for roi in cfg.rois:
            context.require_roi(roi)
        protocol = context.protocol
        tasks = tuple(protocol.task_conditions)
        if not tasks:
            raise SignalError("the protocol has no task condition to compare with its baseline")
        condition = tasks[0] if cfg.condition is None else cfg.condition
        if condition not in tasks:
            raise SignalError(f"invalid value for 'condition': {condition!r}. "
                              f"Allowed: a task condition of the protocol {list(tasks)}")
        self.condition = condition
        self.psych_regressor = psych_regressor(protocol, condition, cfg.psych)
        self.window_volumes = _window_volumes(cfg.window_s, context.tr_s, PPI_MIN_VOLUMES)
        self.min_volumes = _min_volumes(cfg.min_volumes, self.window_volumes, PPI_MIN_VOLUMES)
        if 2 * cfg.min_each > self.window_volumes:
            raise SignalError(f"invalid value for 'min_each': {cfg.min_each}. Allowed: at most half "
                              f"the window's {self.window_volumes} volumes")
        self._window = _Window(self.window_volumes, 3)

    def step(self, volume: VolumeInput) -> float | None:
        """The window's PPI coefficient ``b3`` after volume ``volume`` (None with a reason)."""
        if self._window is None or self.psych_regressor is None:
            raise SignalError(f"signals.{self.name}: step before fit")
        seed_name, target_name = self.config.rois
        s, t = volume.clean.get(seed_name), volume.clean.get(target_name)
        skipped = ""
        if volume.censored:
            skipped = "this volume is censored"
        elif not _finite(s, t):
            skipped = "this volume has no cleaned value of " + " and ".join(
                n for n, v in ((seed_name, s), (target_name, t)) if not _finite(v))
        elif not 0 <= volume.index < self.psych_regressor.size:
            skipped = f"volume {volume.index} is outside the protocol's {self.psych_regressor.size} volumes"
        if not skipped:
            self._window.add(volume.index, (s, t, self.psych_regressor[volume.index]))  # type: ignore[arg-type]
        return self._value(volume.index, skipped)

    def _value(self, index: int, skipped: str) -> float | None:
        window, cfg = self._window, self.config
        mask = window.current(index)
        n = int(mask.sum())
        self.outputs = {"slope_condition": None, "slope_baseline": None, "n": float(n)}
        left_out = f" ({skipped}: left out)" if skipped else ""
        if n < self.min_volumes:  # type: ignore[operator]
            self.reason = (f"window holds {n} usable volumes of the {self.min_volumes} needed "
                           f"({self.window_volumes}-volume window){left_out}")
            return None
        seed, target, psych = window.values[:, mask]
        n_on = int(np.count_nonzero(psych >= 0.5))
        if min(n_on, n - n_on) < cfg.min_each:
            self.reason = (f"window holds {n_on} {self.condition} and {n - n_on} other volumes; "
                           f"a PPI needs {cfg.min_each} of each{left_out}")
            return None
        if cfg.standardize:
            seed, target = _zscore(seed), _zscore(target)
            if seed is None or target is None:
                self.reason = "an ROI is constant in the window"
                return None
        X = np.column_stack([np.ones(n), seed, psych, seed * psych])
        beta, _, rank, _ = np.linalg.lstsq(X, target, rcond=None)
        if rank < 4:
            self.reason = "seed, condition and their product are collinear in the window"
            return None
        b1, b3 = float(beta[1]), float(beta[3])
        self.outputs.update(slope_condition=b1 + b3, slope_baseline=b1)
        self.reason = None
        return b3


def _zscore(x: np.ndarray) -> np.ndarray | None:
    """``x`` centred and divided by its (population) standard deviation; None if constant."""
    x = x - x.mean()
    sd = math.sqrt(float(x @ x) / x.size)
    if not sd > 1e-12 * max(1.0, float(np.max(np.abs(x)))):
        return None
    return x / sd


def psych_regressor(protocol, condition: str, kind: str = "hrf") -> np.ndarray:  # noqa: ANN001
    """The psychological regressor of ``condition`` per kept volume (1 on the condition's plateau, 0 off).

    Parameters
    ----------
    protocol : Protocol
        The run's protocol (:mod:`rtnf.analysis.protocol`).
    condition : str
        A task condition of the protocol.
    kind : {"hrf", "boxcar"}
        ``"hrf"``: the condition's blocks convolved with SPM's canonical HRF,
        the model's task regressor (:func:`rtnf.analysis.design.make_design`):
        0 before a block, 1 on a long block's plateau (up to 1.14 just after
        its onset, the HRF's overshoot); ``"boxcar"``: 1 for the volumes the
        protocol labels ``condition``, else 0.

    Returns
    -------
    ndarray, shape (n_volumes,)
    """
    if kind == "boxcar":
        return np.array([1.0 if c == condition else 0.0 for c in protocol.labels()])
    from rtnf.analysis.design import make_design

    design = make_design(protocol, "spm")
    return np.array(design.matrix[:, design.names.index(condition)], dtype=np.float64)
