"""``rtnf report``: an HTML page with PNG figures for a recorded run.

Reads what :mod:`rtnf.run.record` wrote for one run (the per-volume table
``*_desc-rtnf_timeseries.tsv`` and, when present, its siblings
``*_events.tsv``, ``*_desc-rtnf_config.toml``, ``*_desc-rtnf_provenance.json``
and ``*_desc-rtnf_log.tsv``) and writes, into one folder:

- ``<prefix>_desc-rtnf_report.html``: a self-contained page (plain HTML and
  CSS, no script, nothing fetched from the internet);
- ``<prefix>_desc-<figure>_report.png``: the figures it shows, drawn with
  matplotlib's Agg canvas (no pyplot, no global backend switch).

Every number of the summary is computed from the table alone, so a report
can be written for a run that crashed, was aborted, ran with motion
correction off, or lost volumes. What each number means is written on the
page next to it (see :func:`summarise`).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtnf.wire.messages import SATURATION_EPS, SATURATION_WARN_FRACTION
from rtnf.wire.messages import reason_kind
from rtnf.analysis.motion import MOTION_COLUMNS

TIMESERIES_SUFFIX = "_desc-rtnf_timeseries.tsv"
NA = "n/a"
FLAG_COLUMNS = ("missing", "late", "out_of_order", "censored")
#: Processing stages: (label, start column, end column).
STAGES = (
    ("detect → read", "t_detected", "t_read"),
    ("read → preprocessed", "t_read", "t_preprocessed"),
    ("preprocessed → modelled", "t_preprocessed", "t_modelled"),
    ("modelled → published", "t_modelled", "t_published"),
)
TOTAL_STAGE = ("detect → published (total)", "t_detected", "t_published")
FIGURES = ("timecourses", "motion", "latency")
_FLAG_STYLE = {  # colour and marker on the time axis
    "missing": ("#d62728", "x"),
    "late": ("#ff7f0e", "v"),
    "out_of_order": ("#9467bd", "d"),
    "censored": ("#8c564b", "o"),
}
_COND_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#e377c2", "#17becf", "#bcbd22", "#8c564b")
#: Below this fraction of regulation volumes with a feedback value (continuous feedback), the report warns at the top.
FEEDBACK_SHOWN_WARN_FRACTION = 0.5
NO_FEEDBACK_REASON = "no feedback in this run"  # the reason rtnf gives when feedback.enabled is false
#: The smallest y range of the motion figure: translations (mm), rotations (degrees), FD (mm).
MOTION_MIN_RANGE = {"trans": (-1.0, 1.0), "rots": (-1.0, 1.0), "fd": (0.0, 1.0)}
_SIGNAL_UNITS = {"psc": "percent signal change (%)", "beta": "regulation beta (a.u.)", "t": "regulation t (a.u.)"}


class ReportError(ValueError):
    """The input is not a recorded run's table; the message says what was expected."""


# ---------------------------------------------------------------- reading a run


@dataclass
class RecordedRun:
    """A recorded run as read from its files.

    Attributes
    ----------
    timeseries : Path
        The per-volume table.
    prefix : str
        ``sub-<s>_ses-<s>_task-<t>_run-<n>``, from the table's name.
    columns : list of str
        Header of the table.
    rows : list of dict
        Rows as text (``"n/a"`` for missing cells); an incomplete last line is dropped.
    roi_names : list of str
        ROIs in column order.
    events : list of (onset_s, duration_s, trial_type), or None
        The protocol, from ``*_events.tsv``.
    config : dict
        The session config copy as parsed TOML (empty if absent or unreadable).
    provenance : dict
        Run id, start/finish times, status, versions (empty if absent).
    log : list of dict
        The event log's rows (``time``, ``level``, ``message``).
    notes : list of str
        Problems met while reading (absent siblings, a truncated line, ...).
    """

    timeseries: Path
    prefix: str
    columns: list[str]
    rows: list[dict[str, str]]
    roi_names: list[str]
    events: list[tuple[float, float, str]] | None
    config: dict[str, Any]
    provenance: dict[str, Any]
    log: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)

    # -- columns as arrays

    def num(self, column: str) -> np.ndarray:
        """A column as floats, NaN for ``n/a``, empty or absent cells."""
        return np.array([_to_float(r.get(column)) for r in self.rows], dtype=float)

    def flag(self, column: str) -> np.ndarray:
        """A 0/1 column as booleans (absent or ``n/a``: False)."""
        return np.array([r.get(column) == "1" for r in self.rows], dtype=bool)

    def text(self, column: str) -> list[str]:
        """A column as text."""
        return [r.get(column) or NA for r in self.rows]

    # -- config values, with rtnf's defaults when the copy lacks them

    def setting(self, section: str, key: str, default: Any = None) -> Any:
        """``[section] key`` of the config copy, else rtnf's default for it, else ``default``."""
        value = self.config.get(section, {}).get(key) if isinstance(self.config.get(section), dict) else None
        return value if value is not None else _config_default(section, key, default)

    @property
    def tr_s(self) -> float:
        """Repetition time: from the config, else the onsets' step."""
        tr = self.config.get("scanner", {}).get("tr_s")
        if tr:
            return float(tr)
        onsets = self.num("onset_s")
        steps = np.diff(onsets[np.isfinite(onsets)])
        return float(np.median(steps)) if steps.size else 1.0

    @property
    def baseline(self) -> str | None:
        """The baseline condition: from the config, else the first volume's condition."""
        base = self.config.get("protocol", {}).get("baseline")
        if base:
            return str(base)
        conds = self.text("condition")
        return conds[0] if conds else None

    @property
    def n_expected(self) -> int | None:
        """Kept volumes the protocol planned (config n_volumes minus dummies), if known."""
        sc = self.config.get("scanner", {})
        if "n_volumes" in sc:
            return int(sc["n_volumes"]) - int(sc.get("dummy_volumes", 0))
        if self.events:
            end = max(on + dur for on, dur, _ in self.events)
            return int(round(end / self.tr_s))
        return None


