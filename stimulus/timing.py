"""Receive-to-flip latency from the screen's flip log (no PsychoPy, no rtnf processing).

The flip log (``rtnf-screen --flip-log flips.csv``) has one row per flip. For
each feedback index, the first row that shows it carries the message's receive
time ``t_received`` and the flip time ``t_flip``; their difference is the
screen's share of the end-to-end latency (waiting for the next frame, drawing,
flipping). :func:`latency_summary` gives its median, 95th and 99th
percentiles, for the screen's exit report and for rtnf's benchmark.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


def read_flip_log(path: str | Path) -> list[dict[str, str]]:
    """Rows of a flip log CSV as dictionaries of strings."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def receive_to_flip_s(rows: Iterable[Mapping[str, str]]) -> list[float]:
    """Seconds from receiving each feedback message to the first flip that showed it.

    Parameters
    ----------
    rows : iterable of dict
        Flip log rows (see :data:`stimulus.cli.FLIP_LOG_COLUMNS`), in order.

    Returns
    -------
    list of float
        One latency per (run, index), in the order the indices were shown.
    """
    seen: set[tuple[str, str]] = set()
    out: list[float] = []
    for row in rows:
        index, t_received = row.get("index", ""), row.get("t_received", "")
        if not index or not t_received:
            continue
        key = (row.get("run_id", ""), index)
        if key in seen:
            continue
        seen.add(key)
        out.append(float(row["t_flip"]) - float(t_received))
    return out


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (NumPy's default) of sorted values."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    """``n``, median, p95, p99, min and max in milliseconds of durations in seconds."""
    if not samples_s:
        return {"n": 0}
    ms = sorted(s * 1000.0 for s in samples_s)
    return {
        "n": len(ms),
        "median_ms": _percentile(ms, 50),
        "p95_ms": _percentile(ms, 95),
        "p99_ms": _percentile(ms, 99),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def latency_summary(flip_log: str | Path | Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """Receive-to-flip latency and frame intervals from a flip log.

    Parameters
    ----------
    flip_log : path or iterable of rows
        The CSV written by ``rtnf-screen --flip-log``, or its rows.

    Returns
    -------
    dict
        ``receive_to_flip`` and ``frame_interval``, each with ``n``,
        ``median_ms``, ``p95_ms``, ``p99_ms``, ``min_ms``, ``max_ms``, and
        ``n_flips``. JSON-serialisable.
    """
    rows = read_flip_log(flip_log) if isinstance(flip_log, (str, Path)) else list(flip_log)
    t = [float(r["t_flip"]) for r in rows]
    return {
        "n_flips": len(rows),
        "receive_to_flip": summarize_ms(receive_to_flip_s(rows)),
        "frame_interval": summarize_ms([b - a for a, b in zip(t, t[1:])]),
    }


def write_summary(summary: Mapping[str, Any], path: str | Path) -> None:
    """Write ``summary`` as indented JSON."""
    Path(path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
