"""A functional localizer: a t-map of a localizer run, thresholded or its top voxels, inside a search mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtnf.scanner.volume import Grid
from ._common import RoiDefError, RoiDefinition, _load_image, _resample
from .regions import mask_from_image


# --------------------------------------------------------------------------- functional localizer


def blocks_from_events(
    events: str | Path, *, trial_types: Sequence[str] | None = None, merge_gap_s: float = 4.0,
    start_s: float = 0.0, stop_s: float | None = None,
) -> list[tuple[float, float]]:
    """Blocks (onset_s, duration_s) from a BIDS events file.

    Events of the chosen ``trial_types`` (all by default) closer than
    ``merge_gap_s`` are merged into one block; blocks are clipped to
    ``[start_s, stop_s)`` and returned relative to ``start_s``.
    """
    import pandas as pd

    ev = pd.read_csv(events, sep="\t")
    if trial_types is not None and "trial_type" in ev:
        ev = ev[ev["trial_type"].isin(list(trial_types))]
    spans = sorted(zip(ev["onset"].astype(float), (ev["onset"] + ev["duration"]).astype(float)))
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a - merged[-1][1] <= merge_gap_s:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    stop = np.inf if stop_s is None else stop_s
    out = []
    for a, b in merged:
        a, b = max(a, start_s), min(b, stop)
        if b > a:
            out.append((a - start_s, b - a))
    return out


def localizer_tmap(
    data: np.ndarray, tr_s: float, blocks: Sequence[tuple[float, float]], *, hrf: str = "spm",
    drift_cutoff_s: float = 128.0, mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Any]:
    """t-map of "task blocks vs rest" from a localizer series, with rtnf's GLM.

    The design is :func:`rtnf.analysis.design.make_design` (blocks convolved with the
    HRF, constant, cosine drifts up to ``drift_cutoff_s``), fitted voxel-wise
    by :class:`rtnf.analysis.glm.IncrementalGLM`, volume by volume as the run would.

    Parameters
    ----------
    data : ndarray, shape (nx, ny, nz, n_volumes)
        The series (time zero = first volume given).
    tr_s : float
        Repetition time in seconds.
    blocks : sequence of (onset_s, duration_s)
        Task blocks (see :func:`blocks_from_events`).
    mask : ndarray of bool, optional
        Voxels to fit (default: nilearn's EPI brain mask of the mean image).

    Returns
    -------
    t : ndarray, shape (nx, ny, nz)
        t of the task regressor (NaN outside the mask).
    design : rtnf.analysis.design.Design
    """
    from rtnf.analysis.design import make_design
    from rtnf.analysis.glm import IncrementalGLM
    from rtnf.analysis.protocol import Block, Protocol

    data = np.asarray(data)
    n = data.shape[-1]
    protocol = Protocol(
        blocks=tuple(Block("task", float(a), float(d), f"blocks[{i}]") for i, (a, d) in enumerate(blocks)),
        baseline="rest", conditions=("rest", "task"), tr_s=float(tr_s), n_volumes=n)
    design = make_design(protocol, hrf=hrf, drift_cutoff_s=drift_cutoff_s)
    if mask is None:
        mask = epi_mask(data.mean(axis=-1))
    y = data[mask]  # (V, n)
    glm = IncrementalGLM(design.n_regressors, int(mask.sum()))
    for i in range(n):
        glm.update(design.matrix[i], y[:, i])
    c = np.zeros(design.n_regressors)
    c[design.names.index("task")] = 1.0
    _, t = glm.contrast(c)
    out = np.full(data.shape[:3], np.nan, dtype=np.float32)
    out[mask] = t
    return out, design


def epi_mask(mean: np.ndarray) -> np.ndarray:
    """Brain mask of a mean EPI (nilearn's ``compute_epi_mask``), boolean."""
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    return np.asarray(compute_epi_mask(nib.Nifti1Image(np.asarray(mean, dtype=np.float32), np.eye(4))).dataobj) > 0


def localizer_roi(
    tmap: str | Path | tuple[np.ndarray, np.ndarray], grid: Grid, *, threshold: float | None = None,
    top_k: int | None = None, search_mask: str | Path | tuple[np.ndarray, np.ndarray] | None = None,
    name: str = "roi",
) -> RoiDefinition:
    """Voxels of a localizer t-map: those ``>= threshold``, or the ``top_k`` largest, inside a search mask.

    Parameters
    ----------
    tmap : path or (data, affine)
        t-map in any space; resampled (linear) to the grid unless it is on it already.
    threshold, top_k
        Exactly one of them.
    search_mask : path or (data, affine), optional
        Only voxels inside (> 0.5 after nearest resampling) are candidates.
    """
    if (threshold is None) == (top_k is None):
        raise RoiDefError("--threshold", "give exactly one of --threshold T and --top-k K")
    data, affine = _load_image(tmap, "--tmap") if isinstance(tmap, (str, Path)) else tmap
    data = np.asarray(data, dtype=np.float32)
    if data.shape[:3] == grid.shape and np.allclose(affine, grid.affine, atol=1e-3):
        t = data.copy()
    else:
        finite = np.isfinite(data)
        t = _resample(np.where(finite, data, 0), affine, grid, order=1)
        t[_resample(finite.astype(np.float32), affine, grid, order=1) < 0.999] = np.nan
    candidates = np.isfinite(t)
    if search_mask is not None:
        sm = mask_from_image(search_mask, grid, name="search", min_coverage=0.0).mask
        candidates &= sm
    if not candidates.any():
        raise RoiDefError("--search-mask", "no voxel of the t-map lies inside the search mask. "
                                           "Allowed: a search mask that overlaps the t-map")
    tmax = float(np.nanmax(np.where(candidates, t, np.nan)))
    if top_k is not None:
        if top_k < 1:
            raise RoiDefError("--top-k", f"{top_k}. Allowed: an integer >= 1")
        flat = np.flatnonzero(candidates)
        if top_k > flat.size:
            raise RoiDefError("--top-k", f"{top_k} but the search mask holds only {flat.size} voxels with a t value")
        order = np.argsort(-t.reshape(-1)[flat], kind="stable")[:top_k]
        chosen = flat[order]
        if t.reshape(-1)[chosen].min() <= 0:
            raise RoiDefError("--top-k", f"{top_k} would include voxels with t <= 0 (only "
                                         f"{int(np.sum(t[candidates] > 0))} positive). Allowed: a smaller k")
        mask = np.zeros(t.size, dtype=bool)
        mask[chosen] = True
        mask = mask.reshape(grid.shape)
    else:
        mask = candidates & (t >= threshold)
        if not mask.any():
            raise RoiDefError("--threshold", f"{threshold:g} keeps no voxel (largest t in the search mask: "
                                             f"{tmax:.2f}). Allowed: a threshold below {tmax:.2f}")
    return RoiDefinition(name, "localizer", mask, grid, 1.0, {
        "threshold": threshold, "top_k": top_k, "t_min_in_roi": float(t[mask].min()), "t_max": tmax})
