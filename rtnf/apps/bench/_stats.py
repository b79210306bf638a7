"""Shared helpers for benchmark stages: percentiles, memory, text tables."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, 95th and 99th percentile, min and max of durations given in seconds, in milliseconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    return {
        "n": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    """Durations (s) of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones (perf_counter)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table; floats with two decimals (scientific below 0.01)."""
    rows = list(rows)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.1e}" if v != 0 and abs(v) < 0.01 else f"{v:.2f}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
