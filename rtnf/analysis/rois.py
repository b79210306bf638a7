"""Regions of interest on the functional grid.

Each ROI follows the masker pattern: parameters are stored at construction,
:meth:`fit` places the ROI on a voxel grid (checking that it lies in the field
of view) and :meth:`transform` returns the ROI's mean signal of a volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtnf.scanner.volume import Grid

if TYPE_CHECKING:
    from rtnf.config import RoiConfig


class RoiError(ValueError):
    """An ROI that cannot be placed on the functional grid."""


def load_grid(path: str | Path) -> Grid:
    """Shape and affine of a NIfTI image (its data is not read)."""
    import nibabel as nib

    img = nib.load(path)
    return Grid(tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64))


def voxel_world_coords(grid: Grid) -> np.ndarray:
    """World coordinates (mm) of every voxel centre, shape (n_voxels, 3), C order."""
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    return (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]).T


class _Roi:
    name: str
    indices_: np.ndarray  # flat voxel indices into the volume (C order)

    def transform(self, data: np.ndarray) -> float:
        """Mean of the ROI's voxels in one volume.

        Parameters
        ----------
        data : ndarray, shape (nx, ny, nz)
            A volume on the grid given to :meth:`fit`.
        """
        return float(data.reshape(-1)[self.indices_].mean(dtype=np.float64))

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the fitted ROI."""
        return int(self.indices_.size)

    def mask(self, grid: Grid) -> np.ndarray:
        """The fitted ROI as a boolean volume."""
        out = np.zeros(int(np.prod(grid.shape)), dtype=bool)
        out[self.indices_] = True
        return out.reshape(grid.shape)


class SphereROI(_Roi):
    """Voxels whose centres lie within ``radius_mm`` of a world coordinate.

    Parameters
    ----------
    name : str
        ROI name (used in column names and messages).
    center_mm : sequence of 3 float
        Centre in scanner RAS millimetres.
    radius_mm : float
        Radius in millimetres.
    """

    def __init__(self, name: str, center_mm: tuple[float, float, float], radius_mm: float) -> None:
        self.name = name
        self.center_mm = center_mm
        self.radius_mm = radius_mm

    def fit(self, grid: Grid) -> "SphereROI":
        """Find the sphere's voxels on ``grid``.

        Raises
        ------
        RoiError
            If the centre lies outside the field of view or no voxel centre
            falls within the radius.
        """
        center = np.asarray(self.center_mm, dtype=np.float64)
        if center.shape != (3,) or self.radius_mm <= 0:
            raise RoiError(
                f"rois.{self.name}: center_mm must be [x, y, z] and radius_mm > 0, got "
                f"{self.center_mm!r} and {self.radius_mm!r}"
            )
        ijk = np.linalg.solve(grid.affine, np.append(center, 1.0))[:3]
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(grid.shape) - 0.5):
            raise RoiError(
                f"invalid value for 'rois.{self.name}.center_mm': {list(self.center_mm)} lies outside the "
                f"field of view ({_fov_text(grid)}). Allowed: a point inside the functional volume."
            )
        dist2 = np.sum((voxel_world_coords(grid) - center) ** 2, axis=1)
        self.indices_ = np.flatnonzero(dist2 <= self.radius_mm**2)
        if self.indices_.size == 0:
            raise RoiError(
                f"invalid value for 'rois.{self.name}.radius_mm': {self.radius_mm} mm holds no voxel centre "
                f"of the functional grid (voxel size {_voxel_sizes(grid)} mm). Allowed: a larger radius."
            )
        return self


class MaskROI(_Roi):
    """Voxels of a NIfTI mask in any space, resampled to the functional grid.

    Parameters
    ----------
    name : str
        ROI name.
    path : Path
        NIfTI image; voxels above ``threshold`` after nearest-neighbour
        resampling belong to the ROI.
    threshold : float
        Inclusion threshold (default 0.5).
    """

    def __init__(self, name: str, path: Path, threshold: float = 0.5) -> None:
        self.name = name
        self.path = Path(path)
        self.threshold = threshold

    def fit(self, grid: Grid) -> "MaskROI":
        """Resample the mask onto ``grid``.

        Raises
        ------
        RoiError
            If the file cannot be read or no voxel of the mask falls in the
            functional field of view.
        """
        import nibabel as nib
        from nilearn.image import resample_img

        try:
            img = nib.load(self.path)
        except Exception as exc:  # nibabel raises several types for foreign files
            raise RoiError(f"invalid value for 'rois.{self.name}.mask': cannot read {self.path} ({exc})") from exc
        data = np.asanyarray(img.dataobj)
        if data.ndim > 3:
            data = data.reshape(data.shape[:3] + (-1,))[..., 0]
        src = nib.Nifti1Image((data > self.threshold).astype(np.uint8), img.affine)
        resampled = resample_img(
            src,
            target_affine=grid.affine,
            target_shape=grid.shape,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
        self.indices_ = np.flatnonzero(np.asarray(resampled.dataobj).reshape(-1) > 0)
        if self.indices_.size == 0:
            raise RoiError(
                f"invalid value for 'rois.{self.name}.mask': {self.path} has no voxel inside the field of "
                f"view ({_fov_text(grid)}). Allowed: a mask that overlaps the functional volume."
            )
        return self


def make_roi(name: str, cfg: "RoiConfig") -> SphereROI | MaskROI:
    """Build the ROI a config entry describes (not yet fitted)."""
    if cfg.mask is not None:
        return MaskROI(name, cfg.mask)
    return SphereROI(name, tuple(cfg.center_mm), cfg.radius_mm)


def _voxel_sizes(grid: Grid) -> str:
    sizes = np.sqrt(np.sum(grid.affine[:3, :3] ** 2, axis=0))
    return "x".join(f"{s:g}" for s in np.round(sizes, 2))


def _fov_text(grid: Grid) -> str:
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in grid.shape], indexing="ij")).reshape(3, -1)
    world = grid.affine[:3, :3] @ corners + grid.affine[:3, 3:4]
    lo, hi = world.min(axis=1), world.max(axis=1)
    return ", ".join(f"{ax} {a:.1f} to {b:.1f} mm" for ax, a, b in zip("xyz", lo, hi))
