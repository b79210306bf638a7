"""From ROI signals to the value the participant sees.

Continuous feedback: the ROI signal cleaned of drift by the incremental GLM,
as percent signal change against the most recent baseline period (baseline
blocks shifted by the hemodynamic lag, see :func:`baseline_segments`),
mapped linearly from ``scale_psc`` to [0, 1] and clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .design import Design
from .glm import IncrementalGLM
from .protocol import Protocol


@dataclass(frozen=True)
class RoiValues:
    """One ROI's values for one volume (None where not computable)."""

    raw: float | None
    clean: float | None
    psc: float | None


@dataclass(frozen=True)
class FeedbackValue:
    """What the screen shows for one volume: ``value`` in [0, 1], or None with a ``reason``."""

    value: float | None
    reason: str | None


def scale(psc: float, low: float, high: float) -> float:
    """Map percent signal change linearly from [low, high] to [0, 1], clipped."""
    return float(min(1.0, max(0.0, (psc - low) / (high - low))))


class RoiModel:
    """Incremental GLM of the ROI signals and their drift-cleaned percent signal change.

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
    """

    def __init__(
        self,
        design: Design,
        protocol: Protocol,
        n_rois: int,
        drift_cutoff_s: float = 128.0,
        min_baseline_volumes: int = 3,
    ) -> None:
        self.design = design
        self.tr_s = protocol.tr_s
        self.drift_cutoff_s = drift_cutoff_s
        self.glm = IncrementalGLM(design.n_regressors, n_rois)
        self.min_baseline_volumes = min_baseline_volumes
        self._nuisance = design.nuisance_columns
        self._raw = np.full((protocol.n_volumes, n_rois), np.nan)
        self._baseline_segments = baseline_segments(design)

    def update(self, index: int, raw: np.ndarray) -> list[RoiValues]:
        """Add volume ``index`` (counted from the first kept volume) and return every ROI's values.

        Parameters
        ----------
        index : int
            Kept-volume index.
        raw : ndarray, shape (n_rois,)
            Mean ROI signals of this volume.
        """
        raw = np.asarray(raw, dtype=np.float64)
        self._raw[index] = raw
        self.glm.update(self.design.matrix[index], raw)
        drift = self._drift_fit(np.arange(index + 1))
        clean_all = self._raw[: index + 1] - drift
        clean = clean_all[index]
        base = self._baseline_mean(index, clean_all)
        out = []
        for k in range(raw.size):
            psc = None
            if base is not None and base[k] > 0:
                psc = float(100.0 * (clean[k] - base[k]) / base[k])
            out.append(RoiValues(float(raw[k]), float(clean[k]), psc))
        return out

    def model_size(self, index: int) -> int:
        """Number of leading design columns fitted after kept volume ``index`` (0 = none yet).

        Task regressors and the constant always; then as many cosine drift
        terms as the elapsed time resolves (SPM's rule, floor(2 * elapsed /
        cutoff), applied to the run so far), fewer while they are still too
        collinear to estimate. Before the core model is identifiable, nothing
        is fitted and the raw signal stands for the cleaned one.
        """
        n_core = self.design.n_core
        if not self.glm.identifiable(n_core):
            return 0
        elapsed_s = (index + 1) * self.tr_s
        q = n_core + min(self._nuisance.size, int(2 * elapsed_s / self.drift_cutoff_s))
        while q > n_core and not self.glm.identifiable(q):
            q -= 1
        return q

    def _drift_fit(self, rows: np.ndarray) -> np.ndarray:
        """Fitted drift at ``rows`` with the model chosen for the last row."""
        q = self.model_size(int(rows[-1]))
        drift_cols = self._nuisance[self._nuisance < q]
        if drift_cols.size == 0:
            return np.zeros((rows.size, self._raw.shape[1]))
        beta = self.glm.coefficients(q)[drift_cols]
        return self.design.matrix[np.ix_(rows, drift_cols)] @ beta

    def _baseline_mean(self, index: int, clean_all: np.ndarray) -> np.ndarray | None:
        """Mean cleaned signal over the most recent baseline period with enough volumes seen."""
        for start, stop in reversed(self._baseline_segments):
            if start > index:
                continue
            values = clean_all[start : min(stop, index + 1)]
            values = values[~np.isnan(values).any(axis=1)]  # missing volumes
            if len(values) >= self.min_baseline_volumes:
                return values.mean(axis=0)
        return None


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


def continuous_feedback(psc: float | None, scale_psc: tuple[float, float]) -> FeedbackValue:
    """Scale a percent signal change for the screen, or say why there is no value."""
    if psc is None:
        return FeedbackValue(None, "waiting for baseline")
    return FeedbackValue(scale(psc, *scale_psc), None)
