"""The configured motion reference (``motion.reference``) on the functional grid.

Templates often lie on the functional world grid but are stored in another
voxel order: SPM and OpenNFT write LAS, converters flip or permute axes
relative to the scanner's real-time export. Such a reference is reoriented to
the functional grid's voxel order with nibabel's orientation tools (a
permutation and flips of the array: no resampling, no interpolation) and
accepted when its affine then equals the functional grid's within
:data:`ATOL_MM`. A reference on a truly different grid (another shape, voxel
size, axes or field of view) is refused with one :class:`~rtnf.config.ConfigError`
that names the key, the file and what differs.

:func:`check_motion_reference` reads only the header (``rtnf check``, and
``load_config`` when ``scanner.reference_volume`` gives the functional grid);
:func:`load_motion_reference` also reads the data (at the run's first volume).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rtnf.config import ConfigError
from rtnf.scanner.volume import Grid

log = logging.getLogger(__name__)

KEY = "motion.reference"
# Affine entries may differ by this much, in mm: the tolerance the volumes of one run are held to
# (Grid.same_as), far above the float32 rounding of headers written by SPM or converters.
ATOL_MM = 1e-3
ALLOWED = (
    "Allowed: \"first\" or a NIfTI on the functional grid "
    "(the same shape, voxel size and field of view, in any voxel order)."
)


def check_motion_reference(path: str | Path, functional: Grid | None, source: str | None = None) -> None:
    """Check a reference's header, and its grid against the functional grid when known.

    Parameters
    ----------
    path : str or Path
        The ``motion.reference`` NIfTI file.
    functional : Grid or None
        The functional grid (shape and voxel-to-RAS-mm affine), or None when
        it is not known yet: then only the header is checked.
    source : str, optional
        Where the functional grid comes from, for the message
        (e.g. ``"scanner.reference_volume /data/ref.nii"``).

    Raises
    ------
    ConfigError
        If the file is not one 3-D NIfTI volume, or lies on another grid.
    """
    grid = _header_grid(Path(path))
    if functional is not None:
        _to_functional_order(Path(path), grid, functional, source)


def load_motion_reference(path: str | Path, functional: Grid, source: str | None = None) -> np.ndarray:
    """The reference's voxel values in the functional grid's voxel order.

    Parameters
    ----------
    path : str or Path
        The ``motion.reference`` NIfTI file.
    functional : Grid
        The functional grid (the run's first volume).
    source : str, optional
        Where the functional grid comes from, for the message.

    Returns
    -------
    ndarray, shape ``functional.shape``, float32, C-contiguous
        Non-finite values (SPM writes NaN outside the brain) are set to 0,
        below any brain-mask threshold.

    Raises
    ------
    ConfigError
        If the file is not one readable 3-D NIfTI volume, or lies on another grid.
    """
    from nibabel.orientations import apply_orientation

    from rtnf.scanner.nifti import VolumeReadError, read_nifti

    path = Path(path)
    transform = _to_functional_order(path, _header_grid(path), functional, source)
    try:
        data = read_nifti(path).data
    except VolumeReadError as exc:
        raise ConfigError(f"invalid value for '{KEY}': {exc}. {ALLOWED}") from None
    data = np.ascontiguousarray(apply_orientation(data, transform), dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        log.info("%s: %d non-finite voxels set to 0", path.name, int(bad.sum()))
        data[bad] = 0.0
    return data


def _header_grid(path: Path) -> Grid:
    """Shape and affine of one 3-D NIfTI volume, from its header."""
    import nibabel as nib

    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises several types on foreign files; all mean the same here
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"invalid value for '{KEY}': {path} is not a readable NIfTI image ({reason}). {ALLOWED}"
        ) from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise ConfigError(f"invalid value for '{KEY}': {path} holds {shape[3]} volumes. {ALLOWED}")
    if len(shape) != 3:
        raise ConfigError(f"invalid value for '{KEY}': {path} is an image of shape {shape}. {ALLOWED}")
    return Grid(shape, affine)


def _to_functional_order(path: Path, grid: Grid, functional: Grid, source: str | None) -> np.ndarray:
    """The orientation transform (nibabel's ``ornt``) from the file's voxel order to the functional one.

    Raises
    ------
    ConfigError
        If, in the functional voxel order, the grid is not the functional grid.
    """
    from nibabel.orientations import inv_ornt_aff, io_orientation

    # The axes of the map from the file's voxels to the functional voxels, rather than of each
    # affine against RAS: for a reference on the functional grid that map is a signed permutation,
    # so no oblique acquisition (axes near 45 degrees to RAS) can make the axis choice ambiguous.
    transform = io_orientation(np.linalg.inv(functional.affine) @ grid.affine)
    if np.isnan(transform).any():  # a voxel axis of length 0 in the file's affine
        raise ConfigError(f"invalid value for '{KEY}': {path} has a degenerate affine {grid.affine.tolist()}. {ALLOWED}")
    shape = tuple(int(n) for n in np.asarray(grid.shape)[np.argsort(transform[:, 0])])
    reoriented = Grid(shape, grid.affine @ inv_ornt_aff(transform, grid.shape))
    if not reoriented.same_as(functional, atol_mm=ATOL_MM):
        where = f" of {source}" if source else ""
        raise ConfigError(
            f"invalid value for '{KEY}': {path} is not on the functional grid{where}: "
            f"{'; '.join(grid_differences(reoriented, functional))}. {ALLOWED}"
        )
    return transform


def grid_differences(grid: Grid, functional: Grid) -> list[str]:
    """What differs between two grids in the same voxel order, in words with units.

    Parameters
    ----------
    grid, functional : Grid
        Grids whose voxel axes point the same way (after reorientation).

    Returns
    -------
    list of str
        Shape, voxel size (mm), angle between the voxel axes (degrees), field
        of view size and shift of its centre (mm); the largest affine
        difference (mm) when none of these exceeds the tolerance.
    """
    out = []
    if grid.shape != functional.shape:
        out.append(f"shape {grid.shape} in the functional voxel order, expected {functional.shape}")
    size, size_f = _voxel_mm(grid), _voxel_mm(functional)
    if not np.allclose(size, size_f, atol=ATOL_MM):
        out.append(f"voxel size {_mm(size)} mm, expected {_mm(size_f)} mm")
    angle = _max_axis_angle_deg(grid, functional)
    if angle > 1e-3:
        out.append(f"axes rotated by {angle:.3g} degrees")
    fov, fov_f = size * np.asarray(grid.shape), size_f * np.asarray(functional.shape)
    if not np.allclose(fov, fov_f, atol=ATOL_MM):
        out.append(f"field of view {_mm(fov)} mm, expected {_mm(fov_f)} mm")
    shift = _centre_mm(grid) - _centre_mm(functional)
    if np.max(np.abs(shift)) > ATOL_MM:
        out.append(f"field of view shifted by ({', '.join(f'{v + 0.0:.3g}' for v in shift)}) mm")
    if not out:
        out.append(f"voxel-to-world affine differs by up to {np.max(np.abs(grid.affine - functional.affine)):.3g} mm")
    return out


def _voxel_mm(grid: Grid) -> np.ndarray:
    return np.sqrt(np.sum(grid.affine[:3, :3] ** 2, axis=0))


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _max_axis_angle_deg(grid: Grid, functional: Grid) -> float:
    """Largest angle between corresponding voxel axes, in degrees."""
    a = grid.affine[:3, :3] / _voxel_mm(grid)
    b = functional.affine[:3, :3] / _voxel_mm(functional)
    cos = np.clip(np.sum(a * b, axis=0), -1.0, 1.0)
    return float(np.degrees(np.max(np.arccos(cos))))


def _centre_mm(grid: Grid) -> np.ndarray:
    """World position (RAS mm) of the centre of the grid's field of view."""
    centre = (np.asarray(grid.shape, dtype=np.float64) - 1.0) / 2.0
    return grid.affine[:3, :3] @ centre + grid.affine[:3, 3]
