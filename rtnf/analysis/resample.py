"""Sampling an image onto another voxel grid through an affine map (ROI masks, weight maps, atlases).

Used by the ROI definitions of ``rtnf roi`` (:mod:`rtnf.apps.roidef`) and by the
pattern-expression signal (:mod:`rtnf.analysis.signals.pattern`), which brings an MNI-space
weight map onto the run's grid at the first volume. ``scipy.ndimage`` rather than nilearn's
``resample_img``: scipy is already loaded by the pipeline, nilearn's import costs seconds.
"""

from __future__ import annotations

import numpy as np

from rtnf.scanner.volume import Grid


def resample_to_grid(data: np.ndarray, affine: np.ndarray, grid: Grid, order: int,
                     world_to_src: np.ndarray | None = None) -> np.ndarray:
    """Sample ``data`` (voxel -> world ``affine``) at the grid's voxel centres (zero outside).

    Parameters
    ----------
    data : ndarray, shape (i, j, k)
        The source image.
    affine : ndarray, shape (4, 4)
        Source voxel -> source world (mm).
    grid : Grid
        The target grid (its affine: voxel -> world mm).
    order : int
        Spline order: 0 nearest neighbour (the source's dtype is kept), 1 trilinear, 3 cubic
        (float32).
    world_to_src : ndarray, shape (4, 4), optional
        Maps the grid's world mm to the source's world mm first (a registration); default identity.

    Returns
    -------
    ndarray, shape ``grid.shape``
        The sampled values; 0 beyond half a source voxel outside the source.
    """
    from scipy.ndimage import affine_transform

    m = np.linalg.inv(affine) @ (np.eye(4) if world_to_src is None else world_to_src) @ grid.affine
    src = np.asarray(data, dtype=np.float32 if order > 0 else data.dtype)
    # 'grid-constant': a grid voxel whose centre lies within half a source voxel of the
    # source's edge still takes the edge voxel's value (nearest) or a partial-volume
    # blend with the zero outside (linear); farther out it is 0.
    return affine_transform(src, m, output_shape=grid.shape, order=order, mode="grid-constant", cval=0,
                            prefilter=False)
