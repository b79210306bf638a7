"""A noise-free EPI-like head built from nilearn's packaged MNI152 templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Phantom", "make_phantom", "default_affine", "GRID_CENTER_MM", "voxel_world_coords"]

#: World position (MNI mm) of the grid's central voxel: low enough that the
#: anterior cingulate (0, 30, 15) and both insulas (+/-37, 1, -1) sit well inside
#: a 64 x 64 x 36 grid of 3 mm voxels.
GRID_CENTER_MM = (0.0, -20.0, 10.0)

#: EPI-like T2* weights: CSF brightest, then grey matter, then white matter.
CSF_LEVEL, GM_LEVEL, WM_LEVEL, BACKGROUND_LEVEL = 1000.0, 800.0, 600.0, 20.0


@dataclass(frozen=True)
class Phantom:
    """Noise-free baseline image on the acquisition grid.

    Attributes
    ----------
    data : np.ndarray of float32
        Baseline intensity (arbitrary units, brain about 600-1000, background 20).
    affine : np.ndarray, shape (4, 4)
        Voxel-to-scanner-RAS-mm affine.
    brain_mask : np.ndarray of bool
        Brain voxels.
    gm : np.ndarray of float32
        Grey-matter probability in [0, 1].
    csf : np.ndarray of float32 or None
        CSF fraction in [0, 1] (where physiological noise is strongest), None when unknown.
    """

    data: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray
    gm: np.ndarray
    csf: np.ndarray | None = None


def default_affine(shape: Sequence[int], voxel_mm: float) -> np.ndarray:
    """Diagonal axial RAS affine whose voxel ``shape // 2`` sits at :data:`GRID_CENTER_MM`.

    Centring on an integer voxel (rather than between voxels) keeps x = 0 on a
    voxel centre, so midline structures are not split between two columns.
    """
    aff = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    aff[:3, 3] = np.asarray(GRID_CENTER_MM) - voxel_mm * (np.asarray(shape) // 2)
    return aff


def voxel_world_coords(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, shape ``(*shape, 3)``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _resample(src: np.ndarray, src_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Trilinear resampling of a template onto the target grid (zero outside)."""
    from scipy.ndimage import affine_transform

    # target voxel -> world -> source voxel, as one homogeneous matrix
    m = np.linalg.inv(src_affine) @ affine
    return affine_transform(src, m, output_shape=tuple(shape), order=1, mode="constant", cval=0.0)


def make_phantom(
    shape: Sequence[int] = (64, 64, 36),
    voxel_mm: float = 3.0,
    affine: np.ndarray | None = None,
) -> Phantom:
    """Build an EPI-like baseline head on the requested grid.

    Grey matter, white matter and brain mask come from nilearn's packaged
    MNI152 templates (2 mm; loaded from the package, no network), resampled
    trilinearly onto the grid. CSF is the brain mask minus GM minus WM.
    Intensity = 1000 * csf + 800 * gm + 600 * wm inside the brain, 20 outside.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid shape (i, j, k).
    voxel_mm : float
        Isotropic voxel size in millimeters (ignored if ``affine`` is given).
    affine : np.ndarray, optional
        4x4 voxel-to-RAS-mm affine; default :func:`default_affine`.

    Returns
    -------
    Phantom
    """
    from nilearn import datasets

    shape = tuple(int(s) for s in shape)
    if affine is None:
        affine = default_affine(shape, voxel_mm)
    affine = np.asarray(affine, dtype=float)

    imgs = {
        "gm": datasets.load_mni152_gm_template(resolution=2),
        "wm": datasets.load_mni152_wm_template(resolution=2),
        "mask": datasets.load_mni152_brain_mask(resolution=2),
    }
    maps = {
        k: np.clip(_resample(np.asarray(img.dataobj, dtype=np.float32), img.affine, shape, affine), 0, 1)
        for k, img in imgs.items()
    }
    mask = maps["mask"] > 0.5
    gm = np.where(mask, maps["gm"], 0.0)
    wm = np.where(mask, maps["wm"], 0.0)
    # Probabilities can overlap after interpolation; CSF takes what is left.
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    data = np.where(mask, CSF_LEVEL * csf + GM_LEVEL * gm + WM_LEVEL * wm, BACKGROUND_LEVEL)
    return Phantom(
        data=data.astype(np.float32),
        affine=affine,
        brain_mask=mask,
        gm=gm.astype(np.float32),
        csf=csf.astype(np.float32),
    )