def _to_float(text: str | None) -> float:
    if text is None or text in (NA, "", "None"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _config_default(section: str, key: str, default: Any) -> Any:
    """rtnf's default of ``[section] key`` (from the config models), else ``default``."""
    from rtnf import config as cfgmod

    models = {
        "quality": cfgmod.QualityConfig,
        "feedback": cfgmod.FeedbackConfig,
        "motion": cfgmod.MotionConfig,
        "model": cfgmod.ModelConfig,
    }
    model = models.get(section)
    if model is not None and key in model.model_fields:
        value = model.model_fields[key].default
        if value is not None and not callable(value):
            return value
    return default


def find_timeseries(path: Path) -> list[Path]:
    """Per-volume tables at ``path``: the file itself, or every one below a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(TIMESERIES_SUFFIX):
            raise ReportError(f"{path} is not a per-volume table: expected a file named '*{TIMESERIES_SUFFIX}'.")
        return [path]
    if path.is_dir():
        found = sorted(path.rglob(f"*{TIMESERIES_SUFFIX}"))
        if not found:
            raise ReportError(f"no '*{TIMESERIES_SUFFIX}' found under {path}: give a run's output folder or its table.")
        return found
    raise ReportError(f"{path} does not exist: give a run's output folder or its '*{TIMESERIES_SUFFIX}' table.")


def read_run(timeseries_tsv: Path) -> RecordedRun:
    """Read a recorded run: the table and whatever siblings exist."""
    tsv = Path(timeseries_tsv)
    if not tsv.name.endswith(TIMESERIES_SUFFIX):
        raise ReportError(f"{tsv} is not a per-volume table: expected a file named '*{TIMESERIES_SUFFIX}'.")
    prefix = tsv.name[: -len(TIMESERIES_SUFFIX)]
    notes: list[str] = []
    with open(tsv, newline="", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if not lines or not lines[0].strip():
        raise ReportError(f"{tsv} is empty: no header line.")
    columns = lines[0].split("\t")
    for needed in ("index", "onset_s", "condition", "missing"):
        if needed not in columns:
            raise ReportError(f"{tsv} has no '{needed}' column: is it an rtnf per-volume table?")
    rows = []
    body = [ln for ln in lines[1:]]
    while body and body[-1] == "":
        body.pop()
    for i, line in enumerate(body):
        cells = line.split("\t")
        if len(cells) != len(columns):
            if i == len(body) - 1:
                notes.append(f"the table's last line is incomplete ({len(cells)} of {len(columns)} cells: "
                             "the run stopped while writing it); it is left out.")
                continue
            raise ReportError(f"{tsv} line {i + 2} has {len(cells)} cells, the header {len(columns)}.")
        rows.append(dict(zip(columns, cells)))
    roi_names = [
        c[: -len("_raw")] for c in columns
        if c.endswith("_raw") and {c[:-4] + "_clean", c[:-4] + "_psc"} <= set(columns)
    ]

    def sibling(suffix: str) -> Path:
        return tsv.with_name(prefix + suffix)

    events = None
    ev_path = sibling("_events.tsv")
    if ev_path.is_file():
        with open(ev_path, newline="", encoding="utf-8") as f:
            events = [
                (float(r["onset"]), float(r["duration"]), r.get("trial_type") or NA)
                for r in csv.DictReader(f, delimiter="\t")
                if r.get("onset") not in (None, "", NA) and r.get("duration") not in (None, "", NA)
            ]
    else:
        notes.append(f"no events file ({ev_path.name}): blocks are taken from the table's condition column.")
    config: dict[str, Any] = {}
    cfg_path = sibling("_desc-rtnf_config.toml")
    if cfg_path.is_file():
        try:
            config = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            notes.append(f"the config copy {cfg_path.name} could not be read ({exc}); rtnf's defaults are used.")
    else:
        notes.append(f"no config copy ({cfg_path.name}): rtnf's defaults are used (for example the FD threshold).")
    provenance: dict[str, Any] = {}
    prov_path = sibling("_desc-rtnf_provenance.json")
    if prov_path.is_file():
        try:
            provenance = json.loads(prov_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            notes.append(f"the provenance file could not be read ({exc}).")
    else:
        notes.append(f"no provenance file ({prov_path.name}): run identity and versions unknown.")
    log: list[dict[str, str]] = []
    log_path = sibling("_desc-rtnf_log.tsv")
    if log_path.is_file():
        with open(log_path, newline="", encoding="utf-8") as f:
            log = [r for r in csv.DictReader(f, delimiter="\t") if r.get("level")]
    return RecordedRun(tsv, prefix, columns, rows, roi_names, events, config, provenance, log, notes)


# ---------------------------------------------------------------- summary numbers


def _stats(values: np.ndarray) -> dict[str, float]:
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


def _nanmean(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(v.mean()) if v.size else math.nan


def lag_volumes(run: RecordedRun) -> int:
    """The hemodynamic lag of the config (``[feedback] hemodynamic_lag_s``) in whole volumes."""
    lag_s = float(run.setting("feedback", "hemodynamic_lag_s", 6.0))
    return int(round(lag_s / run.tr_s))


def shifted_labels(values: list[Any], lag: int) -> list[Any]:
    """Labels moved ``lag`` volumes later: volume i takes the label of volume i - lag (None before)."""
    return [values[i - lag] if i >= lag else None for i in range(len(values))]


def summarise(run: RecordedRun) -> dict[str, Any]:
    """Every number of the report's summary, computed from the table.

    Returns a dict with:

    - ``counts``: rows recorded, volumes planned, and the number of rows
      flagged missing / late / out_of_order / censored, plus rows whose
      feedback value is n/a (by reason);
    - ``psc_by_condition``: per condition and ROI, the mean percent signal
      change over the volumes of that condition that are neither missing
      nor censored and have a value (``labelled``: the volume's own
      condition; ``shifted``: the condition ``lag`` volumes earlier, to
      follow the hemodynamic delay), with the number of volumes used;
    - ``blocks``: regulation success, one entry per block of a
      non-baseline condition, with the volumes shifted by the lag: the mean
      feedback value (0-1) shown in it, and the difference between the
      block's mean of ``feedback_signal`` (and of each ROI's PSC) and the
      mean of the preceding baseline block; ``success`` is whether the
      feedback-signal difference is > 0. Missing and censored volumes are
      left out of every mean;
    - ``tsnr``: per ROI, mean / standard deviation (ddof=1) of the cleaned
      signal over the volumes that are not missing (task variance
      included);
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
      it stopped before its planned last volume.
    """
    n = len(run.rows)
    flags = {c: run.flag(c) for c in FLAG_COLUMNS}
    missing, censored = flags["missing"], flags["censored"]
    usable = ~missing & ~censored
    fb_value, fb_signal = run.num("feedback_value"), run.num("feedback_signal")
    reasons: dict[str, int] = {}  # by kind: "censored: FD 0.8 mm" and "censored: DVARS" are both "censored"
    for text, value in zip(run.text("feedback_reason"), fb_value):
        if not np.isfinite(value):
            kind = reason_kind(None if text == NA else text)
            reasons[kind] = reasons.get(kind, 0) + 1
    counts = {
        "rows": n,
        "expected": run.n_expected,
        **{c: int(flags[c].sum()) for c in FLAG_COLUMNS},
        "feedback_na": int((~np.isfinite(fb_value)).sum()),
        "feedback_na_reasons": reasons,
    }

    conditions = run.text("condition")
    lag = lag_volumes(run)
    shifted = shifted_labels(conditions, lag)
    order = list(dict.fromkeys(c for c in conditions if c != NA))
    psc = {roi: run.num(f"{roi}_psc") for roi in run.roi_names}
    psc_by_condition: dict[str, dict[str, Any]] = {}
    for cond in order:
        entry: dict[str, Any] = {}
        for label, labels in (("labelled", conditions), ("shifted", shifted)):
            mask = np.array([c == cond for c in labels]) & usable
            per_roi = {}
            for roi, values in psc.items():
                v = values[mask]
                per_roi[roi] = {"mean": _nanmean(v), "n": int(np.isfinite(v).sum())}
            entry[label] = per_roi
        psc_by_condition[cond] = entry

    blocks_col = [int(b) if b not in (NA, "") else None for b in run.text("block")]
    shifted_block = shifted_labels(blocks_col, lag)
    block_ids = list(dict.fromkeys(b for b in blocks_col if b is not None))
    block_cond = {}
    for b, c in zip(blocks_col, conditions):
        if b is not None:
            block_cond.setdefault(b, c)
    baseline = run.baseline
    blocks = []
    for b in block_ids:
        if block_cond[b] == baseline:
            continue
        previous = [p for p in block_ids if p < b and block_cond[p] == baseline]
        in_block = np.array([s == b for s in shifted_block]) & usable
        ref = np.array([s == previous[-1] for s in shifted_block]) & usable if previous else None
        idx = [i for i, s in enumerate(blocks_col) if s == b]
        entry = {
            "block": b,
            "condition": block_cond[b],
            "volumes": (min(idx), max(idx)),
            "baseline_block": previous[-1] if previous else None,
            "n": int(in_block.sum()),
            "mean_feedback_value": _nanmean(fb_value[in_block]),
            "delta_feedback_signal": math.nan,
            "delta_psc": {roi: math.nan for roi in run.roi_names},
        }
        if ref is not None:
            entry["delta_feedback_signal"] = _nanmean(fb_signal[in_block]) - _nanmean(fb_signal[ref])
            entry["delta_psc"] = {roi: _nanmean(v[in_block]) - _nanmean(v[ref]) for roi, v in psc.items()}
        d = entry["delta_feedback_signal"]
        entry["success"] = None if not np.isfinite(d) else bool(d > 0)
        blocks.append(entry)

    regulation = np.array([c not in (NA, baseline) for c in conditions], dtype=bool) & np.isfinite(fb_value)
    shown = fb_value[regulation]
    top, bottom = int((shown >= 1.0 - SATURATION_EPS).sum()), int((shown <= SATURATION_EPS).sum())
    fraction = (top + bottom) / shown.size if shown.size else math.nan
    saturation = {
        "regulation": int(shown.size), "top": top, "bottom": bottom, "at_end": top + bottom,
        "fraction": fraction, "warn": bool(fraction > SATURATION_WARN_FRACTION),
    }

    feedback_shown = _feedback_shown(run, conditions, blocks_col, fb_value, lag)

    tsnr = {}
    for roi in run.roi_names:
        v = run.num(f"{roi}_clean")[~missing]
        v = v[np.isfinite(v)]
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        tsnr[roi] = {"tsnr": float(v.mean() / sd) if v.size > 1 and sd > 0 else math.nan, "n": int(v.size)}

    latency = {}
    for label, start, stop in (*STAGES, TOTAL_STAGE):
        latency[label] = _stats(((run.num(stop) - run.num(start)) * 1000.0)[~missing])

    fd = run.num("framewise_displacement")
    motion = {name: run.num(name) for name in MOTION_COLUMNS}
    has_motion = any(np.isfinite(v).any() for v in motion.values())
    threshold = float(run.setting("quality", "fd_threshold_mm", 0.5))
    trans = np.concatenate([np.abs(motion[c]) for c in MOTION_COLUMNS[:3]])
    rot = np.degrees(np.concatenate([np.abs(motion[c]) for c in MOTION_COLUMNS[3:]]))
    motion_summary = {
        "recorded": has_motion,
        "fd_threshold_mm": threshold,
        "fd_mean_mm": _nanmean(fd),
        "fd_max_mm": float(np.nanmax(fd)) if np.isfinite(fd).any() else math.nan,
        "fd_over_threshold": int((fd > threshold).sum()),
        "max_abs_trans_mm": float(np.nanmax(trans)) if np.isfinite(trans).any() else math.nan,
        "max_abs_rot_deg": float(np.nanmax(rot)) if np.isfinite(rot).any() else math.nan,
    }

    status = run.provenance.get("status")
    if status is None:
        status = "unknown (no finish recorded: the run crashed or is still going)" if run.provenance else "unknown"
    aborted_at = None
    if run.n_expected is not None and n < run.n_expected:
        onsets = run.num("onset_s")
        aborted_at = float(np.nanmax(onsets)) + run.tr_s if np.isfinite(onsets).any() else 0.0
    return {
        "counts": counts,
        "lag_volumes": lag,
        "psc_by_condition": psc_by_condition,
        "blocks": blocks,
        "tsnr": tsnr,
        "latency_ms": latency,
        "motion": motion_summary,
        "saturation": saturation,
        "feedback_shown": feedback_shown,
        "status": status,
        "aborted_at_s": aborted_at,
    }


def _feedback_shown(run: RecordedRun, conditions: list[str], blocks_col: list[int | None], fb_value: np.ndarray,
                    lag: int) -> dict[str, Any]:
    """How much feedback the participant saw during regulation (see :func:`summarise`)."""
    baseline = run.baseline
    reasons_text = run.text("feedback_reason")
    enabled = bool(run.setting("feedback", "enabled", True))
    regulation = np.array([c not in (NA, baseline) for c in conditions], dtype=bool)
    if regulation.any() and all(reasons_text[i] == NO_FEEDBACK_REASON for i in np.flatnonzero(regulation)):
        enabled = False  # a table without its config copy: rtnf's reason says it
    shown = regulation & np.isfinite(fb_value)

    def kinds(indices) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in indices:
            if not np.isfinite(fb_value[i]):
                kind = reason_kind(None if reasons_text[i] == NA else reasons_text[i])
                out[kind] = out.get(kind, 0) + 1
        return out

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
            silent.append({"number": number, "volumes": (first + 1, last + 1), "reasons": kinds(window)})
    n_reg, n_shown = int(regulation.sum()), int(shown.sum())
    few = not intermittent and n_reg > 0 and n_shown < FEEDBACK_SHOWN_WARN_FRACTION * n_reg
    return {
        "enabled": enabled, "regulation": n_reg, "shown": n_shown, "reasons": kinds(np.flatnonzero(regulation)),
        "silent_blocks": silent if enabled else [], "warn": bool(enabled and (silent or few)),
    }


def format_reasons(reasons: dict[str, int]) -> str:
    """``{"censored": 64, "waiting for baseline": 4}`` as "censored: 64, waiting for baseline: 4" (most first)."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- figures


