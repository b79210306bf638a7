"""The longitudinal report's figures (PNG, matplotlib's Agg canvas; no pyplot, no global backend switch).

Per participant: the learning curve (every regulation block's change toward
the goal in study order, the shaped block values against their thresholds,
success rate per run), PSC by condition per session, and data quality
(FD and tSNR per run), and ratings per run when any were recorded. Per study:
the session numbers by arm code. Each function returns the PNG's path, or
None when there is nothing to draw. matplotlib is imported when a figure is
drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ROLE_MARKERS = {"feedback": "o", "transfer": "s", "no feedback": "^"}
"""Marker per run role (:data:`rtnf.apps.report.longitudinal.ROLES`)."""


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _session_bounds(ax: Axes, sessions: list[str], first: list[float]) -> None:
    """Vertical lines between sessions, each labelled at its first position."""
    for k, (session, x) in enumerate(zip(sessions, first)):
        if k:
            ax.axvline(x - 0.5, color="0.6", lw=0.8, ls="--")
        ax.annotate(f"ses-{session}", (x - 0.4, 1.0), xycoords=("data", "axes fraction"), va="top", fontsize=8,
                    color="0.35")


def _run_label(row: dict[str, Any]) -> str:
    return f"{row['session']}/{row['task']}-{row['run']}"


def figure_learning(participant: str, runs: list[dict[str, Any]], blocks: list[dict[str, Any]],
                    path: Path) -> Path | None:
    """A participant's learning curve; None without a regulation block.

    Top: each regulation block's change of the feedback signal from its
    baseline toward the goal, in study order (filled: the per-run report's
    success), with the shaped block value and the threshold it had to beat
    where shaping recorded one. Bottom: success rate per run (circles:
    feedback runs, squares: transfer runs).
    """
    mine = [b for b in blocks if b["participant"] == participant and b["role"] in ("feedback", "transfer")]
    rows = [r for r in runs if r["participant"] == participant and r["role"] in ("feedback", "transfer")]
    if not mine:
        return None
    fig = _new_figure(11, 6)
    top, bottom = fig.subplots(2, 1)
    x = np.arange(1, len(mine) + 1)
    goal = np.array([b["toward_goal"] for b in mine], dtype=float)
    colours = ["C0" if b["role"] == "feedback" else "C2" for b in mine]
    top.scatter(x, goal, edgecolors=colours, facecolors=[c if b["success"] else "none" for c, b in zip(colours, mine)],
                s=40, zorder=3, label="change toward the goal (filled: success)")
    value = np.array([b["block_value"] for b in mine], dtype=float)
    if np.isfinite(value).any():
        top.plot(x, value, "x", color="C1", label="shaped block value")
        top.plot(x, np.array([b["threshold"] for b in mine], dtype=float), "_", ms=16, mew=2, color="C3",
                 label="shaping threshold it had to beat")
    top.axhline(0.0, color="0.5", lw=0.8)
    top.set_xlabel("regulation block, in study order")
    top.set_ylabel("signal toward the goal")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="lower right")
    sessions = list(dict.fromkeys(b["session"] for b in mine))
    _session_bounds(top, sessions, [1 + next(i for i, b in enumerate(mine) if b["session"] == s) for s in sessions])
    xr = np.arange(1, len(rows) + 1)
    for role, marker in ROLE_MARKERS.items():
        sel = [i for i, r in enumerate(rows) if r["role"] == role]
        if sel:
            bottom.plot(xr[sel], [rows[i]["success_rate"] for i in sel], marker, ms=7,
                        color="C0" if role == "feedback" else "C2", label=f"{role} runs")
    fb = [i for i, r in enumerate(rows) if r["role"] == "feedback"]
    if fb:
        bottom.plot(xr[fb], [rows[i]["success_rate"] for i in fb], "-", color="C0", lw=1.0, alpha=0.6)
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_xticks(xr, [_run_label(r) for r in rows], rotation=30, fontsize=8)
    bottom.set_ylabel("blocks with success (fraction)")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.savefig(path)
    return path


def figure_psc(participant: dict[str, Any], rois: list[str], path: Path) -> Path | None:
    """Mean PSC by condition (lag-shifted) per session, one panel per ROI; None without PSC."""
    sessions = participant["sessions"]
    keys = sorted({k for s in sessions for k in s if k.startswith("psc_")})
    if not keys or not rois:
        return None
    fig = _new_figure(min(11, 3.5 * len(rois) + 1), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(rois)))
    for ax, roi in zip(axes, rois):
        conds = [k[len("psc_"):-len("_" + roi)] for k in keys if k.endswith("_" + roi)]
        width = 0.8 / max(1, len(conds))
        for j, cond in enumerate(conds):
            ax.bar(np.arange(len(sessions)) + j * width, [s.get(f"psc_{cond}_{roi}", math.nan) for s in sessions],
                   width, label=cond)
        ax.set_xticks(np.arange(len(sessions)) + 0.4 - width / 2, [f"ses-{s['session']}" for s in sessions])
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_title(roi, fontsize=10)
        ax.set_ylabel("PSC (%)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def figure_quality(participant: str, runs: list[dict[str, Any]], rois: list[str], path: Path) -> Path | None:
    """Mean and maximum FD per run, and tSNR per ROI per run; None without runs."""
    rows = [r for r in runs if r["participant"] == participant]
    if not rows:
        return None
    fig = _new_figure(11, 3.6)
    left, right = fig.subplots(1, 2)
    x = np.arange(1, len(rows) + 1)
    left.plot(x, [r["fd_mean_mm"] for r in rows], "o-", label="mean FD")
    left.plot(x, [r["fd_max_mm"] for r in rows], "v", label="max FD")
    left.set_ylabel("FD (mm)")
    for roi in rois:
        right.plot(x, [r.get(f"tsnr_{roi}", math.nan) for r in rows], "o-", label=roi)
    right.set_ylabel("tSNR")
    for ax in (left, right):
        ax.set_xticks(x, [_run_label(r) for r in rows], rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def figure_ratings(participant: str, runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Each question's mean rating per run; None when no run had ratings."""
    rows = [r for r in runs if r["participant"] == participant]
    questions = sorted({k for r in rows for k in r if k.startswith("rating_")})
    if not questions:
        return None
    fig = _new_figure(11, 3.4)
    ax = fig.subplots()
    x = np.arange(1, len(rows) + 1)
    for q in questions:
        ax.plot(x, [r.get(q, math.nan) for r in rows], "o-", label=q[len("rating_"):])
    ax.set_xticks(x, [_run_label(r) for r in rows], rotation=30, fontsize=8)
    ax.set_ylabel("mean rating")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def figure_arms(arms: list[dict[str, Any]], path: Path) -> Path | None:
    """Per arm code, per session position: feedback runs' success rate and the transfer effect (mean ± SD)."""
    if not arms:
        return None
    fig = _new_figure(11, 3.8)
    left, right = fig.subplots(1, 2)
    for k, arm in enumerate(arms):
        pos = np.array([s["position"] for s in arm["sessions"]], dtype=float) + 0.08 * (k - (len(arms) - 1) / 2)
        for ax, key in ((left, "success_rate"), (right, "transfer_effect")):
            mean = [s[key]["mean"] for s in arm["sessions"]]
            sd = [s[key]["sd"] if math.isfinite(s[key]["sd"]) else 0.0 for s in arm["sessions"]]
            ax.errorbar(pos, mean, yerr=sd, marker="o", capsize=3, label=f"arm {arm['arm']} (n = {len(arm['participants'])})")
    left.set_ylabel("feedback runs: blocks with success")
    left.set_ylim(-0.05, 1.05)
    right.set_ylabel("transfer effect (toward the goal)")
    right.axhline(0.0, color="0.5", lw=0.8)
    for ax in (left, right):
        ax.set_xlabel("session (in each participant's order)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path
