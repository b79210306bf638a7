"""The report's figures: PNGs drawn with matplotlib's Agg canvas (no pyplot, no global backend switch).

matplotlib is imported when a figure is drawn, not when this module is.
Every figure shares the time axis (seconds from the first kept volume, with
volume numbers from 1 on top), the protocol's blocks shaded behind, missing
volumes as red lines and, for a run that stopped early, a dashed line where
it stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from rtnf.analysis.motion import MOTION_COLUMNS

from .read import NA, RecordedRun
from .summary import FLAG_COLUMNS, SIGNAL_UNITS, stage_durations_ms

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

FIGURES = ("timecourses", "motion", "latency", "ratings")
"""The report's figures, in page order ("ratings": :func:`rtnf.apps.report.ratings.figure_ratings`)."""
MOTION_MIN_RANGE = {"trans": (-1.0, 1.0), "rots": (-1.0, 1.0), "fd": (0.0, 1.0)}
"""The smallest y range of the motion figure: translations (mm), rotations (degrees), FD (mm)."""
FLAG_STYLE = {
    "missing": ("#d62728", "x"),
    "late": ("#ff7f0e", "v"),
    "out_of_order": ("#9467bd", "d"),
    "censored": ("#8c564b", "o"),
}
"""Colour and marker of each flag on the time axis."""
CONDITION_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#e377c2", "#17becf", "#bcbd22", "#8c564b")
"""Shades of the non-baseline conditions, in order of appearance (the baseline is not shaded)."""


def draw(name: str, run: RecordedRun, summary: dict[str, Any], path: Path) -> Path | None:
    """Draw the figure ``name`` (one of :data:`FIGURES`) to ``path``; None when the run has nothing to show in it."""
    from .ratings import figure_ratings

    makers = {"timecourses": figure_timecourses, "motion": figure_motion, "latency": figure_latency,
              "ratings": figure_ratings}
    return makers[name](run, summary, path)


def drawn(name: str, make: Callable[[Path], Path | None], path: Path, notes: list[str] | None = None) -> Path | None:
    """``make(path)``, or None when matplotlib cannot draw the numbers: the rest of the report is written.

    Values near the float limits (a damaged or hand-edited table: 1e308) overflow matplotlib's
    ticks and transforms (``ValueError``, ``LinAlgError``, ``OverflowError``). The figure is left
    out with a warning naming it (the traceback at debug level: a fault in the figure's own code
    raises the same types), and said in ``notes`` (shown at the top of the report) when given.
    """
    try:
        return make(path)
    except (ValueError, OverflowError) as exc:  # numpy's LinAlgError is a ValueError
        path.unlink(missing_ok=True)
        reason = f"figure {name} left out: its values cannot be drawn ({type(exc).__name__}: {exc})"
        log.warning("report: %s", reason)
        log.debug("report: figure %s", name, exc_info=exc)
        if notes is not None:
            notes.append(reason)
        return None


def _new_figure(width_in: float, height_in: float) -> Figure:
    """An Agg figure of ``width_in`` x ``height_in`` inches at 100 dpi, constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


# ---------------------------------------------------------------- the time axis


def segments(run: RecordedRun) -> list[tuple[float, float, str]]:
    """Protocol blocks as (start_s, end_s, condition): the events file, else runs of the condition column."""
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


def condition_colours(run: RecordedRun) -> dict[str, str | None]:
    """Shade of each condition; None for the baseline and n/a (not shaded)."""
    conds = list(dict.fromkeys([c for *_, c in segments(run)] + run.text("condition")))
    colours: dict[str, str | None] = {}
    k = 0
    for c in conds:
        if c == run.baseline or c == NA:
            colours[c] = None
        else:
            colours[c] = CONDITION_COLOURS[k % len(CONDITION_COLOURS)]
            k += 1
    return colours


def _shade(ax: Axes, run: RecordedRun, colours: dict[str, str | None], aborted_at: float | None) -> None:
    """Blocks, missing volumes and where an aborted run stopped (s), behind ``ax``'s curves."""
    for start, stop, cond in segments(run):
        colour = colours.get(cond)
        if colour is not None:
            ax.axvspan(start, stop, color=colour, alpha=0.13, lw=0)
    for t in run.num("onset_s")[run.flag("missing")]:
        ax.axvline(t, color=FLAG_STYLE["missing"][0], alpha=0.35, lw=1.0)
    if aborted_at is not None:
        ax.axvline(aborted_at, color="k", ls="--", lw=1.0)


