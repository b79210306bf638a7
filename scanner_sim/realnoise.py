"""Real series as background and noise: read a 4D NIfTI or a DICOM folder onto its own grid.

With ``noise_from`` (:class:`scanner_sim.spec.RunSpec`) a synthetic run's
volumes are the volumes of a real task-free run plus a known activation, so
the noise is exactly real and the activation exactly known. This module reads
such a series with nibabel and pydicom directly (``scanner_sim`` never imports
``rtnf``):

* 4D NIfTI: ``nibabel``; the array and the affine as stored (sform, else qform).
* DICOM folder: files grouped into volumes by :func:`scanner_sim.replay.load_source`
  (one series: ``series`` or the largest). A file per volume (Siemens mosaic,
  enhanced multi-frame) is decoded with ``nibabel.nicom.dicomwrappers``; a file
  per slice is decoded slice by slice and stacked in the order of the slices'
  positions along their normal.

Every array is in nibabel's voxel order with a voxel-to-RAS-mm affine
(DICOM's LPS patient coordinates turned to RAS), which is what the simulator's
writers take: a NIfTI or DICOM written from it carries the real geometry.
Values are the stored values after the DICOM rescale (float32).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["RealSeries", "RealSeriesError", "probe_series", "read_series", "epi_mask"]

#: DICOM patient coordinates are LPS; NIfTI world coordinates are RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class RealSeriesError(ValueError):
    """A real series cannot be used as noise; the message says why."""


@dataclass(frozen=True)
class RealSeries:
    """A real series' geometry and files (no voxel data).

    Attributes
    ----------
    path : Path
        The 4D NIfTI or the DICOM folder.
    kind : {"nifti4d", "dicom-volumes", "dicom-slices"}
        How the series is stored.
    series : int
        DICOM SeriesNumber (1 for a NIfTI).
    tr_s : float or None
        Repetition time in seconds from the headers (None when absent).
    shape : tuple of 3 int
        Grid of one volume.
    affine : np.ndarray, shape (4, 4)
        Voxel-to-RAS-mm affine.
    volumes : tuple of tuple of Path
        Files of each volume (the NIfTI once per volume).
    """

    path: Path
    kind: str
    series: int
    tr_s: float | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    volumes: tuple[tuple[Path, ...], ...]

    @property
    def n_volumes(self) -> int:
        """Number of volumes in the series."""
        return len(self.volumes)


# --------------------------------------------------------------------------- NIfTI
def _probe_nifti(path: Path) -> RealSeries:
    import nibabel as nib

    img = nib.load(path)
    if len(img.shape) != 4 or img.shape[3] < 1:
        raise RealSeriesError(f"'{path}' has shape {img.shape}; a 4D NIfTI is needed.")
    zooms = img.header.get_zooms()
    unit = img.header.get_xyzt_units()[1]
    t = float(zooms[3]) if len(zooms) > 3 else 0.0
    tr = t / 1000.0 if unit == "msec" else t / 1e6 if unit == "usec" else t
    return RealSeries(path, "nifti4d", 1, tr if tr > 0 else None, tuple(int(s) for s in img.shape[:3]),
                      np.asarray(img.affine, dtype=float), tuple((path,) for _ in range(img.shape[3])))


# --------------------------------------------------------------------------- DICOM
def _wrapper(path: Path):
    import pydicom

    with warnings.catch_warnings():
        # nibabel flags its DICOM readers as experimental (on import and use); the geometry is checked by tests
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

        return dicomwrappers.wrapper_from_data(pydicom.dcmread(path))


def _decode_volume_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data, RAS affine) of a one-file volume (mosaic, multi-frame)."""
    w = _wrapper(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        data = np.asarray(w.get_data(), dtype=np.float32)
        affine = _LPS_TO_RAS @ np.asarray(w.affine, dtype=float)
    if data.ndim != 3:
        raise RealSeriesError(f"'{path}' decodes to shape {data.shape}; one 3D volume per file is needed.")
    return data, affine


def _decode_slices(paths: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(data, RAS affine) of a volume stored one slice per file, stacked along the slice normal."""
    wrappers = [_wrapper(p) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # spatial order, whatever the acquisition (write) order was
        order = np.argsort([w.slice_indicator for w in wrappers], kind="stable")
        wrappers = [wrappers[i] for i in order]
        data = np.stack([np.asarray(w.get_data(), dtype=np.float32).reshape(w.image_shape[:2])
                         for w in wrappers], axis=2)
        affine = np.asarray(wrappers[0].affine, dtype=float).copy()
        if len(wrappers) > 1:
            last = np.asarray(wrappers[-1].affine, dtype=float)[:3, 3]
            # the step between slice positions, which may differ from SliceThickness (gaps)
            affine[:3, 2] = (last - affine[:3, 3]) / (len(wrappers) - 1)
    return data, _LPS_TO_RAS @ affine


def _probe_dicom(path: Path, series: int | None) -> RealSeries:
    import pydicom

    from .replay import ReplayError, load_source

    try:
        # tr_s given so a folder without RepetitionTime is still readable; the real TR is read below
        src = load_source(path, tr_s=1.0, series=series)
    except ReplayError as exc:
        raise RealSeriesError(str(exc)) from None
    first = src.volumes[0]
    ds = pydicom.dcmread(first[0], stop_before_pixels=True)
    tr_ms = float(ds.get("RepetitionTime", 0) or 0)
    kind = src.kind
    data, affine = _decode_slices(first) if kind == "dicom-slices" else _decode_volume_file(first[0])
    return RealSeries(path, kind, src.series, tr_ms / 1000.0 if tr_ms > 0 else None,
                      tuple(int(s) for s in data.shape), affine, src.volumes)


@functools.lru_cache(maxsize=8)
def _probe_cached(path: str, series: int | None, mtime_ns: int) -> RealSeries:
    p = Path(path)
    if p.is_dir():
        return _probe_dicom(p, series)
    if p.name.endswith((".nii", ".nii.gz")):
        return _probe_nifti(p)
    raise RealSeriesError("Allowed: a DICOM folder or a .nii/.nii.gz 4D NIfTI.")


def probe_series(path: str | Path, series: int | None = None) -> RealSeries:
    """Geometry, TR and files of a real series (headers and one volume are read).

    Parameters
    ----------
    path : str or Path
        A 4D NIfTI (``.nii``/``.nii.gz``) or a folder of DICOM files.
    series : int, optional
        DICOM SeriesNumber (default: the series with the most files).

    Raises
    ------
    RealSeriesError
        Missing path, no DICOM files, unknown series, a NIfTI that is not 4D.
    """
    p = Path(path).resolve()
    if not p.exists():
        raise RealSeriesError(f"'{p}' does not exist. Allowed: a DICOM folder or a 4D NIfTI.")
    # the spec is validated, then the run built, from the same series: probe it once
    return _probe_cached(str(p), series, p.stat().st_mtime_ns)


def read_series(real: RealSeries, skip: int = 0, n_volumes: int | None = None) -> np.ndarray:
    """Voxel data of volumes ``skip .. skip + n_volumes - 1``, shape ``(*real.shape, n)``, float32.

    Raises
    ------
    RealSeriesError
        If a volume's grid or affine differs from the first volume's.
    """
    stop = real.n_volumes if n_volumes is None else skip + n_volumes
    if real.kind == "nifti4d":
        import nibabel as nib

        img = nib.load(real.path)
        return np.asarray(img.dataobj[..., skip:stop], dtype=np.float32)
    out = np.empty((*real.shape, stop - skip), dtype=np.float32)
    for t, files in enumerate(real.volumes[skip:stop]):
        data, affine = _decode_slices(files) if real.kind == "dicom-slices" else _decode_volume_file(files[0])
        if data.shape != real.shape or not np.allclose(affine, real.affine, atol=1e-3):
            raise RealSeriesError(f"volume {skip + t} ('{files[0].name}') has another grid than the first volume.")
        out[..., t] = data
    return out


def epi_mask(mean: np.ndarray) -> np.ndarray:
    """Brain mask of a mean EPI: above 25 % of its 99th percentile, largest component, holes filled.

    A plain intensity threshold suffices here: the mask only restricts
    regions (spheres) to voxels with signal, it is not an analysis mask.
    """
    from scipy import ndimage

    thr = 0.25 * float(np.percentile(mean, 99))
    mask = mean > thr
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)
