"""Feedback fidelity of a recorded run: does the value follow the region, not the model?

From a run's table (``_desc-rtnf_timeseries.tsv``) and its config this module
measures, for one ROI:

- the correlation with the task (the HRF-convolved task regressors of the
  design, summed) of the raw ROI mean, the cleaned signal, its percent
  signal change and the value shown on the screen;
- the agreement of the online cleaned signal with an offline analysis of the
  whole run (batch least squares, same regressors, every kept volume: the
  recorded ``confound_*`` columns included);
- the largest step a model update makes in the cleaned value of the previous
  volume (the model is run again on the recorded raw signals and motion), in
  units of the raw signal's standard deviation;
- the fraction of regulation volumes whose shown value sits at either end of
  the bar (saturation).

It is what the fidelity tests assert on and what ``rtnf fidelity`` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rtnf.config import Config
from rtnf.analysis.design import Design, make_design
from rtnf.analysis.motion import MOTION_COLUMNS, motion_regressors
from rtnf.analysis.protocol import Protocol
from rtnf.analysis.roi_model import RoiModel

from rtnf.wire.messages import SATURATION_EPS, SATURATION_WARN_FRACTION  # noqa: F401 (the bar's ends, defined on the wire)


@dataclass(frozen=True)
class Fidelity:
    """Fidelity figures of one ROI in one run (NaN where not computable).

    Attributes
    ----------
    n_volumes : int
        Volumes evaluated (kept, present, uncensored, from ``first_index``).
    r_raw, r_clean, r_psc, r_displayed : float
        Pearson correlation with the task regressor of the raw ROI mean, the
        cleaned signal, its percent signal change and the shown value.
    r_online_offline : float
        Correlation of the online cleaned signal with the offline one (whole
        run, batch least squares, same regressors).
    max_step_sd : float
        Largest change a model update makes to the cleaned value of the
        previous volume, in standard deviations of the raw signal.
    max_entry_step_sd : float
        The same at the volumes where an ordinary least-squares model changes
        (a drift term resolved by the elapsed time, the motion terms estimable).
    saturated_fraction : float
        Fraction of regulation volumes with a shown value at either end of the bar.
    """

    n_volumes: int
    r_raw: float
    r_clean: float
    r_psc: float
    r_displayed: float
    r_online_offline: float
    max_step_sd: float
    max_entry_step_sd: float
    saturated_fraction: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def _column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([np.nan if r.get(name) in (None, "", "n/a") else float(r[name]) for r in rows])


def _flag(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([r.get(name) == "1" for r in rows])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def task_regressor(design: Design) -> np.ndarray:
    """The task regressors of the design summed (derivatives left out): what 'following the task' means."""
    names = design.names[: design.n_core - 1]
    main = [k for k, n in enumerate(names) if not n.endswith("_derivative")]
    return design.matrix[:, main].sum(axis=1)


def _motion_rows(rows: list[dict[str, str]], n_motion: int) -> np.ndarray | None:
    if not n_motion:
        return None
    params = np.column_stack([_column(rows, c) for c in MOTION_COLUMNS])
    out, previous = [], None
    for p in params:
        p = np.nan_to_num(p)
        out.append(motion_regressors(p, previous, n_motion))
        previous = p
    return np.array(out)


def offline_clean(raw: np.ndarray, design: Design, fitted: np.ndarray) -> np.ndarray:
    """Raw minus the nuisance fit of a batch least-squares model of the whole run.

    Parameters
    ----------
    raw : ndarray, shape (n,)
        The ROI's raw signal per kept volume (NaN where missing).
    design : Design
        The full design with its motion rows filled.
    fitted : ndarray of bool, shape (n,)
        Volumes that enter the fit (present and uncensored).
    """
    X = design.matrix
    beta, *_ = np.linalg.lstsq(X[fitted], raw[fitted], rcond=None)
    nuisance = design.nuisance_columns
    return raw - X[:, nuisance] @ beta[nuisance]


def model_steps(cfg: Config, protocol: Protocol, raw: np.ndarray, motion: np.ndarray | None, fitted: np.ndarray,
                confounds: tuple[str, ...] = ()) -> np.ndarray:
    """Change of the previous volume's cleaned value at each model update (signal units).

    ``motion`` holds each volume's online rows: the motion regressors, then the values of the
    ``confounds`` columns (as recorded). The ROI model is run again on the recorded signals, as the run did;
    after the update of volume t the cleaned value of volume t-1 is compared
    with the value the model gave it after volume t-1. Element t is that
    change (NaN where volume t-1 is missing or t did not update the model).
    """
    design = make_design(protocol, cfg.model.hrf, cfg.model.drift_cutoff_s, cfg.model.motion_regressors,
                         confounds=confounds)
    model = RoiModel(design, protocol, 1, cfg.model.drift_cutoff_s, cfg.feedback.min_baseline_volumes)
    steps = np.full(raw.size, np.nan)
    before = np.nan
    for t in range(raw.size):
        if not np.isfinite(raw[t]):
            before = np.nan
            continue
        m = None if motion is None else motion[t]
        model.update(t, raw[t : t + 1], m, include=bool(fitted[t]))
        if t > 0 and fitted[t] and np.isfinite(before):
            steps[t] = abs(float(model.clean_at(np.array([t - 1]))[0, 0]) - before)
        before = float(model.clean_at(np.array([t]))[0, 0])
    return steps


def entry_volumes(protocol: Protocol, design: Design, cutoff_s: float) -> np.ndarray:
    """Kept-volume indices where a nested least-squares model gains a term.

    A cosine drift k enters when the elapsed time reaches k * cutoff / 2
    (SPM's rule); the motion terms as soon as there are more volumes than
    task, constant and motion columns (and the three volumes after, while
    they are still barely determined).
    """
    elapsed = (np.arange(protocol.n_volumes) + 1) * protocol.tr_s
    k = np.floor(2 * elapsed / cutoff_s)
    drifts = np.flatnonzero(np.diff(k) > 0) + 1
    motion = np.arange(4) + design.n_core + design.motion_columns.size if design.motion_columns.size else []
    entries = np.union1d(drifts, motion).astype(int)
    return entries[entries < protocol.n_volumes]


def assess(cfg: Config, rows: list[dict[str, str]], roi: str | None = None, first_index: int = 0) -> Fidelity:
    """Fidelity figures of ``roi`` (default: the first feedback ROI) in a recorded run.

    Parameters
    ----------
    cfg : Config
        The run's config (protocol, model, feedback).
    rows : list of dict
        The run's table, one dict per kept volume (as read from the TSV).
    roi : str, optional
        ROI name.
    first_index : int
        Evaluate volumes from this kept-volume index on (for example the
        second half of a run whose first half defined the ROI).
    """
    roi = roi or cfg.feedback.targets[0]
    protocol = cfg.make_protocol()
    n = protocol.n_volumes
    by_index = {int(r["index"]): r for r in rows}
    table = [by_index.get(i, {"missing": "1"}) for i in range(n)]
    raw = _column(table, f"{roi}_raw")
    clean = _column(table, f"{roi}_clean")
    psc = _column(table, f"{roi}_psc")
    shown = _column(table, "feedback_value")
    censored = _flag(table, "censored")
    fitted = np.isfinite(raw) & ~censored
    motion = _motion_rows(table, cfg.model.motion_regressors)
    # The recorded confound columns enter the offline model as they entered the online one (a missing value as 0).
    confounds = tuple(k[len("confound_"):] for k in (rows[0] if rows else {}) if k.startswith("confound_"))
    if confounds:
        values = np.nan_to_num(np.column_stack([_column(table, f"confound_{c}") for c in confounds]))
        motion = values if motion is None else np.hstack([motion, values])

    design = make_design(protocol, cfg.model.hrf, cfg.model.drift_cutoff_s, cfg.model.motion_regressors,
                         confounds=confounds)
    if motion is not None:
        design = design.with_motion(motion)
    task = task_regressor(design)
    offline = offline_clean(raw, design, fitted)
    steps = model_steps(cfg, protocol, raw, motion, fitted, confounds)

    use = fitted & (np.arange(n) >= first_index)
    sd = float(np.nanstd(raw[use])) if use.any() else float("nan")
    entry_steps = steps[entry_volumes(protocol, design, cfg.model.drift_cutoff_s)]
    regulation = use & (np.array(protocol.labels()) != protocol.baseline) & np.isfinite(shown)
    at_end = (shown <= SATURATION_EPS) | (shown >= 1 - SATURATION_EPS)
    return Fidelity(
        n_volumes=int(use.sum()),
        r_raw=_corr(raw[use], task[use]),
        r_clean=_corr(clean[use], task[use]),
        r_psc=_corr(psc[use], task[use]),
        r_displayed=_corr(shown[use], task[use]),
        r_online_offline=_corr(clean[fitted], offline[fitted]),
        max_step_sd=float(np.nanmax(steps) / sd) if np.isfinite(steps).any() and sd > 0 else float("nan"),
        max_entry_step_sd=float(np.nanmax(entry_steps) / sd) if np.isfinite(entry_steps).any() and sd > 0 else float("nan"),
        saturated_fraction=float(at_end[regulation].mean()) if regulation.any() else float("nan"),
    )