def _new_figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _segments(run: RecordedRun) -> list[tuple[float, float, str]]:
    """Protocol blocks as (start_s, end_s, condition): the events file, else the condition column."""
    if run.events:
        return [(on, on + dur, cond) for on, dur, cond in run.events]
    out: list[tuple[float, float, str]] = []
    tr = run.tr_s
    for onset, cond in zip(run.num("onset_s"), run.text("condition")):
        if not np.isfinite(onset):
            continue
        if out and out[-1][2] == cond and abs(out[-1][1] - onset) < 1e-6 + 0.5 * tr:
            out[-1] = (out[-1][0], onset + tr, cond)
        else:
            out.append((onset, onset + tr, cond))
    return out


def _condition_colours(run: RecordedRun) -> dict[str, str | None]:
    conds = list(dict.fromkeys([c for *_, c in _segments(run)] + run.text("condition")))
    colours: dict[str, str | None] = {}
    k = 0
    for c in conds:
        if c == run.baseline or c == NA:
            colours[c] = None
        else:
            colours[c] = _COND_COLOURS[k % len(_COND_COLOURS)]
            k += 1
    return colours


def _shade(ax, run: RecordedRun, colours: dict[str, str | None], aborted_at: float | None) -> None:
    for start, stop, cond in _segments(run):
        colour = colours.get(cond)
        if colour is not None:
            ax.axvspan(start, stop, color=colour, alpha=0.13, lw=0)
    for t in run.num("onset_s")[run.flag("missing")]:
        ax.axvline(t, color=_FLAG_STYLE["missing"][0], alpha=0.35, lw=1.0)
    if aborted_at is not None:
        ax.axvline(aborted_at, color="k", ls="--", lw=1.0)


