"""Whole-brain incremental GLM and the operator's preview of the latest volume.

Every brain voxel's realigned signal enters the same design as the ROIs (only
the brain-mask voxels are resampled), so betas and a t-map of the regulation
contrast are available after every volume. :func:`preview_body` cuts three
orthogonal slices through the feedback ROI for the console: the realigned
volume, the t-map and the ROI outlines, small enough for one message per TR.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .design import Design, DesignRows
from .glm import IncrementalGLM
from rtnf.scanner.volume import Grid

PLANES = ("sagittal", "coronal", "axial")
# Fewest residual degrees of freedom a t-map is shown with.
MIN_DOF = 10


class WholeBrainModel:
    """Incremental GLM of every brain voxel, with a t-map of one contrast.

    Parameters
    ----------
    design : Design
        The run's design (motion rows are filled in this model's own copy).
    brain_indices : ndarray of int
        Flat indices of the brain-mask voxels on the functional grid.
    grid : Grid
        The functional grid.
    contrast_column : int
        Design column of the regulation regressor (the contrast is +1 on it).
    """

    def __init__(
        self, design: Design, brain_indices: np.ndarray, grid: Grid, contrast_column: int,
        tr_s: float = 2.0, drift_cutoff_s: float = 128.0,
    ) -> None:
        self.design = design
        self._rows = DesignRows(design)
        self.tr_s = tr_s
        self.drift_cutoff_s = drift_cutoff_s
        self.brain_indices = np.asarray(brain_indices)
        self.grid = grid
        self.contrast_column = contrast_column
        self.glm = IncrementalGLM(design.n_regressors, self.brain_indices.size)
        self.n_columns = 0  # size of the latest t-map's model (0: no t-map yet)
        self.t_map: np.ndarray | None = None  # flat over brain voxels, latest
        self.effect: np.ndarray | None = None

    def update(self, index: int, values: np.ndarray, motion: np.ndarray | None = None) -> None:
        """Add volume ``index``'s brain-voxel values; refresh the t-map of the largest trustworthy model.

        ``motion``: this volume's motion regressors, required when the design has motion columns.
        """
        self.add(index, values, motion)
        self.refresh(index)

    def add(self, index: int, values: np.ndarray, motion: np.ndarray | None = None) -> None:
        """Add volume ``index``'s brain-voxel values to the model (the t-map waits for :meth:`refresh`)."""
        self.glm.update(self._rows.row(index, motion), values)

    def refresh(self, index: int) -> None:
        """Recompute the t-map of the largest trustworthy model after kept volume ``index``."""
        n_columns = self.model_size(index)
        self.n_columns = n_columns
        if n_columns > self.contrast_column:
            c = np.zeros(n_columns)
            c[self.contrast_column] = 1.0
            self.effect, self.t_map = self.glm.contrast(c, n_columns)

    def model_size(self, index: int) -> int:
        """Number of leading design columns of the t-map's model after kept volume ``index`` (0 = none).

        An ordinary least-squares model (a t-map needs one): task regressors
        and the constant; the motion regressors once estimable; then as many
        cosine drift terms as the elapsed time resolves (SPM's rule,
        floor(2 * elapsed / cutoff)), fewer while they are too collinear to
        estimate. Each model must also leave at least as many residual
        degrees of freedom as it has columns (and :data:`MIN_DOF`), so that
        a run with most volumes censored never shows the huge t values of a
        near-saturated fit: terms are dropped, down to none.
        """
        return self._size(index, lambda q: self.glm.n_obs - q >= max(MIN_DOF, q) and self.glm.identifiable(q))

    def trust_note(self, index: int) -> str | None:
        """Why the t-map's model is smaller than the run so far would allow, or None.

        Only what censored or missing volumes cost is reported (the model the
        same run would have had with every volume so far in it): terms the
        early run cannot carry yet are not a lack of trust.
        """
        seen = index + 1
        if self.glm.n_obs == seen or not np.any(self.design.matrix[:seen, : self.design.n_core - 1]):
            return None  # nothing left out, or no task yet: no t-map is due
        wanted = self._size(index, lambda q: seen - q >= max(MIN_DOF, q))
        if self.n_columns >= wanted:
            return None
        if self.n_columns == 0:
            return (f"whole-brain t-map withheld: {self.glm.n_obs} volumes in the model cannot carry its "
                    f"{wanted} regressors with at least {MIN_DOF} residual degrees of freedom")
        return (f"whole-brain t-map from a reduced model ({self.n_columns} of {wanted} regressors: motion or drift "
                f"terms dropped): only {self.glm.n_obs} volumes in the model")

    def _size(self, index: int, usable) -> int:
        design = self.design

        n_core = design.n_core
        if not usable(n_core):
            return 0
        q = n_core + design.online_columns.size
        if design.online_columns.size and not usable(q):
            return n_core
        elapsed_s = (index + 1) * self.tr_s
        q_max = q + min(design.drift_columns.size, int(2 * elapsed_s / self.drift_cutoff_s))
        while q_max > q and not usable(q_max):
            q_max -= 1
        return q_max

    def t_volume(self) -> np.ndarray:
        """The latest t-map as a volume (NaN outside the brain or before the first t-map)."""
        out = np.full(int(np.prod(self.grid.shape)), np.nan, dtype=np.float32)
        if self.t_map is not None:
            out[self.brain_indices] = self.t_map
        return out.reshape(self.grid.shape)


def slice_indices(grid: Grid, center_ijk: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Flat voxel indices of the three planes through ``center_ijk``, each shaped as its 2D image."""
    nx, ny, nz = grid.shape
    i, j, k = center_ijk
    flat = np.arange(nx * ny * nz).reshape(grid.shape)
    return {"sagittal": flat[i, :, :], "coronal": flat[:, j, :], "axial": flat[:, :, k]}


def preview_body(
    index: int,
    planes: dict[str, np.ndarray],
    image: dict[str, np.ndarray],
    t_volume: np.ndarray | None,
    roi_masks: dict[str, np.ndarray],
    scale: float,
    grid: Grid | None = None,
) -> dict[str, Any]:
    """The ``preview`` message body: per plane an 8-bit image, the t-map (0.1 precision) and ROI outlines.

    Arrays are lists of rows in voxel order (first axis = rows); ``axcodes``
    (nibabel's orientation of the voxel axes, e.g. ["L", "P", "S"]) and
    ``voxel_mm`` let the console orient and scale them.
    """
    body: dict[str, Any] = {"index": index, "planes": {}}
    if grid is not None:
        import nibabel as nib

        body["axcodes"] = list(nib.aff2axcodes(grid.affine))
        body["voxel_mm"] = [round(float(v), 4) for v in np.sqrt(np.sum(grid.affine[:3, :3] ** 2, axis=0))]
    for name, idx in planes.items():
        img = np.clip(np.nan_to_num(image[name]) / scale * 255.0, 0, 255).astype(np.uint8)
        plane: dict[str, Any] = {"shape": list(idx.shape), "image": img.tolist()}
        if t_volume is not None:
            t = np.round(t_volume.reshape(-1)[idx].astype(np.float64), 1)
            plane["tmap"] = [[None if v != v else v for v in row] for row in t.tolist()]  # NaN -> null
        plane["rois"] = {
            roi: np.asarray(mask.reshape(-1)[idx], dtype=np.uint8).tolist() for roi, mask in roi_masks.items()
        }
        body["planes"][name] = plane
    return body
