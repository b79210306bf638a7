"""Benchmark: whole-brain incremental GLM update plus t-map, per volume.

On one core, for brain masks of a 64x64x36 (3 mm) and a 104x104x72 (2 mm)
grid, with 20 regressors: the cost of one update plus one contrast t-map at
the start and at the end of a long run (it must not grow), next to refitting
a batch least-squares model on all volumes so far, and the accuracy against
``numpy.linalg.lstsq`` at the end.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ._stats import peak_memory_mb, summarize_ms, table

NAME = "glm"
HELP = "whole-brain incremental GLM update + t-map per volume (64x64x36 and 104x104x72 brain masks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtnf bench glm``."""
    parser.add_argument("--volumes", type=int, default=1000, help="run length (default 1000)")
    parser.add_argument("--regressors", type=int, default=20, help="design columns (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1: one core)")
    parser.add_argument("--grids", default="64x64x36@3,104x104x72@2", help="grids as WxHxD@mm, comma-separated")


def _brain_mask(shape: tuple[int, int, int], voxel_mm: float) -> np.ndarray:
    from scanner_sim.phantom import make_phantom

    return make_phantom(shape, voxel_mm).brain_mask


def _bench_grid(shape, voxel_mm, n_volumes, p, rng) -> dict[str, Any]:
    from rtnf.analysis.glm import IncrementalGLM

    mask = _brain_mask(shape, voxel_mm)
    v = int(mask.sum())
    X = np.column_stack([rng.normal(size=(n_volumes, p - 1)), np.ones(n_volumes)])
    beta = rng.normal(size=(p, v))
    glm = IncrementalGLM(p, v)
    c = np.zeros(p)
    c[0] = 1.0
    times = []
    keep = np.zeros((n_volumes, v), dtype=np.float32)  # data kept only for the accuracy check
    for t in range(n_volumes):
        y = X[t] @ beta + rng.normal(size=v)
        keep[t] = y
        t0 = time.perf_counter()
        glm.update(X[t], y)
        if t >= p:
            glm.contrast(c)
        times.append(time.perf_counter() - t0)
    first, last = times[p : p + 50], times[-50:]
    # accuracy at the end against lstsq on the same (float32-stored -> float64) data
    Y = keep.astype(np.float64)
    glm_check = IncrementalGLM(p, v)
    for t in range(n_volumes):
        glm_check.update(X[t], Y[t])
    ref, *_ = np.linalg.lstsq(X, Y, rcond=None)
    rel = float(np.linalg.norm(glm_check.coefficients() - ref) / np.linalg.norm(ref))
    t0 = time.perf_counter()
    np.linalg.lstsq(X[:100], Y[:100], rcond=None)
    batch_100 = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.linalg.lstsq(X, Y, rcond=None)
    batch_end = time.perf_counter() - t0
    all_stats = summarize_ms(times[p:])
    return {
        "grid": "x".join(map(str, shape)) + f"@{voxel_mm:g}mm",
        "voxels": v,
        "median_ms": all_stats["median_ms"],
        "p99_ms": all_stats["p99_ms"],
        "start_median_ms": summarize_ms(first)["median_ms"],
        "end_median_ms": summarize_ms(last)["median_ms"],
        "batch_refit_at_100_ms": batch_100 * 1000,
        f"batch_refit_at_{n_volumes}_ms": batch_end * 1000,
        "rel_error_vs_lstsq": rel,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the figures and a text report."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(args.threads):
        for spec in args.grids.split(","):
            dims, mm = spec.split("@")
            shape = tuple(int(n) for n in dims.split("x"))
            rows.append(_bench_grid(shape, float(mm), args.volumes, args.regressors, rng))
    cols = ["grid", "voxels", "median_ms", "p99_ms", "start_median_ms", "end_median_ms",
            "batch_refit_at_100_ms", f"batch_refit_at_{args.volumes}_ms", "rel_error_vs_lstsq"]
    text = (
        f"incremental GLM update + t-map per volume, {args.regressors} regressors, {args.volumes} volumes, "
        f"{args.threads} BLAS thread(s), brain-mask voxels, float64\n"
        + table(rows, cols).replace("rel_error_vs_lstsq", "rel_err")
        + f"\nratio batch refit at volume {args.volumes} / incremental update: "
        + ", ".join(f"{r['grid']} {r[f'batch_refit_at_{args.volumes}_ms'] / r['median_ms']:.0f}x" for r in rows)
        + f"\npeak memory {peak_memory_mb():.0f} MiB"
    )
    for r in rows:
        r["rel_error_vs_lstsq"] = float(r["rel_error_vs_lstsq"])
    return {"stage": NAME, "rows": rows, "peak_memory_mb": peak_memory_mb(), "text": text}