def _time_limits(run: RecordedRun) -> tuple[float, float]:
    ends = [stop for _, stop, _ in _segments(run)]
    onsets = run.num("onset_s")
    hi = max([*ends, float(np.nanmax(onsets)) + run.tr_s if np.isfinite(onsets).any() else run.tr_s])
    return 0.0 - 0.5 * run.tr_s, hi


def _legend_handles(colours: dict[str, str | None], baseline: str | None):
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, alpha=0.3, label=cond) for cond, c in colours.items() if c is not None]
    if baseline is not None:
        handles.append(Patch(facecolor="white", edgecolor="0.6", label=f"{baseline} (baseline)"))
    return handles


def _flag_panel(ax, run: RecordedRun, counts: dict[str, Any]) -> None:
    onsets = run.num("onset_s")
    for k, name in enumerate(FLAG_COLUMNS):
        colour, marker = _FLAG_STYLE[name]
        t = onsets[run.flag(name)]
        ax.scatter(t, np.full(t.shape, k), color=colour, marker=marker, s=28, zorder=3)
    ax.set_yticks(range(len(FLAG_COLUMNS)))
    ax.set_yticklabels([f"{name.replace('_', ' ')} ({counts[name]})" for name in FLAG_COLUMNS])
    ax.set_ylim(-0.7, len(FLAG_COLUMNS) - 0.3)
    ax.invert_yaxis()
    ax.set_ylabel("flags (count)")
    ax.grid(axis="x", alpha=0.3)


def _add_volume_axis(ax, tr: float) -> None:
    sec = ax.secondary_xaxis("top", functions=(lambda t: t / tr + 1, lambda v: (v - 1) * tr))
    sec.set_xlabel("volume (1 = first kept volume)")


