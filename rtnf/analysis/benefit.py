"""What the nuisance regressors buy: tSNR, variance explained by each set, and the match with a known truth.

Computed offline, from a run's recorded columns (ROI raw means, motion parameters, ``confound_*`` values) and
its design, by ordinary least squares over the whole run: the report (:mod:`rtnf.apps.report`) and the console
show it per run, the tests assert on it. Sets of columns (:func:`regressor_sets`):

``motion``
    The model's motion regressors (``model.motion_regressors``).
``physio``
    Confound columns of RETROICOR and RVT (names starting ``retroicor_``, ``rvt`` or ``hr``).
``tissue``
    Confound columns of ``[confounds.tissue]`` (WM, CSF, global signal, aCompCor, tCompCor).
``confounds``
    Any other confound column.
``drift``
    The cosine drift terms.

For each ROI: ``tsnr_raw`` (mean / SD of the raw ROI mean), ``tsnr_clean`` (mean of the raw over the SD of the
raw minus every nuisance set's fit: task variance stays in, as in the report's tSNR), ``tsnr_without_confounds``
(the same with only motion and drift removed: the run as it would have been cleaned without the confound
sources); ``unique_r2`` per set: the increase of R² when the set is added last to the full model (task,
constant and the other sets), the share of the ROI's variance only that set explains; and with a truth, the
Pearson r of the truth with the raw, with the cleaned signal without the confound sets, with the cleaned signal,
and with the recorded feedback value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rtnf.analysis.design import Design

#: Sets of nuisance columns, in the order they are reported.
SETS = ("motion", "physio", "tissue", "confounds", "drift")
#: Name prefixes of the physiological confound columns (rtnf.analysis.confounds.physio).
PHYSIO_PREFIXES = ("retroicor_", "rvt", "hr")
#: Names and name prefixes of the tissue confound columns (rtnf.analysis.confounds.tissue).
TISSUE_NAMES = ("white_matter", "csf", "global_signal")
TISSUE_PREFIXES = ("acompcor_", "tcompcor_")


def confound_set(name: str) -> str:
    """``physio``, ``tissue`` or ``confounds``: the set a confound column belongs to, by its name."""
    if name.startswith(PHYSIO_PREFIXES):
        return "physio"
    if name in TISSUE_NAMES or name.startswith(TISSUE_PREFIXES):
        return "tissue"
    return "confounds"


def regressor_sets(design: Design) -> dict[str, np.ndarray]:
    """Column indices of each non-empty nuisance set of ``design`` (see the module's description)."""
    sets: dict[str, list[int]] = {s: [] for s in SETS}
    sets["motion"] = list(design.motion_columns)
    for name, column in zip(design.confounds, design.confound_columns):
        sets[confound_set(name)].append(int(column))
    sets["drift"] = [i for i, n in enumerate(design.names) if n.startswith("drift_")]
    return {k: np.asarray(v, dtype=int) for k, v in sets.items() if len(v)}


@dataclass
class RoiBenefit:
    """One ROI's figures (NaN where not computable); see the module's description."""

    n: int
    tsnr_raw: float
    tsnr_without_confounds: float
    tsnr_clean: float
    unique_r2: dict[str, float] = field(default_factory=dict)
    r_truth: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _fit(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares coefficients and R² (about the mean) of ``y`` on ``X``."""
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    total = float(np.sum((y - y.mean()) ** 2))
    return beta, (1.0 - float(resid @ resid) / total) if total > 0 else float("nan")


def _tsnr(mean: float, values: np.ndarray) -> float:
    sd = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    return mean / sd if sd > 0 else float("nan")


def roi_benefit(design: Design, raw: np.ndarray, use: np.ndarray, truth: np.ndarray | None = None,
                feedback: np.ndarray | None = None) -> RoiBenefit:
    """The figures of one ROI.

    Parameters
    ----------
    design : Design
        The run's design with its motion and confound rows filled (:meth:`Design.with_motion`).
    raw : ndarray, shape (n_volumes,)
        The ROI's raw mean per kept volume (NaN where missing).
    use : ndarray of bool, shape (n_volumes,)
        Volumes to use (present, uncensored, every regressor finite).
    truth : ndarray, optional
        The true activation per kept volume (simulator).
    feedback : ndarray, optional
        The recorded feedback value per kept volume.
    """
    X = design.matrix
    use = use & np.isfinite(raw) & np.all(np.isfinite(X), axis=1)
    sets = regressor_sets(design)
    n = int(use.sum())
    if n < X.shape[1] + 3:
        return RoiBenefit(n, float("nan"), float("nan"), float("nan"))
    y, Xu = raw[use], X[use]
    beta, r2_full = _fit(Xu, y)
    nuisance = np.concatenate(list(sets.values())) if sets else np.empty(0, dtype=int)
    clean = y - Xu[:, nuisance] @ beta[nuisance]
    base = np.concatenate([sets[s] for s in ("motion", "drift") if s in sets] or [np.empty(0, dtype=int)])
    keep = np.setdiff1d(np.arange(X.shape[1]), np.setdiff1d(nuisance, base))
    beta_base, _ = _fit(Xu[:, keep], y)
    base_in_keep = np.searchsorted(keep, base)
    clean_base = y - Xu[:, base] @ beta_base[base_in_keep]
    unique = {}
    for name, columns in sets.items():
        _, r2_without = _fit(Xu[:, np.setdiff1d(np.arange(X.shape[1]), columns)], y)
        unique[name] = r2_full - r2_without
    mean = float(y.mean())
    out = RoiBenefit(n, _tsnr(mean, y), _tsnr(mean, clean_base), _tsnr(mean, clean), unique)
    if truth is not None:
        t = truth[use]
        out.r_truth = {"raw": _r(t, y), "clean_without_confounds": _r(t, clean_base), "clean": _r(t, clean)}
        if feedback is not None:
            out.r_truth["feedback"] = _r(truth, feedback)
    return out
