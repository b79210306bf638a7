"""The report's numbers, computed from a recorded run's table alone.

So a report can be written for a run that crashed, was aborted, ran with
motion correction off, or lost volumes. :func:`summarise` gathers them; each
part has its own function. What each number means is written on the page
next to it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rtnf.analysis.motion import MOTION_COLUMNS
from rtnf.wire.messages import SATURATION_EPS, SATURATION_WARN_FRACTION, reason_kind
from rtnf.wire.topics import DIRECTIONS

from .cleaning import cleaning
from .read import NA, RecordedRun

FLAG_COLUMNS = ("missing", "late", "out_of_order", "censored")
"""The table's 0/1 flag columns, in the order the report lists them."""
STAGES = (
    ("detect → read", "t_detected", "t_read"),
    ("read → preprocessed", "t_read", "t_preprocessed"),
    ("preprocessed → modelled", "t_preprocessed", "t_modelled"),
    ("modelled → published", "t_modelled", "t_published"),
)
"""Processing stages: (label, start column, end column); the columns are UNIX times in seconds."""
TOTAL_STAGE = ("detect → published (total)", "t_detected", "t_published")
"""The whole processing latency, as a stage."""
FEEDBACK_SHOWN_WARN_FRACTION = 0.5
"""Below this fraction of regulation volumes with a feedback value (continuous feedback), the report warns at the top."""
NO_FEEDBACK_REASON = "no feedback in this run"
"""The reason rtnf gives for every volume when ``[feedback] enabled`` is false."""
SIGNAL_UNITS = {"psc": "percent signal change (%)", "beta": "regulation beta (a.u.)", "t": "regulation t (a.u.)"}
"""Units of ``feedback_signal`` by ``[feedback] signal``."""


def summarise(run: RecordedRun) -> dict[str, Any]:
    """Every number of the report's summary, computed from the table.

    Returns a dict with:

    - ``counts``: rows recorded, volumes planned, and the number of rows
      flagged missing / late / out_of_order / censored, plus rows whose
      feedback value is n/a (by reason);
    - ``lag_volumes``: the hemodynamic lag in whole volumes (:func:`lag_volumes`);
    - ``psc_by_condition``: per condition and ROI, the mean percent signal
      change over the volumes of that condition that are neither missing
      nor censored and have a value (``labelled``: the volume's own
      condition; ``shifted``: the condition ``lag`` volumes earlier, to
      follow the hemodynamic delay), with the number of volumes used;
    - ``blocks``: regulation success, one entry per block of a
      non-baseline condition, with the volumes shifted by the lag: the mean
      feedback value (0-1) shown in it, and the difference between the
      block's mean of ``feedback_signal`` (and of each ROI's PSC) and the
      mean of the preceding baseline block; ``direction`` is the way the
      block's condition asked for ("increase" or "decrease", :func:`block_direction`)
      and ``success`` whether the feedback-signal difference is > 0 in an
      increase block, < 0 in a decrease block (``feedback_signal`` is the
      ROI's own signal, before the flip the feedback applies in a decrease
      block). Missing and censored volumes are left out of every mean;
    - ``tsnr``: per ROI, mean / standard deviation (ddof=1) of the cleaned
      signal over the volumes that are not missing (task variance
      included);
    - ``cleaning``: what the nuisance regressors buy per ROI (raw vs cleaned tSNR, the variance each set
      explains, the correlation with the simulator's truth when it is beside the run), or None without
      events (:func:`rtnf.apps.report.cleaning.cleaning`);
    - ``latency_ms``: per stage (and total detect -> published), n, median,
      95th percentile, max and mean in milliseconds over non-missing volumes;
    - ``motion``: whether motion parameters were recorded, the FD threshold,
      mean and max FD, the number of volumes above the threshold, and the
      largest absolute translation (mm) and rotation (degrees);
    - ``saturation``: the regulation volumes (condition known and not the
      baseline, feedback value not n/a), how many of them showed the
      feedback at the top (>= 1 - ``SATURATION_EPS``) or the bottom
      (<= ``SATURATION_EPS``) of the bar, their sum ``at_end``, the
      ``fraction`` at_end / regulation (NaN without a regulation volume) and
      ``warn``: whether it exceeds :data:`SATURATION_WARN_FRACTION`;
    - ``feedback_shown``: whether the participant saw feedback during
      regulation: ``enabled`` (false for a run without feedback by design),
      ``regulation`` (volumes whose condition is known and not the baseline),
      ``shown`` (of them with a feedback value), ``reasons`` (kind of null
      reason -> count over the regulation volumes without a value),
      ``silent_blocks`` (regulation blocks, numbered from 1 in run order, in
      which no value was shown: ``number``, ``volumes`` as 1-based
      ``(first, last)``, ``reasons``) and ``warn``: a silent block, or
      (continuous feedback) fewer than :data:`FEEDBACK_SHOWN_WARN_FRACTION`
      of the regulation volumes with a value. For intermittent feedback a
      block's score comes after the block, by the hemodynamic lag; a block
      whose score would come after the run is not judged;
    - ``status``: how the run ended (provenance), and ``aborted_at_s`` when
      it stopped before its planned last volume (seconds from the first kept volume).
    """
    lag = lag_volumes(run)
    return {
        "counts": counts(run),
        "lag_volumes": lag,
        "psc_by_condition": psc_by_condition(run, lag),
        "blocks": regulation_blocks(run, lag),
        "tsnr": tsnr(run),
        "cleaning": cleaning(run),
        "latency_ms": latency_ms(run),
        "motion": motion_summary(run),
        "saturation": saturation(run),
        "feedback_shown": feedback_shown(run, lag),
        "status": run_status(run),
        "aborted_at_s": aborted_at_s(run),
    }