def figure_timecourses(run: RecordedRun, summary: dict[str, Any], path: Path) -> Path:
    """ROI time courses (raw and cleaned; PSC), the feedback, and the flags over the protocol's blocks."""
    t = run.num("onset_s")
    colours = _condition_colours(run)
    n_roi = len(run.roi_names)
    heights = [1.6] * n_roi + [1.8, 1.8, 1.1]
    fig = _new_figure(11, sum(heights) + 0.9)
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    aborted = summary["aborted_at_s"]
    for ax in axes:
        _shade(ax, run, colours, aborted)
    for k, roi in enumerate(run.roi_names):
        ax = axes[k]
        ax.plot(t, run.num(f"{roi}_raw"), color="0.55", lw=1.0, label="raw")
        ax.plot(t, run.num(f"{roi}_clean"), color="C0", lw=1.3, label="cleaned (drift removed)")
        ax.set_ylabel(f"{roi}\nsignal (scanner units)")
        ax.legend(loc="best", fontsize=8, ncol=2, framealpha=0.8)
    ax = axes[n_roi]
    for k, roi in enumerate(run.roi_names):
        ax.plot(t, run.num(f"{roi}_psc"), color=f"C{k}", lw=1.3, marker=".", ms=3, label=roi)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_ylabel("PSC (%)")
    if run.roi_names:
        ax.legend(loc="best", fontsize=8, ncol=max(1, n_roi), framealpha=0.8)
    _feedback_panel(axes[n_roi + 1], run, t)
    _flag_panel(axes[-1], run, summary["counts"])
    axes[-1].set_xlabel("time from the first kept volume (s)")
    axes[0].set_xlim(*_time_limits(run))
    _add_volume_axis(axes[0], run.tr_s)
    handles = _legend_handles(colours, run.baseline)
    if aborted is not None:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="k", ls="--", label=f"run stopped ({aborted:g} s)"))
    fig.legend(handles=handles, loc="outside upper right", ncol=len(handles), fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def _feedback_panel(ax, run: RecordedRun, t: np.ndarray) -> None:
    value, signal = run.num("feedback_value"), run.num("feedback_signal")
    kind = str(run.setting("feedback", "signal", "psc"))
    ax.plot(t, value, color="C3", lw=1.4, marker=".", ms=4, label="feedback value (as displayed)", zorder=3)
    ax.set_ylabel("feedback value\n(0 = empty, 1 = full)")
    ax2 = ax.twinx()
    ax2.plot(t, signal, color="0.25", lw=1.0, ls="--", label="feedback signal (before scaling)")
    ax2.set_ylabel(f"feedback signal\n{_SIGNAL_UNITS.get(kind, kind)}", fontsize=9)
    lo, hi = (float(x) for x in run.setting("feedback", "scale_range", [-1.0, 2.0]))
    if run.setting("feedback", "scaling", "fixed") == "fixed" and hi > lo:
        # One linear map between the axes: the value is the signal mapped from scale_range to [0, 1].
        finite = signal[np.isfinite(signal)]
        s_lo = min(lo, float(finite.min())) if finite.size else lo
        s_hi = max(hi, float(finite.max())) if finite.size else hi
        v_lo, v_hi = (s_lo - lo) / (hi - lo), (s_hi - lo) / (hi - lo)
        pad = 0.05 * (v_hi - v_lo)
        ax.set_ylim(v_lo - pad, v_hi + pad)
        ax2.set_ylim(lo + (v_lo - pad) * (hi - lo), lo + (v_hi + pad) * (hi - lo))
        for v in (0.0, 1.0):
            ax.axhline(v, color="C3", lw=0.6, ls=":")
        ax.set_yticks([0.0, 0.5, 1.0])
    else:
        ax.set_ylim(-0.05, 1.05)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=8, ncol=2, framealpha=0.8)


