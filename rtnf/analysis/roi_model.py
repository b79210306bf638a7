"""Per-ROI model: incremental GLM, cleaned signal and percent signal change.

Each ROI's mean signal enters an incremental GLM (task, constant, motion,
drift); the cleaned signal is the raw signal minus the fitted nuisance
(motion and drift). Percent signal change is taken against the most recent
baseline period: the baseline blocks shifted by the hemodynamic lag (see
:func:`baseline_segments`), or a running window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .design import Design, DesignRows
from .glm import IncrementalGLM
from .protocol import Protocol


@dataclass(frozen=True)
class RoiValues:
    """One ROI's values for one volume (None where not computable)."""

    raw: float | None
    clean: float | None
    psc: float | None


class RoiModel:
    """Incremental GLM of the ROI signals and their drift-cleaned percent signal change.

    Every column of the design is in the model from the first volume on,
    each nuisance and task coefficient with a zero-mean Gaussian prior worth
    some volumes of data (:func:`prior_precision`) that fades as the run
    goes on; the estimates equal a batch ridge fit of the volumes so far at
    every volume (:meth:`IncrementalGLM.ridge_coefficients`). Why not enter
    terms one by one, as an ordinary least-squares fit must (each only once
    it is estimable)? Because a term that enters is fitted on a handful of
    volumes, or while still nearly collinear with the constant, and its
    first estimate is wild: on real runs the cleaned signal jumped by up to
    27 standard deviations of the ROI signal at such entries. With the prior
    a coefficient starts at zero and grows only as the data resolve it, so
    the cleaned signal changes smoothly, and by the end of a run the prior
    weighs a few volumes against hundreds: the online estimate meets the
    offline one.

    Parameters
    ----------
    design : Design
        The run's design (one row per kept volume).
    protocol : Protocol
        Conditions per volume, to find the baseline blocks.
    n_rois : int
        Number of ROI signals.
    drift_cutoff_s : float
        High-pass cutoff of the design, in seconds.
    min_baseline_volumes : int
        Baseline volumes needed before a percent signal change is given.
    running_baseline_volumes : int, optional
        If given, the baseline is the mean of the last this many baseline-period
        volumes seen (across blocks) instead of the most recent baseline period.
    """

    def __init__(
        self,
        design: Design,
        protocol: Protocol,
        n_rois: int,
        drift_cutoff_s: float = 128.0,
        min_baseline_volumes: int = 3,
        running_baseline_volumes: int | None = None,
    ) -> None:
        self.design = design
        self._rows = DesignRows(design)  # this model's own online (motion, confound) rows
        self.tr_s = protocol.tr_s
        self.drift_cutoff_s = drift_cutoff_s
        self.glm = IncrementalGLM(design.n_regressors, n_rois)
        self._prior = prior_precision(design)
        self.min_baseline_volumes = min_baseline_volumes
        self._nuisance = design.nuisance_columns
        self._drift = design.drift_columns
        self._raw = np.full((protocol.n_volumes, n_rois), np.nan)
        self._baseline_segments = baseline_segments(design)
        self._quiet = np.zeros(protocol.n_volumes, dtype=bool)
        for start, stop in self._baseline_segments:
            self._quiet[start:stop] = True
        self.running_baseline_volumes = running_baseline_volumes
        self._clean_rows = None

    def update(
        self, index: int, raw: np.ndarray, motion: np.ndarray | None = None, include: bool = True
    ) -> list[RoiValues]:
        """Add volume ``index`` (counted from the first kept volume) and return every ROI's values.

        Parameters
        ----------
        index : int
            Kept-volume index.
        raw : ndarray, shape (n_rois,)
            Mean ROI signals of this volume.
        motion : ndarray, optional
            This volume's motion regressors (see :func:`rtnf.analysis.motion.motion_regressors`)
            followed by its confound values; required when the design has such columns.
        include : bool
            False for a censored volume: its values are computed with the
            model so far, but it neither updates the model nor counts as
            baseline.
        """
        raw = np.asarray(raw, dtype=np.float64)
        if not np.all(np.isfinite(raw)):
            include = False  # a non-finite value would spoil the fit for the rest of the run
        row = self._rows.row(index, motion)
        if include:
            self._raw[index] = raw
            self.glm.update(row, raw)
        clean_rows = self._clean_rows = self._cleaner(index)
        if include:
            clean = clean_rows(np.array([index]))[0]
        else:
            self._raw[index] = raw
            clean = clean_rows(np.array([index]))[0]
            self._raw[index] = np.nan
        base = self._baseline_mean(index, clean_rows)
        out = []
        for k in range(raw.size):
            psc = None
            if base is not None and base[k] > 0:
                psc = float(100.0 * (clean[k] - base[k]) / base[k])
            out.append(RoiValues(float(raw[k]), float(clean[k]), psc))
        return out

    def clean_at(self, rows: np.ndarray) -> np.ndarray:
        """Cleaned signals of kept volumes ``rows`` under the current model, shape (rows, n_rois)."""
        return self._clean_rows(np.asarray(rows))

    def _cleaner(self, index: int):
        """A function giving the cleaned signal (raw minus fitted nuisance) at given rows.

        Uses the model after volume ``index``: every column, with the prior of
        :func:`prior_precision` faded by the volumes seen (identifiable from
        the first volume on, since only the constant has no prior). Costs
        O(rows x columns) per call, so the run's length never matters.
        """
        cols = self._nuisance
        if cols.size == 0 or self.glm.n_obs == 0:
            return lambda rows: self._raw[rows]
        fade = PRIOR_FADE_VOLUMES / (PRIOR_FADE_VOLUMES + self.glm.n_obs)
        beta = self.glm.ridge_coefficients(self._prior * fade)[cols]
        return lambda rows: self._raw[rows] - self._rows.matrix[np.ix_(rows, cols)] @ beta

    def _baseline_mean(self, index: int, clean_rows) -> np.ndarray | None:
        """Mean cleaned signal over the most recent baseline period with enough volumes seen."""
        if self.running_baseline_volumes is not None:
            rows = np.flatnonzero(self._quiet[: index + 1] & ~np.isnan(self._raw[: index + 1]).any(axis=1))
            rows = rows[-self.running_baseline_volumes :]
            return clean_rows(rows).mean(axis=0) if rows.size >= self.min_baseline_volumes else None
        for start, stop in reversed(self._baseline_segments):
            if start > index:
                continue
            rows = np.arange(start, min(stop, index + 1))
            rows = rows[~np.isnan(self._raw[rows]).any(axis=1)]  # missing volumes have no data
            if rows.size >= self.min_baseline_volumes:
                return clean_rows(rows).mean(axis=0)
        return None

    def window_contrast(self, index: int, window: int, stat: str) -> np.ndarray | None:
        """Regulation effect in the last ``window`` volumes: beta or t of the first task regressor.

        A small least-squares fit of the cleaned signals on the first task
        regressor and a constant over the window (missing volumes left out).
        Returns one value per ROI, or None while the regressor does not vary
        within the window.

        Parameters
        ----------
        index : int
            Current kept-volume index (after :meth:`update`).
        window : int
            Window length in volumes.
        stat : {"beta", "t"}
            Which statistic to return.
        """
        rows = np.arange(max(0, index - window + 1), index + 1)
        rows = rows[~np.isnan(self._raw[rows]).any(axis=1)]
        x = self._rows.matrix[rows, 0]
        if rows.size < 4 or np.ptp(x) < 1e-6 * max(1.0, np.abs(x).max()):
            return None
        X = np.column_stack([x, np.ones(rows.size)])
        y = self._clean_rows(rows)
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        if stat == "beta":
            return beta[0]
        resid = y - X @ beta
        dof = rows.size - 2
        sigma2 = np.sum(resid**2, axis=0) / dof
        var = sigma2 * np.linalg.inv(X.T @ X)[0, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(var > 0, beta[0] / np.sqrt(var), np.nan)


# Prior weight, in volumes of data, on a zero effect of each term (see prior_precision),
# at the start of the run; it fades as PRIOR_FADE_VOLUMES / (PRIOR_FADE_VOLUMES + n)
# after n volumes, so late in a run the fit is nearly ordinary least squares
# (unbiased drift removal) while early estimates stay tame.
NUISANCE_PRIOR_VOLUMES = 20.0
PRIOR_FADE_VOLUMES = 20.0
TASK_PRIOR_VOLUMES = 1.0
# Typical size of each motion regressor, for its prior: 1 mm of translation and
# 0.02 rad of rotation (1 mm at 50 mm, FD's head radius); derivatives alike,
# squares squared. Motion much smaller than this is modelled only as the run
# accumulates evidence, as it should be: a large coefficient on a tiny regressor
# is what overfitting looks like. The weights (20 volumes fading over 20, 1 mm) were
# chosen on three real task runs (tests/test_fidelity.py): where an ordinary fit
# gains a term, the cleaned signal moves by at most 0.09 SD of the ROI signal with
# or without motion regressors (27 SD before); 5 volumes allowed 0.33 SD, a motion
# scale of 0.1 mm 0.24 SD; stronger priors leave more of a slow drift in.
MOTION_SCALE = {"trans": 1.0, "rot": 0.02}
# Typical size of a confound regressor (rtnf.analysis.confounds): each source delivers
# its columns standardised (unit-amplitude Fourier terms, z-scored tissue signals).
CONFOUND_SCALE = 1.0


def prior_precision(design: Design) -> np.ndarray:
    """Prior precision of every design column for the ROI model.

    A term's prior says "this term has no effect", with the weight of
    ``n0`` volumes in which the regressor had its typical size ``s``:
    ``lambda = n0 * s**2``. This is invariant to the signal's scale (the
    penalty is on the term's effect ``s * beta``, weighed against squared
    residuals in the same units). The typical size of a cosine drift or a
    task regressor is its root mean square over the run, known in advance;
    that of a motion regressor is :data:`MOTION_SCALE`, that of a confound
    :data:`CONFOUND_SCALE` (sources standardise them). The constant has no
    prior. Task terms get a weak prior (:data:`TASK_PRIOR_VOLUMES`) so that
    the model is identifiable before the first task block.
    """
    prior = np.zeros(design.n_regressors)
    with np.errstate(invalid="ignore"):  # motion columns are NaN until filled
        rms = np.sqrt(np.mean(np.nan_to_num(design.matrix) ** 2, axis=0))
    n_task = design.n_core - 1
    prior[:n_task] = TASK_PRIOR_VOLUMES * np.maximum(rms[:n_task], 1e-6) ** 2
    prior[design.drift_columns] = NUISANCE_PRIOR_VOLUMES * rms[design.drift_columns] ** 2
    for k in design.motion_columns:
        name = design.names[k]
        s = MOTION_SCALE[name.split("_")[0]]
        prior[k] = NUISANCE_PRIOR_VOLUMES * (s * s if "power2" in name else s) ** 2
    prior[design.confound_columns] = NUISANCE_PRIOR_VOLUMES * CONFOUND_SCALE**2
    return prior


BASELINE_RESPONSE_FRACTION = 0.1


def baseline_segments(design: Design) -> list[tuple[int, int]]:
    """Periods where the model predicts no task response: (start, stop) volume ranges.

    The protocol's baseline blocks, shifted by the hemodynamic lag: a volume
    belongs to the baseline when every task regressor (HRF-convolved boxcar)
    is below ``BASELINE_RESPONSE_FRACTION`` of its peak. This drops the tail
    of the response at the start of a rest block and keeps the first
    volumes of the next regulation block, before the response rises.
    """
    task = design.matrix[:, : design.n_core - 1]
    names = design.names[: design.n_core - 1]
    main = [k for k, n in enumerate(names) if not n.endswith("_derivative")]
    quiet = np.all(task[:, main] <= BASELINE_RESPONSE_FRACTION * task[:, main].max(axis=0), axis=1)
    segments, start = [], None
    for i, q in enumerate(np.append(quiet, False)):
        if q and start is None:
            start = i
        elif not q and start is not None:
            segments.append((start, i))
            start = None
    return segments