def time_limits(run: RecordedRun) -> tuple[float, float]:
    """The time axis's range in seconds: half a TR before the first volume to the end of the last block or volume."""
    ends = [stop for _, stop, _ in segments(run)]
    onsets = run.num("onset_s")
    hi = max([*ends, float(np.nanmax(onsets)) + run.tr_s if np.isfinite(onsets).any() else run.tr_s])
    return 0.0 - 0.5 * run.tr_s, hi


def _legend_handles(colours: dict[str, str | None], baseline: str | None) -> list[Patch]:
    """One patch per shaded condition, and a white one for the baseline."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, alpha=0.3, label=cond) for cond, c in colours.items() if c is not None]
    if baseline is not None:
        handles.append(Patch(facecolor="white", edgecolor="0.6", label=f"{baseline} (baseline)"))
    return handles


def _flag_panel(ax: Axes, run: RecordedRun, counts: dict[str, Any]) -> None:
    """One row of markers per flag column, at the flagged volumes' onsets, labelled with the counts."""
    onsets = run.num("onset_s")
    for k, name in enumerate(FLAG_COLUMNS):
        colour, marker = FLAG_STYLE[name]
        t = onsets[run.flag(name)]
        ax.scatter(t, np.full(t.shape, k), color=colour, marker=marker, s=28, zorder=3)
    ax.set_yticks(range(len(FLAG_COLUMNS)))
    ax.set_yticklabels([f"{name.replace('_', ' ')} ({counts[name]})" for name in FLAG_COLUMNS])
    ax.set_ylim(-0.7, len(FLAG_COLUMNS) - 0.3)
    ax.invert_yaxis()
    ax.set_ylabel("flags (count)")
    ax.grid(axis="x", alpha=0.3)


def _add_volume_axis(ax: Axes, tr: float) -> None:
    """Volume numbers (1 = first kept volume) on top of a time axis in seconds, for a TR of ``tr`` s."""
    sec = ax.secondary_xaxis("top", functions=(lambda t: t / tr + 1, lambda v: (v - 1) * tr))
    sec.set_xlabel("volume (1 = first kept volume)")


def _at_least(ax: Axes, low: float, high: float) -> None:
    """Widen ``ax``'s y range to include [low, high], so that sub-millimetre noise does not fill the panel."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, low), max(hi, high))


# ---------------------------------------------------------------- the figures


def figure_timecourses(run: RecordedRun, summary: dict[str, Any], path: Path) -> Path:
    """ROI time courses (raw and cleaned; PSC), the feedback, and the flags over the protocol's blocks."""
    t = run.num("onset_s")
    colours = condition_colours(run)
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
    axes[0].set_xlim(*time_limits(run))
    _add_volume_axis(axes[0], run.tr_s)
    handles: list[Any] = _legend_handles(colours, run.baseline)
    if aborted is not None:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="k", ls="--", label=f"run stopped ({aborted:g} s)"))
    fig.legend(handles=handles, loc="outside upper right", ncol=len(handles), fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def _feedback_panel(ax: Axes, run: RecordedRun, t: np.ndarray) -> None:
    """The feedback value as displayed (0-1, left axis) and the signal before scaling (right axis) over time ``t`` (s).

    With fixed scaling the two axes are one linear map: the value is the
    signal mapped from ``[feedback] scale_range`` to [0, 1].
    """
    value, signal = run.num("feedback_value"), run.num("feedback_signal")
    kind = str(run.setting("feedback", "signal", "psc"))
    ax.plot(t, value, color="C3", lw=1.4, marker=".", ms=4, label="feedback value (as displayed)", zorder=3)
    ax.set_ylabel("feedback value\n(0 = empty, 1 = full)")
    ax2 = ax.twinx()
    ax2.plot(t, signal, color="0.25", lw=1.0, ls="--", label="feedback signal (before scaling)")
    ax2.set_ylabel(f"feedback signal\n{SIGNAL_UNITS.get(kind, kind)}", fontsize=9)
    lo, hi = (float(x) for x in run.setting("feedback", "scale_range", [-1.0, 2.0]))
    if run.setting("feedback", "scaling", "fixed") == "fixed" and hi > lo:
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
    colours = condition_colours(run)
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
    axes[0].set_xlim(*time_limits(run))
    _add_volume_axis(axes[0], run.tr_s)
    fig.legend(handles=_legend_handles(colours, run.baseline), loc="outside upper right", ncol=6, fontsize=8, frameon=False)
    fig.savefig(path)
    return path


def figure_latency(run: RecordedRun, summary: dict[str, Any], path: Path) -> Path | None:
    """Histogram of each processing stage's duration in ms; None if no volume has timings."""
    stages = [(label, v[np.isfinite(v)]) for label, v in stage_durations_ms(run)]
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