def figure_motion(run: RecordedRun, summary: dict[str, Any], path: Path) -> Path | None:
    """Translations (mm), rotations (degrees) and framewise displacement with the threshold; None if no motion."""
    if not summary["motion"]["recorded"]:
        return None
    t = run.num("onset_s")
    colours = _condition_colours(run)
    fig = _new_figure(11, 7.2)
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [1.6, 1.6, 1.6, 1.1]})
    aborted = summary["aborted_at_s"]
    for ax in axes:
        _shade(ax, run, colours, aborted)
    for k, name in enumerate(MOTION_COLUMNS[:3]):
        axes[0].plot(t, run.num(name), color=f"C{k}", lw=1.2, label=name)
    axes[0].set_ylabel("translation (mm)")
    for k, name in enumerate(MOTION_COLUMNS[3:]):
        axes[1].plot(t, np.degrees(run.num(name)), color=f"C{k}", lw=1.2, label=name)
    axes[1].set_ylabel("rotation (degrees)\n[recorded in rad]")
    for ax, key in zip(axes[:2], ("trans", "rots")):
        ax.axhline(0, color="0.3", lw=0.6)
        ax.legend(loc="best", fontsize=8, ncol=3, framealpha=0.8)
        _at_least(ax, *MOTION_MIN_RANGE[key])
    fd = run.num("framewise_displacement")
    threshold = summary["motion"]["fd_threshold_mm"]
    ax = axes[2]
    ax.plot(t, fd, color="k", lw=1.2, marker=".", ms=3, label="framewise displacement")
    ax.axhline(threshold, color="C3", ls="--", lw=1.0, label=f"threshold {threshold:g} mm ([quality] fd_threshold_mm)")
    over = fd > threshold
    ax.scatter(t[over], fd[over], color="C3", s=30, zorder=3, label=f"above threshold ({int(over.sum())})")
    ax.set_ylabel("FD (mm)")
    top = max(threshold, float(np.nanmax(fd)) if np.isfinite(fd).any() else threshold)
    ax.set_ylim(0, max(MOTION_MIN_RANGE["fd"][1], 1.45 * top))  # the threshold line always in view
    ax.legend(loc="best", fontsize=8, ncol=3, framealpha=0.8)
    for a in axes[:3]:  # 0.002, never 2e-3 or an offset
        a.ticklabel_format(axis="y", style="plain", useOffset=False)
    _flag_panel(axes[3], run, summary["counts"])
    axes[3].set_xlabel("time from the first kept volume (s)")
    axes[0].set_xlim(*_time_limits(run))
    _add_volume_axis(axes[0], run.tr_s)
    fig.legend(handles=_legend_handles(colours, run.baseline), loc="outside upper right", ncol=6, fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def _at_least(ax, low: float, high: float) -> None:
    """Widen ``ax``'s y range to include [low, high], so that sub-millimetre noise does not fill the panel."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, low), max(hi, high))


def figure_latency(run: RecordedRun, summary: dict[str, Any], path: Path) -> Path | None:
    """Histogram of each processing stage's duration in ms; None if no volume has timings."""
    missing = run.flag("missing")
    stages = [(label, ((run.num(b) - run.num(a)) * 1000.0)[~missing]) for label, a, b in (*STAGES, TOTAL_STAGE)]
    stages = [(label, v[np.isfinite(v)]) for label, v in stages]
    if not any(v.size for _, v in stages):
        return None
    fig = _new_figure(11, 5.2)
    axes = fig.subplots(2, 3).ravel()
    for k, (ax, (label, v)) in enumerate(zip(axes, stages)):
        colour = "k" if k == len(stages) - 1 else f"C{k}"
        if v.size:
            ax.hist(v, bins=min(30, max(5, v.size // 2)), color=colour, alpha=0.75)
            st = summary["latency_ms"][label]
            ax.axvline(st["median"], color="k", lw=1.0, label=f"median {st['median']:.2f} ms")
            ax.axvline(st["p95"], color="k", lw=1.0, ls="--", label=f"p95 {st['p95']:.2f} ms")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no timings", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("duration (ms)")
        ax.set_ylabel("volumes (count)")
    axes[-1].axis("off")
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- the page


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return NA
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, float):
        return NA if not math.isfinite(x) else f"{x:.{digits}f}"
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _when(unix: Any) -> str:
    if not isinstance(unix, (int, float)):
        return NA
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1150px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0 1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num,table.num td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:.9em}.warn{color:#a33}.ok{color:#262}
.kv td:first-child{font-weight:600;white-space:nowrap}
code{background:#f5f5f5;padding:0 .2em}
"""


def _image_tag(path: Path, alt: str, embed: bool) -> str:
    if embed:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = html.escape(path.name)
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def render_html(run: RecordedRun, summary: dict[str, Any], figures: dict[str, Path | None], embed: bool = False) -> str:
    """The report page as text."""
    c = summary["counts"]
    prov = run.provenance
    status = summary["status"]
    status_cls = "ok" if status == "ended" else "warn"
    identity = [
        ["run", html.escape(run.prefix)],
        ["run id", _fmt(prov.get("run_id"))],
        ["status", f'<span class="{status_cls}">{_fmt(status)}</span>'
         + (f" — stopped at {summary['aborted_at_s']:g} s, {c['rows']} of {c['expected']} volumes recorded"
            if summary["aborted_at_s"] is not None else "")],
        ["started", _when(prov.get("started"))],
        ["finished", _when(prov.get("finished"))],
        ["TR", f"{run.tr_s:g} s"],
        ["table", html.escape(str(run.timeseries))],
        ["command", html.escape(" ".join(map(str, prov.get("command", [])))) or NA],
        ["platform", _fmt(prov.get("platform"))],
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>rtnf report: {html.escape(run.prefix)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>rtnf run report</h1><p class=\"note\">{html.escape(run.prefix)} — written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} by rtnf report from <code>{html.escape(run.timeseries.name)}</code></p>",
    ]
    shown = summary["feedback_shown"]
    if shown["warn"]:
        lines = [f"no feedback shown in regulation block {b['number']} (volumes {b['volumes'][0]}–{b['volumes'][1]}"
                 + (f"; {format_reasons(b['reasons'])}" if b["reasons"] else "") + ")" for b in shown["silent_blocks"]]
        lines.append(f"feedback shown for {shown['shown']} of {shown['regulation']} regulation volumes"
                     + (f" (no value: {format_reasons(shown['reasons'])})" if shown["reasons"] else ""))
        parts.append(
            '<div class="warn" data-warning="no-feedback"><p><strong>Warning: the participant saw (almost) no '
            "feedback.</strong></p><ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in lines) + "</ul>"
            "<p>Check the reasons: censoring (<code>[quality] fd_threshold_mm</code>, <code>censor_action</code>), "
            "a baseline too short for <code>[feedback] min_baseline_volumes</code>, missing volumes.</p></div>"
        )
    sat = summary["saturation"]
    if sat["warn"]:
        parts.append(
            f'<p class="warn" data-warning="saturation"><strong>Warning: the feedback was at an end of the bar for '
            f'{sat["at_end"]} of {sat["regulation"]} regulation volumes ({100 * sat["fraction"]:.0f} %; '
            f'{sat["top"]} full, {sat["bottom"]} empty), more than {100 * SATURATION_WARN_FRACTION:.0f} %.</strong> '
            "A bar stuck at an end tells the participant little: check <code>[feedback] scale_range</code> "
            "and <code>scaling</code>.</p>"
        )
    if run.notes:
        parts.append("<ul class=\"warn\">" + "".join(f"<li>{html.escape(n)}</li>" for n in run.notes) + "</ul>")
    parts.append("<h2>Run</h2>" + _table(["", ""], identity, "kv"))

    # volumes
    vol_rows = [
        ["volumes planned (kept, dummies excluded)", _fmt(c["expected"])],
        ["rows recorded", _fmt(c["rows"])],
        ["missing (never arrived or unreadable)", _fmt(c["missing"])],
        ["late (arrived late or took longer than a TR)", _fmt(c["late"])],
        ["out of order", _fmt(c["out_of_order"])],
        ["censored (FD, DVARS or global-signal jump)", _fmt(c["censored"])],
        ["regulation volumes with feedback shown",
         (f"{summary['feedback_shown']['shown']} of {summary['feedback_shown']['regulation']}"
          if summary["feedback_shown"]["enabled"] else "no feedback in this run (feedback.enabled = false)")],
        ["feedback n/a", _fmt(c["feedback_na"]) + (" (" + html.escape(format_reasons(c["feedback_na_reasons"])) + ")"
                                                   if c["feedback_na_reasons"] else "")],
    ]
    sat_text = (f"{sat['at_end']} of {sat['regulation']} regulation volumes ({_fmt(100 * sat['fraction'], 1)} %)"
                f" — full {sat['top']}, empty {sat['bottom']}" if sat["regulation"] else "no regulation volume")
    vol_rows.append(["feedback at the bar's ends",
                     f'<span class="warn">{sat_text}</span>' if sat["warn"] else sat_text])
    parts.append(
        "<h2>Volumes</h2>" + _table(["", "count"], vol_rows, "kv num")
        + f"<p class=\"note\"><em>Feedback at the bar's ends</em>: regulation volumes (condition other than the "
        f"baseline <code>{html.escape(str(run.baseline))}</code>, with a feedback value) whose "
        f"<code>feedback_value</code> is within {SATURATION_EPS:g} of 1 (full) or 0 (empty); above "
        f"{100 * SATURATION_WARN_FRACTION:.0f} % the report warns at the top.</p>"
    )

    # percent signal change per condition
    rois = run.roi_names
    lag = summary["lag_volumes"]
    psc_rows = []
    for cond, entry in summary["psc_by_condition"].items():
        row = [html.escape(cond) + (" (baseline)" if cond == run.baseline else "")]
        for roi in rois:
            a, b = entry["labelled"][roi], entry["shifted"][roi]
            row += [f"{_fmt(a['mean'], 3)} <span class=\"note\">(n={a['n']})</span>",
                    f"{_fmt(b['mean'], 3)} <span class=\"note\">(n={b['n']})</span>"]
        psc_rows.append(row)
    header = ["condition"] + [h for roi in rois for h in (f"{roi}: as labelled", f"{roi}: shifted {lag} vol")]
    parts.append(
        "<h2>Percent signal change per condition</h2>"
        + _table(header, psc_rows, "num")
        + f"<p class=\"note\">Mean of each ROI's <code>_psc</code> column (%) over the volumes of the condition that "
        f"are neither missing nor censored and have a value (n). <em>As labelled</em>: the volume's own "
        f"<code>condition</code>; <em>shifted</em>: the condition {lag} volumes earlier "
        f"(<code>[feedback] hemodynamic_lag_s</code> = {run.setting('feedback', 'hemodynamic_lag_s', 6.0):g} s "
        f"rounded to whole TRs), which follows the hemodynamic delay. PSC is relative to the most recent baseline, "
        f"so the first baseline block has few values.</p>"
    )

    # regulation success
    target = run.setting("feedback", "roi", None)
    target = " + ".join(target) if isinstance(target, list) else target
    reg_rows = []
    for b in summary["blocks"]:
        row = [
            str(b["block"] + 1), html.escape(b["condition"]), f"{b['volumes'][0] + 1}–{b['volumes'][1] + 1}",
            NA if b["baseline_block"] is None else str(b["baseline_block"] + 1), str(b["n"]), _fmt(b["mean_feedback_value"], 3),
            _fmt(b["delta_feedback_signal"], 3),
        ]
        row += [_fmt(b["delta_psc"][roi], 3) for roi in rois]
        s = b["success"]
        row.append(NA if s is None else (f'<span class="ok">yes</span>' if s else f'<span class="warn">no</span>'))
        reg_rows.append(row)
    header = ["block", "condition", "volumes", "baseline block", "n", "mean feedback value (0–1)",
              "Δ feedback signal"] + [f"Δ {roi} PSC (%)" for roi in rois] + ["success"]
    parts.append(
        "<h2>Regulation success per block</h2>"
        + (_table(header, reg_rows, "num") if reg_rows else "<p>No block of a non-baseline condition.</p>")
        + f"<p class=\"note\">For each block of a non-baseline condition, with its volumes shifted {lag} volumes "
        "later for the hemodynamic delay (as is the preceding baseline block), leaving out missing and censored "
        "volumes: <em>mean feedback value</em> is the mean of <code>feedback_value</code> shown during the block; "
        "<em>Δ feedback signal</em> is the block's mean <code>feedback_signal</code> "
        f"({html.escape(_SIGNAL_UNITS.get(str(run.setting('feedback', 'signal', 'psc')), ''))} of "
        f"{html.escape(str(target or 'the target'))}) minus the mean of the preceding baseline block; "
        "<em>Δ PSC</em> the same for each ROI's percent signal change. <em>Success</em>: Δ feedback signal &gt; 0. "
        "Blocks are the protocol's segments numbered from 1; volumes are numbered from 1 (the first kept volume) "
        "and listed as recorded (unshifted).</p>"
    )

    # temporal SNR
    tsnr_rows = [[html.escape(r), _fmt(v["tsnr"], 1), str(v["n"])] for r, v in summary["tsnr"].items()]
    parts.append(
        "<h2>Temporal SNR</h2>" + _table(["ROI", "tSNR", "volumes"], tsnr_rows, "num")
        + "<p class=\"note\">Mean divided by the standard deviation (ddof=1) of the ROI's cleaned signal "
        "(<code>_clean</code>: raw minus the drift fitted by the incremental GLM) over the volumes that are not "
        "missing. Task-related variance and censored volumes are included.</p>"
    )

    # figures
    parts.append("<h2>ROI time courses and feedback</h2>")
    if figures.get("timecourses"):
        parts.append(_image_tag(figures["timecourses"], "ROI time courses, feedback and flags", embed))
        parts.append(
            "<p class=\"note\">Shaded: protocol blocks (from the events file, or the condition column); red "
            "vertical lines: missing volumes; dashed black line: where an aborted run stopped. Gaps in the "
            "curves are n/a values (missing volumes, PSC before a baseline exists).</p>"
        )
    parts.append("<h2>Head motion</h2>")
    m = summary["motion"]
    if figures.get("motion"):
        parts.append(_image_tag(figures["motion"], "head motion and framewise displacement", embed))
        parts.append(_table(["", ""], [
            ["FD threshold", f"{m['fd_threshold_mm']:g} mm"],
            ["mean FD", f"{_fmt(m['fd_mean_mm'], 3)} mm"],
            ["max FD", f"{_fmt(m['fd_max_mm'], 3)} mm"],
            ["volumes with FD above the threshold", str(m["fd_over_threshold"])],
            ["largest |translation|", f"{_fmt(m['max_abs_trans_mm'], 3)} mm"],
            ["largest |rotation|", f"{_fmt(m['max_abs_rot_deg'], 3)} degrees"],
        ], "kv num"))
        parts.append("<p class=\"note\">Motion relative to the reference volume; rotations are recorded in "
                     "radians (fMRIPrep's convention) and drawn in degrees.</p>")
    else:
        parts.append("<p>No motion parameters were recorded (motion correction off, or no volume processed).</p>")

    parts.append("<h2>Processing latency</h2>")
    lat_rows = [
        [html.escape(label), str(st["n"]), _fmt(st["median"]), _fmt(st["p95"]), _fmt(st["max"])]
        for label, st in summary["latency_ms"].items()
    ]
    parts.append(_table(["stage", "volumes", "median (ms)", "p95 (ms)", "max (ms)"], lat_rows, "num"))
    if figures.get("latency"):
        parts.append(_image_tag(figures["latency"], "latency histogram by stage", embed))
    parts.append("<p class=\"note\">Differences of the <code>t_*</code> columns (one clock, this machine's) over "
                 "volumes that are not missing. Total = <code>t_published − t_detected</code>, the processing "
                 "latency of the design. <em>detect → read</em> includes the time a volume waited for an earlier "
                 "late or missing one (volumes are processed in acquisition order).</p>")

    # log
    warnings = [r for r in run.log if r.get("level") in ("WARNING", "ERROR", "CRITICAL")]
    if warnings:
        shown = warnings[:50]
        parts.append(f"<h2>Warnings and errors ({len(warnings)})</h2>")
        parts.append(_table(["time", "level", "message"], [
            [_when(_to_float(r.get("time"))), html.escape(r["level"]), html.escape(r.get("message") or "")] for r in shown
        ]))
        if len(warnings) > len(shown):
            parts.append(f"<p class=\"note\">… {len(warnings) - len(shown)} more in the run's log file.</p>")

    versions = prov.get("versions") or {}
    parts.append("<h2>Software</h2>")
    if versions:
        parts.append(_table(["package", "version"], [[html.escape(k), _fmt(v)] for k, v in versions.items()], "kv"))
    else:
        parts.append("<p>No versions recorded.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def default_output_dir(timeseries_tsv: Path) -> Path:
    """``<sub>/<ses>/figures`` beside the run's ``func`` folder (fMRIPrep's layout), else the table's folder."""
    folder = Path(timeseries_tsv).resolve().parent
    return folder.parent / "figures" if folder.name == "func" else folder


def write_report(timeseries_tsv: Path, out_dir: Path, embed: bool = False) -> Path:
    """Write the HTML report of a recorded run and its PNG figures.

    Parameters
    ----------
    timeseries_tsv : Path
        The run's ``*_desc-rtnf_timeseries.tsv``; its siblings (events, config
        copy, provenance, log) are read when present.
    out_dir : Path
        Folder for ``<prefix>_desc-rtnf_report.html`` and its PNGs (created).
    embed : bool
        Also embed the figures in the page as data URIs (one file to send).

    Returns
    -------
    Path
        The HTML file.
    """
    run = read_run(Path(timeseries_tsv))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(run)
    makers = {"timecourses": figure_timecourses, "motion": figure_motion, "latency": figure_latency}
    figures: dict[str, Path | None] = {}
    for name in FIGURES:
        path = out_dir / f"{run.prefix}_desc-{name}_report.png"
        path.unlink(missing_ok=True)  # a stale figure of an earlier report must not survive
        figures[name] = makers[name](run, summary, path)
    out = out_dir / f"{run.prefix}_desc-rtnf_report.html"
    out.write_text(render_html(run, summary, figures, embed), encoding="utf-8")
    return out


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rtnf report``."""
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_TSV",
                        help="a run's *_desc-rtnf_timeseries.tsv, or a folder searched for them (one report each)")
    parser.add_argument("-o", "--output-dir", type=Path, default=None,
                        help="folder of the report(s) (default: <sub>/<ses>/figures beside each run's func folder)")
    parser.add_argument("--embed", action="store_true",
                        help="also embed the figures in the HTML (a single file to send)")


def run(args: argparse.Namespace) -> int:
    """Write the report(s); print each HTML path. Exit code 2 when no table is found."""
    try:
        tables = find_timeseries(args.path)
    except ReportError as exc:
        print(f"rtnf report: {exc}", file=sys.stderr)
        return 2
    status = 0
    for tsv in tables:
        out_dir = args.output_dir if args.output_dir is not None else default_output_dir(tsv)
        if args.output_dir is not None and len(tables) > 1:
            out_dir = args.output_dir / tsv.name[: -len(TIMESERIES_SUFFIX)]
        try:
            print(write_report(tsv, out_dir, embed=getattr(args, "embed", False)))
        except ReportError as exc:
            print(f"rtnf report: {exc}", file=sys.stderr)
            status = 2
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m rtnf.apps.report``, until ``rtnf report`` is wired into the CLI."""
    parser = argparse.ArgumentParser(prog="rtnf report", description="HTML report of a recorded run.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