# ---------------------------------------------------------------- helpers


def stats(values: np.ndarray) -> dict[str, float]:
    """n, median, 95th percentile, max and mean of the finite values (NaN, n = 0 without one)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"n": 0, "median": math.nan, "p95": math.nan, "max": math.nan, "mean": math.nan}
    return {
        "n": int(v.size),
        "median": float(np.median(v)),
        "p95": float(np.percentile(v, 95)),
        "max": float(v.max()),
        "mean": float(v.mean()),
    }


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN without one."""
    v = values[np.isfinite(values)]
    return float(v.mean()) if v.size else math.nan


def lag_volumes(run: RecordedRun) -> int:
    """The hemodynamic lag of the config (``[feedback] hemodynamic_lag_s``) in whole volumes."""
    lag_s = float(run.setting("feedback", "hemodynamic_lag_s", 6.0))
    return int(round(lag_s / run.tr_s))


def shifted_labels(values: list[Any], lag: int) -> list[Any]:
    """Labels moved ``lag`` volumes later: volume i takes the label of volume i - lag (None before)."""
    return [values[i - lag] if i >= lag else None for i in range(len(values))]


def block_numbers(run: RecordedRun) -> list[int | None]:
    """The ``block`` column as integers (None for n/a, and for a cell that is no integer: a damaged table)."""
    return [_block_number(b) for b in run.text("block")]


def _block_number(cell: str) -> int | None:
    try:
        return int(cell)
    except ValueError:  # n/a, inf, 1e308, nan, text
        return None


def usable(run: RecordedRun) -> np.ndarray:
    """Volumes that are neither missing nor censored."""
    return ~run.flag("missing") & ~run.flag("censored")


def reason_counts(reasons: list[str], values: np.ndarray, indices: Any) -> dict[str, int]:
    """Kind of null reason -> count over the volumes ``indices`` without a value.

    "censored: FD 0.8 mm" and "censored: DVARS" are both "censored" (:func:`rtnf.wire.messages.reason_kind`).
    """
    out: dict[str, int] = {}
    for i in indices:
        if not np.isfinite(values[i]):
            kind = reason_kind(None if reasons[i] == NA else reasons[i])
            out[kind] = out.get(kind, 0) + 1
    return out


