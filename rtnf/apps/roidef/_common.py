"""Shared pieces of ROI definition: the result, errors and geometry checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtnf.analysis.resample import resample_to_grid as _resample  # the roidef modules' name for it
from rtnf.scanner.volume import Grid


DEFAULT_MIN_COVERAGE = 0.5


class RoiDefError(ValueError):
    """A region that cannot be defined on the reference grid.

    Attributes
    ----------
    param : str
        The parameter (command-line option) the user should change.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid value for '{param}': {message}")
        self.param = param


# --------------------------------------------------------------------------- result


@dataclass
class RoiDefinition:
    """A region on the reference grid.

    Attributes
    ----------
    name : str
        ROI name (the ``[rois.<name>]`` key it is meant for).
    kind : str
        ``mask``, ``sphere``, ``atlas``, ``mni`` or ``localizer``.
    mask : ndarray of bool, shape grid.shape
        The region's voxels.
    grid : Grid
        The reference grid.
    coverage : float
        Fraction (0-1) of the region as defined in its own space that lies
        inside the reference field of view.
    details : dict
        Parameters and by-products (registration, t range, ...), for the report.
    """

    name: str
    kind: str
    mask: np.ndarray
    grid: Grid
    coverage: float = 1.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the region."""
        return int(np.count_nonzero(self.mask))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in cubic millimetres."""
        return float(abs(np.linalg.det(self.grid.affine[:3, :3])))

    @property
    def volume_mm3(self) -> float:
        """Volume of the region in cubic millimetres."""
        return self.n_voxels * self.voxel_volume_mm3

    @property
    def center_of_mass_mm(self) -> np.ndarray:
        """Centre of mass in scanner RAS millimetres, shape (3,)."""
        ijk = np.argwhere(self.mask).mean(axis=0)
        return self.grid.affine[:3, :3] @ ijk + self.grid.affine[:3, 3]

    def summary(self) -> str:
        """One line for the operator: voxels, volume, centre of mass, coverage."""
        com = ", ".join(f"{c:.1f}" for c in self.center_of_mass_mm)
        return (
            f"ROI '{self.name}' ({self.kind}): {self.n_voxels} voxels, {self.volume_mm3:.0f} mm^3, "
            f"centre of mass ({com}) mm [scanner RAS], {100 * self.coverage:.0f}% of the region inside the field of view"
        )


# --------------------------------------------------------------------------- geometry helpers


def _fov_text(grid: Grid) -> str:
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in grid.shape], indexing="ij")).reshape(3, -1)
    world = grid.affine[:3, :3] @ corners + grid.affine[:3, 3:4]
    lo, hi = world.min(axis=1), world.max(axis=1)
    return ", ".join(f"{ax} {a:.0f} to {b:.0f} mm" for ax, a, b in zip("xyz", lo, hi))


def _coverage(world_points: np.ndarray, grid: Grid) -> float:
    """Fraction of world points (n, 3) that fall inside the grid's field of view (voxel boxes)."""
    if len(world_points) == 0:
        return 0.0
    ijk = (np.linalg.inv(grid.affine) @ np.c_[world_points, np.ones(len(world_points))].T)[:3]
    inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(grid.shape)[:, None] - 0.5), axis=0)
    return float(inside.mean())


def _voxel_world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _check_not_empty(mask: np.ndarray, param: str, grid: Grid, what: str, allowed: str) -> None:
    if not mask.any():
        raise RoiDefError(param, f"{what} holds no voxel of the reference grid (field of view {_fov_text(grid)}). "
                                 f"Allowed: {allowed}.")


def _check_coverage(coverage: float, min_coverage: float, param: str, grid: Grid) -> None:
    if coverage < min_coverage:
        raise RoiDefError(
            param,
            f"only {100 * coverage:.0f}% of the region lies inside the field of view of the reference "
            f"({_fov_text(grid)}); at least {100 * min_coverage:.0f}% is required (--min-coverage). "
            "Allowed: a region inside the functional volume.",
        )


def _load_image(path: str | Path, param: str) -> tuple[np.ndarray, np.ndarray]:
    """3D data and affine of a NIfTI file (first volume of a 4D file)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise RoiDefError(param, f"file not found: {path}")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel's errors vary by file type
        raise RoiDefError(param, f"cannot read {path} as NIfTI ({exc})") from None
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    if data.ndim != 3:
        raise RoiDefError(param, f"{path} is not a 3D image (shape {data.shape})")
    return data, np.asarray(img.affine, dtype=np.float64)
