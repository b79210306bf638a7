"""One acquired volume, whatever file format it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape and the voxel-to-world affine.

    The affine maps voxel indices to scanner RAS millimetres (NIfTI convention).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def same_as(self, other: "Grid", atol_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and affines within ``atol_mm``."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm))


@dataclass(frozen=True)
class Volume:
    """A decoded volume.

    Attributes
    ----------
    data : ndarray, shape (nx, ny, nz), float32
        Voxel values with the file's scaling applied.
    affine : ndarray, shape (4, 4)
        Voxel indices to scanner RAS mm.
    t_acquired : float or None
        Acquisition start (UNIX seconds) when the file records it.
    path : Path
        The file it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    t_acquired: float | None
    path: Path

    @property
    def grid(self) -> Grid:
        """The volume's voxel grid."""
        return Grid(tuple(self.data.shape[:3]), self.affine)