def format_reasons(reasons: dict[str, int]) -> str:
    """``{"censored": 64, "waiting for baseline": 4}`` as "censored: 64, waiting for baseline: 4" (most first)."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- the parts


def counts(run: RecordedRun) -> dict[str, Any]:
    """Rows recorded, volumes planned, rows per flag, and rows without a feedback value (with their reasons)."""
    fb_value = run.num("feedback_value")
    return {
        "rows": len(run.rows),
        "expected": run.n_expected,
        **{c: int(run.flag(c).sum()) for c in FLAG_COLUMNS},
        "feedback_na": int((~np.isfinite(fb_value)).sum()),
        "feedback_na_reasons": reason_counts(run.text("feedback_reason"), fb_value, range(len(fb_value))),
    }


def psc_by_condition(run: RecordedRun, lag: int) -> dict[str, dict[str, Any]]:
    """Per condition (in order of appearance), ``labelled`` and ``shifted``: per ROI the mean PSC (%) and n."""
    conditions = run.text("condition")
    labellings = (("labelled", conditions), ("shifted", shifted_labels(conditions, lag)))
    ok = usable(run)
    psc = {roi: run.num(f"{roi}_psc") for roi in run.roi_names}
    out: dict[str, dict[str, Any]] = {}
    for cond in dict.fromkeys(c for c in conditions if c != NA):
        entry: dict[str, Any] = {}
        for label, labels in labellings:
            mask = np.array([c == cond for c in labels]) & ok
            entry[label] = {
                roi: {"mean": nanmean(values[mask]), "n": int(np.isfinite(values[mask]).sum())}
                for roi, values in psc.items()
            }
        out[cond] = entry
    return out


def regulation_blocks(run: RecordedRun, lag: int) -> list[dict[str, Any]]:
    """Regulation success of each block of a non-baseline condition (see :func:`summarise`).

    ``block`` and ``baseline_block`` are the table's 0-based block numbers,
    ``volumes`` the 0-based (first, last) row of the block as recorded.
    """
    conditions = run.text("condition")
    blocks_col = block_numbers(run)
    shifted_block = shifted_labels(blocks_col, lag)
    ok = usable(run)
    fb_value, fb_signal = run.num("feedback_value"), run.num("feedback_signal")
    psc = {roi: run.num(f"{roi}_psc") for roi in run.roi_names}
    block_ids = list(dict.fromkeys(b for b in blocks_col if b is not None))
    block_cond: dict[int, str] = {}
    for b, c in zip(blocks_col, conditions):
        if b is not None:
            block_cond.setdefault(b, c)
    baseline = run.baseline
    blocks = []
    for b in block_ids:
        if block_cond[b] == baseline:
            continue
        previous = [p for p in block_ids if p < b and block_cond[p] == baseline]
        in_block = np.array([s == b for s in shifted_block]) & ok
        idx = [i for i, s in enumerate(blocks_col) if s == b]
        direction = block_direction(run, idx, block_cond[b])
        entry: dict[str, Any] = {
            "block": b,
            "condition": block_cond[b],
            "direction": direction,
            "volumes": (min(idx), max(idx)),
            "baseline_block": previous[-1] if previous else None,
            "n": int(in_block.sum()),
            "mean_feedback_value": nanmean(fb_value[in_block]),
            "delta_feedback_signal": math.nan,
            "delta_psc": {roi: math.nan for roi in run.roi_names},
        }
        if previous:
            ref = np.array([s == previous[-1] for s in shifted_block]) & ok
            entry["delta_feedback_signal"] = nanmean(fb_signal[in_block]) - nanmean(fb_signal[ref])
            entry["delta_psc"] = {roi: nanmean(v[in_block]) - nanmean(v[ref]) for roi, v in psc.items()}
        d = entry["delta_feedback_signal"]
        entry["success"] = None if not np.isfinite(d) else bool(d < 0 if direction == "decrease" else d > 0)
        blocks.append(entry)
    return blocks


def block_direction(run: RecordedRun, rows: list[int], condition: str) -> str:
    """The direction a block asked for: its rows' ``direction`` column, else the config copy's
    ``[protocol] directions``, else "increase" (tables from before directions existed)."""
    recorded = run.text("direction")
    for i in rows:
        if recorded[i] in DIRECTIONS:
            return recorded[i]
    directions = run.config.get("protocol", {}).get("directions", {})
    given = directions.get(condition) if isinstance(directions, dict) else None
    return given if given in DIRECTIONS else DIRECTIONS[0]


def regulation_volumes(run: RecordedRun) -> np.ndarray:
    """Volumes whose condition is known and not the baseline."""
    baseline = run.baseline
    return np.array([c not in (NA, baseline) for c in run.text("condition")], dtype=bool)


def saturation(run: RecordedRun) -> dict[str, Any]:
    """Regulation volumes with the feedback at the top or bottom of the bar (see :func:`summarise`)."""
    fb_value = run.num("feedback_value")
    shown = fb_value[regulation_volumes(run) & np.isfinite(fb_value)]
    top, bottom = int((shown >= 1.0 - SATURATION_EPS).sum()), int((shown <= SATURATION_EPS).sum())
    fraction = (top + bottom) / shown.size if shown.size else math.nan
    return {
        "regulation": int(shown.size), "top": top, "bottom": bottom, "at_end": top + bottom,
        "fraction": fraction, "warn": bool(fraction > SATURATION_WARN_FRACTION),
    }


def feedback_shown(run: RecordedRun, lag: int) -> dict[str, Any]:
    """How much feedback the participant saw during regulation (see :func:`summarise`)."""
    conditions = run.text("condition")
    blocks_col = block_numbers(run)
    fb_value = run.num("feedback_value")
    reasons = run.text("feedback_reason")
    baseline = run.baseline
    regulation = regulation_volumes(run)
    enabled = bool(run.setting("feedback", "enabled", True))
    if regulation.any() and all(reasons[i] == NO_FEEDBACK_REASON for i in np.flatnonzero(regulation)):
        enabled = False  # a table without its config copy: rtnf's reason says it
    shown = regulation & np.isfinite(fb_value)
    intermittent = run.setting("feedback", "kind", "continuous") == "intermittent"
    silent = []
    number = 0
    n = len(conditions)
    for b in dict.fromkeys(x for x in blocks_col if x is not None):
        idx = [i for i, x in enumerate(blocks_col) if x == b]
        if conditions[idx[0]] in (NA, baseline):
            continue
        number += 1
        first, last = min(idx), max(idx)
        if intermittent:
            if last + lag >= (run.n_expected or n) or last + lag >= n:
                continue  # its score comes after the run (or after the recorded rows)
            window = range(first, last + lag + 1)
        else:
            window = range(first, last + 1)
        if not any(np.isfinite(fb_value[i]) for i in window):
            silent.append({"number": number, "volumes": (first + 1, last + 1),
                           "reasons": reason_counts(reasons, fb_value, window)})
    n_reg, n_shown = int(regulation.sum()), int(shown.sum())
    few = not intermittent and n_reg > 0 and n_shown < FEEDBACK_SHOWN_WARN_FRACTION * n_reg
    return {
        "enabled": enabled, "regulation": n_reg, "shown": n_shown,
        "reasons": reason_counts(reasons, fb_value, np.flatnonzero(regulation)),
        "silent_blocks": silent if enabled else [], "warn": bool(enabled and (silent or few)),
    }


def tsnr(run: RecordedRun) -> dict[str, dict[str, Any]]:
    """Per ROI, ``tsnr``: mean / SD (ddof=1) of the cleaned signal over non-missing volumes, and ``n``."""
    missing = run.flag("missing")
    out = {}
    for roi in run.roi_names:
        v = run.num(f"{roi}_clean")[~missing]
        v = v[np.isfinite(v)]
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        out[roi] = {"tsnr": float(v.mean() / sd) if v.size > 1 and sd > 0 else math.nan, "n": int(v.size)}
    return out


def stage_durations_ms(run: RecordedRun) -> list[tuple[str, np.ndarray]]:
    """Each stage's (and the total's) duration in ms over the non-missing volumes (NaN where a time is absent)."""
    missing = run.flag("missing")
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in a damaged table is NaN, said as n/a, not warned
        return [(label, ((run.num(stop) - run.num(start)) * 1000.0)[~missing])
                for label, start, stop in (*STAGES, TOTAL_STAGE)]


def latency_ms(run: RecordedRun) -> dict[str, dict[str, float]]:
    """Per stage label, :func:`stats` of its duration in milliseconds."""
    return {label: stats(durations) for label, durations in stage_durations_ms(run)}


def motion_summary(run: RecordedRun) -> dict[str, Any]:
    """Whether motion was recorded; FD threshold, mean, max (mm) and count above; largest |translation| (mm) and |rotation| (degrees)."""
    fd = run.num("framewise_displacement")
    motion = {name: run.num(name) for name in MOTION_COLUMNS}
    threshold = float(run.setting("quality", "fd_threshold_mm", 0.5))
    trans = np.concatenate([np.abs(motion[c]) for c in MOTION_COLUMNS[:3]])
    rot = np.degrees(np.concatenate([np.abs(motion[c]) for c in MOTION_COLUMNS[3:]]))  # recorded in radians
    return {
        # A value that is there, even inf (a damaged table), is recorded: the figure says it cannot draw it.
        "recorded": any((~np.isnan(v)).any() for v in motion.values()),
        "fd_threshold_mm": threshold,
        "fd_mean_mm": nanmean(fd),
        "fd_max_mm": float(np.nanmax(fd)) if np.isfinite(fd).any() else math.nan,
        "fd_over_threshold": int((fd > threshold).sum()),
        "max_abs_trans_mm": float(np.nanmax(trans)) if np.isfinite(trans).any() else math.nan,
        "max_abs_rot_deg": float(np.nanmax(rot)) if np.isfinite(rot).any() else math.nan,
    }


def run_status(run: RecordedRun) -> Any:
    """How the run ended: the provenance's ``status`` as written ("ended", "aborted", ...), or why it is unknown."""
    status = run.provenance.get("status")
    if status is None:
        return "unknown (no finish recorded: the run crashed or is still going)" if run.provenance else "unknown"
    return status


def aborted_at_s(run: RecordedRun) -> float | None:
    """Where a run that stopped before its planned last volume stopped (s from the first kept volume); else None."""
    if run.n_expected is None or len(run.rows) >= run.n_expected:
        return None
    onsets = run.num("onset_s")
    return float(np.nanmax(onsets)) + run.tr_s if np.isfinite(onsets).any() else 0.0
