"""The participant's ratings in the report: read, set against regulation success per block, and drawn.

The ratings file (``<prefix>_desc-ratings_events.tsv``, :mod:`rtnf.run.ratings`)
holds one row per rating the feedback screen showed. Ratings shown after a
regulation block carry that block's number (the table's ``block`` column);
:func:`ratings_summary` joins them with the report's regulation success per
block (:func:`rtnf.apps.report.summary.regulation_blocks`), so that the
rating after block *k* sits beside block *k*'s change of the feedback signal
from its baseline, its mean feedback value and its success;
:func:`figure_ratings` plots them. A run without ratings has no file, no
section and no figure. matplotlib is imported when the figure is drawn.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .read import NA, RecordedRun, to_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_PAIRS_FOR_R = 3
"""Blocks (with a rating and a change of the feedback signal) needed before a correlation is given."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def read_ratings(path: Path, notes: list[str]) -> list[dict[str, str]]:
    """The ratings file's rows as text; empty when the run has none (no file: no note, ratings are optional)."""
    if not Path(path).is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get("trial_type") not in (None, "", NA)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        notes.append(f"the ratings file {Path(path).name} could not be read ({exc}).")
        return []
    return rows


def _int(text: str | None) -> int | None:
    value = to_float(text)
    return int(value) if math.isfinite(value) else None


def _value(text: str | None) -> float | None:
    value = to_float(text)
    return value if math.isfinite(value) else None


