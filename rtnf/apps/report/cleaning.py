"""The report's "signal cleaning" numbers: what each set of nuisance regressors buys in each ROI.

Built from the recorded table alone (ROI raw means, motion parameters, ``confound_*`` columns, flags) and the
run's protocol (its events file) and model settings (its config copy); the figures are those of
:mod:`rtnf.analysis.benefit`. When the simulator's truth folder (``truth/truth.tsv``, as ``rtnf demo`` and
``scanner-sim --truth-dir`` write it) is found beside the run, the ROIs with a true activation get its
correlations too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtnf.analysis.benefit import SETS, roi_benefit
from rtnf.analysis.design import Design, make_design
from rtnf.analysis.motion import MOTION_COLUMNS, motion_regressors
from rtnf.analysis.protocol import Block, Protocol, ProtocolError

from .read import RecordedRun

#: Folders above the run's table searched for ``truth/truth.tsv`` (the demo's layout is 4 levels up).
TRUTH_SEARCH_LEVELS = 6


def confound_names(run: RecordedRun) -> tuple[str, ...]:
    """The run's recorded confound regressors (``confound_<name>`` columns), in table order."""
    return tuple(c[len("confound_"):] for c in run.columns if c.startswith("confound_"))


def kept_index(run: RecordedRun, n: int) -> np.ndarray:
    """Each row's kept-volume index (``index`` column), -1 where absent or outside ``0..n-1``."""
    index = run.num("index")
    index = np.where(np.isfinite(index), index, -1).astype(int)
    return np.where((index >= 0) & (index < n), index, -1)


def by_index(run: RecordedRun, values: np.ndarray, n: int) -> np.ndarray:
    """A per-row array laid out per kept volume (NaN where no row)."""
    out = np.full((n,) + values.shape[1:], np.nan)
    index = kept_index(run, n)
    out[index[index >= 0]] = values[index >= 0]
    return out


def run_protocol(run: RecordedRun, n: int) -> Protocol | None:
    """The protocol from the run's events (the baseline's own events left out), or None when it cannot be built."""
    baseline = run.baseline
    if not run.events or baseline is None:
        return None
    blocks = tuple(Block(kind, on, dur, "events") for on, dur, kind in sorted(run.events) if kind != baseline)
    conditions = tuple(dict.fromkeys([baseline] + [b.condition for b in blocks]))
    try:
        return Protocol(blocks=blocks, baseline=baseline, conditions=conditions, tr_s=run.tr_s, n_volumes=n)
    except (ProtocolError, ValueError):
        return None


def run_design(run: RecordedRun, protocol: Protocol, n: int) -> Design:
    """The run's design with its motion and confound rows as recorded (a missing confound value enters as 0, as online)."""
    n_motion = int(run.setting("model", "motion_regressors", 0) or 0)
    names = confound_names(run)
    design = make_design(protocol, run.setting("model", "hrf", "spm"), float(run.setting("model", "drift_cutoff_s", 128.0)),
                         n_motion, confounds=names)
    parts = []
    if n_motion:
        params = np.nan_to_num(by_index(run, np.column_stack([run.num(c) for c in MOTION_COLUMNS]), n))
        rows, previous = [], None
        for p in params:
            rows.append(motion_regressors(p, previous, n_motion))
            previous = p
        parts.append(np.array(rows))
    if names:
        parts.append(np.nan_to_num(by_index(run, np.column_stack([run.num(f"confound_{c}") for c in names]), n)))
    return design.with_motion(np.hstack(parts)) if parts else design


def find_truth(run: RecordedRun) -> Path | None:
    """``truth/truth.tsv`` of the simulator in a folder above the run's table, if there is one."""
    for folder in list(Path(run.timeseries).resolve().parents)[:TRUTH_SEARCH_LEVELS]:
        path = folder / "truth" / "truth.tsv"
        if path.is_file():
            return path
    return None


def truth_activation(path: Path, roi: str, dummies: int, n: int) -> np.ndarray | None:
    """The true activation of ``roi`` per kept volume (truth rows count the dummies), or None when not simulated."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        values = np.array([float(r[f"activation_{roi}"]) for r in rows])[dummies: dummies + n]
    except (OSError, KeyError, ValueError, TypeError):  # not simulated for this ROI, or not a truth table
        return None
    return np.concatenate([values, np.full(n - values.size, np.nan)])


def cleaning(run: RecordedRun) -> dict[str, Any] | None:
    """The report's cleaning section, or None when the protocol cannot be rebuilt from the events.

    Returns
    -------
    dict
        ``sets``: the nuisance sets present, in report order; ``rois``: per ROI the
        :class:`rtnf.analysis.benefit.RoiBenefit` as a dict; ``truth``: the truth file used (or None).
    """
    n = run.n_expected or len(run.rows)
    protocol = run_protocol(run, n)
    if protocol is None or not run.rows:
        return None
    design = run_design(run, protocol, n)
    use = ~by_index(run, (run.flag("missing") | run.flag("censored")).astype(float), n).astype(bool, copy=False)
    use &= np.isfinite(by_index(run, run.num("index"), n))
    truth_path = find_truth(run)
    dummies = int(run.config.get("scanner", {}).get("dummy_volumes", 0) or 0)
    feedback = by_index(run, run.num("feedback_value"), n)
    rois = {}
    for roi in run.roi_names:
        truth = None if truth_path is None else truth_activation(truth_path, roi, dummies, n)
        rois[roi] = roi_benefit(design, by_index(run, run.num(f"{roi}_raw"), n), use, truth,
                                feedback if roi in _targets(run) else None).as_dict()
    present = [s for s in SETS if any(s in v["unique_r2"] for v in rois.values())]
    return {"sets": present, "rois": rois, "truth": None if truth_path is None else str(truth_path)}


def _targets(run: RecordedRun) -> list[str]:
    """The feedback ROIs (``feedback.roi``: one name or a list)."""
    target = run.config.get("feedback", {}).get("roi")
    return [target] if isinstance(target, str) else list(target or run.roi_names[:1])
