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
    slice_times_s : tuple of float or None
        Acquisition time of each slice (s, relative to the volume's acquisition
        start), one per index along ``slice_axis``, when the header records it
        (Siemens ``MosaicRefAcqTimes``, enhanced DICOM frame times, a BIDS
        sidecar's ``SliceTiming``); None when unknown.
    slice_axis : int
        The array axis the slices are stacked along (2 for every DICOM reader;
        a NIfTI header's ``slice_dim`` when set).
    echoes : ndarray, shape (n_echoes, nx, ny, nz), float32, or None
        Every echo of a multi-echo volume, in echo order (None for a
        single-echo volume). ``data`` is then their plain mean until
        :class:`rtnf.analysis.multiecho.EchoCombiner` replaces it with the
        T2*-weighted combination.
    echo_times_ms : tuple of float or None
        Echo time of each echo (ms): all of them for a multi-echo volume, the
        file's one for a single echo when its header records it, else None.
    """

    data: np.ndarray
    affine: np.ndarray
    t_acquired: float | None
    path: Path
    slice_times_s: tuple[float, ...] | None = None
    slice_axis: int = 2
    echoes: np.ndarray | None = None
    echo_times_ms: tuple[float, ...] | None = None

    @property
    def grid(self) -> Grid:
        """The volume's voxel grid."""
        return Grid(tuple(self.data.shape[:3]), self.affine)