def toward_goal(block: dict[str, Any]) -> float:
    """A block's change of the feedback signal from its baseline, signed so that > 0 is success.

    The change itself in an "increase" block, its opposite in a "decrease" block.
    """
    d = block.get("delta_feedback_signal", math.nan)
    d = float(d) if isinstance(d, (int, float)) else math.nan
    return -d if block.get("direction") == "decrease" else d


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson's r of paired values; NaN for fewer than :data:`MIN_PAIRS_FOR_R` pairs or a constant series."""
    if len(x) < MIN_PAIRS_FOR_R:
        return math.nan
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def ratings_summary(run: RecordedRun, summary: dict[str, Any]) -> dict[str, Any]:
    """The run's ratings, joined with regulation success per block.

    Returns
    -------
    dict
        ``questions``: question ids in order of first appearance, with
        ``texts`` (id -> question as shown) and ``block_questions`` (those
        asked after blocks); ``rows``: every rating
        (``question``, ``moment``, ``value`` or None, ``timed_out``,
        ``response_time`` (s) or None, ``volume_index``, ``block``,
        ``condition``, ``onset`` (s)); ``blocks``: one entry per regulation
        block of the summary (``block``, ``condition``, ``direction``,
        ``volumes``, ``mean_feedback_value``, ``delta_feedback_signal``,
        ``toward_goal`` (:func:`toward_goal`), ``success``) with ``ratings``:
        question -> the rating after that block (``value`` or None and
        ``timed_out``), absent when it was not rated; ``other``: the ratings
        not tied to a block (before or after the run, at a volume);
        ``per_question``: ``n``, ``answered``, ``timed_out``, ``mean``,
        ``median_rt`` and ``r``: Pearson's r between the rating after each
        block and the block's ``toward_goal`` (NaN for fewer than
        :data:`MIN_PAIRS_FOR_R` blocks).
    """
    rows = []
    for r in run.ratings:
        timed_out = r.get("timed_out") == "1"
        rows.append({
            "question": r.get("trial_type") or NA, "text": r.get("question_text") or NA,
            "moment": r.get("moment") or NA, "value": _value(r.get("value")), "timed_out": timed_out,
            "response_time": _value(r.get("response_time")), "volume_index": _int(r.get("volume_index")),
            "block": _int(r.get("block")), "condition": r.get("condition") or NA, "onset": _value(r.get("onset")),
            "scale": (_value(r.get("scale_low")), _value(r.get("scale_high"))),
        })
    questions = list(dict.fromkeys(r["question"] for r in rows))
    texts = {q: next(r["text"] for r in rows if r["question"] == q) for q in questions}
    after_block: dict[tuple[int, str], dict[str, Any]] = {}
    for r in rows:
        if r["moment"] == "after_block" and r["block"] is not None:
            after_block[(r["block"], r["question"])] = r
    blocks = []
    for b in summary.get("blocks", []):
        entry = {k: b.get(k) for k in ("block", "condition", "direction", "volumes", "mean_feedback_value",
                                       "delta_feedback_signal", "success")}
        entry["direction"] = entry["direction"] or "increase"
        entry["toward_goal"] = toward_goal(b)
        entry["ratings"] = {q: {"value": after_block[(b["block"], q)]["value"],
                                "timed_out": after_block[(b["block"], q)]["timed_out"]}
                            for q in questions if (b["block"], q) in after_block}
        blocks.append(entry)
    per_question = {}
    for q in questions:
        mine = [r for r in rows if r["question"] == q]
        values = [r["value"] for r in mine if r["value"] is not None]
        rts = [r["response_time"] for r in mine if r["response_time"] is not None]
        pairs = [(b["ratings"][q]["value"], b["toward_goal"]) for b in blocks
                 if q in b["ratings"] and b["ratings"][q]["value"] is not None and math.isfinite(b["toward_goal"])]
        per_question[q] = {
            "n": len(mine), "answered": len(values), "timed_out": sum(r["timed_out"] for r in mine),
            "mean": float(np.mean(values)) if values else math.nan,
            "median_rt": float(np.median(rts)) if rts else math.nan,
            "r": pearson([p[1] for p in pairs], [p[0] for p in pairs]), "n_pairs": len(pairs),
        }
    return {
        "questions": questions, "texts": texts, "rows": rows, "blocks": blocks,
        "block_questions": [q for q in questions if any(k[1] == q for k in after_block)],
        "other": [r for r in rows if r["moment"] != "after_block"], "per_question": per_question,
    }


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def figure_ratings(run: RecordedRun, summary: dict[str, Any], path: Path) -> Path | None:
    """Ratings after each regulation block against the block's regulation success; None without such ratings.

    Left: each question's rating per block (filled markers: successful
    blocks, open: unsuccessful, a cross at the bottom: no answer). Right:
    the rating against the block's change of the feedback signal toward the
    goal (:func:`toward_goal`), with Pearson's r per question.
    """
    rs = ratings_summary(run, summary)
    rated = [b for b in rs["blocks"] if b["ratings"]]
    if not rated:
        return None
    units = str(run.setting("feedback", "signal", "psc"))
    fig = _new_figure(11, 4.2)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    lows = [r["scale"][0] for r in rs["rows"] if r["scale"][0] is not None]
    highs = [r["scale"][1] for r in rs["rows"] if r["scale"][1] is not None]
    lo, hi = (min(lows), max(highs)) if lows and highs else (0.0, 100.0)
    for k, q in enumerate(rs["questions"]):
        colour, marker = f"C{k % 10}", MARKERS[k % len(MARKERS)]
        xs, ys, fills, missing = [], [], [], []
        for b in rated:
            got = b["ratings"].get(q)
            if got is None:
                continue
            if got["value"] is None:
                missing.append(b["block"] + 1)
                continue
            xs.append(b["block"] + 1)
            ys.append(got["value"])
            fills.append(colour if b["success"] else "none")
        if not xs and not missing:
            continue
        left.plot(xs, ys, color=colour, lw=1.0, alpha=0.6)
        left.scatter(xs, ys, facecolors=fills, edgecolors=colour, marker=marker, s=50, zorder=3, label=q)
        if missing:
            left.scatter(missing, [lo] * len(missing), color=colour, marker="x", s=40, zorder=3,
                         label=f"{q}: no answer")
        pairs = [(b["toward_goal"], b["ratings"][q]["value"], b["success"]) for b in rated
                 if q in b["ratings"] and b["ratings"][q]["value"] is not None and math.isfinite(b["toward_goal"])]
        if pairs:
            r = rs["per_question"][q]["r"]
            right.scatter([p[0] for p in pairs], [p[1] for p in pairs], marker=marker, s=50, zorder=3,
                          edgecolors=colour, facecolors=[colour if p[2] else "none" for p in pairs],
                          label=f"{q} (r = {r:.2f})" if math.isfinite(r) else q)
    pad = 0.05 * (hi - lo)
    for ax in (left, right):
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel("rating")
        ax.grid(alpha=0.3)
    left.set_xlabel("regulation block (protocol block number, from 1)")
    left.set_xticks(sorted({b["block"] + 1 for b in rated}))
    left.set_title("Rating after each block (filled: successful block)", fontsize=10)
    right.axvline(0, color="0.3", lw=0.8)
    right.set_xlabel(f"Δ feedback signal toward the goal ({units}; > 0: success)")
    right.set_title("Rating vs regulation success of the block", fontsize=10)
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, framealpha=0.8, loc="best")
    fig.savefig(path)
    return path
