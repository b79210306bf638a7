"""Classic one-file-per-slice MR DICOM (GE, Philips, Siemens without CSA, Toshiba; explicit, implicit
and big-endian transfer syntaxes): stack the slices of one volume.

The slice axis is built from the slices' own positions (sorted along
``row_cosine x column_cosine``, first to last divided by n - 1), as dcm2niix
does, not from SliceThickness/SpacingBetweenSlices; slices must be evenly
spaced and share orientation, matrix and pixel spacing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtnf.scanner.volume import Volume
from ._common import LPS_TO_RAS, DicomReadError, UnsupportedDicomError, acquisition_time, iop, ipp, rescale, slice_normal
from .pixels import check_pixel_length
from .slicetimes import slice_file_times

_POS_TOL_MM = 0.01


def slice_affine(orient: np.ndarray, first_ipp: np.ndarray, pixel_spacing: Sequence[float],
                 step: np.ndarray) -> np.ndarray:
    """RAS affine of a slice stack: axis 0 down the rows, axis 1 along the columns, axis 2 ``step`` (LPS mm)."""
    aff = np.eye(4)
    aff[:3, 0] = orient[1] * float(pixel_spacing[0])
    aff[:3, 1] = orient[0] * float(pixel_spacing[1])
    aff[:3, 2] = step
    aff[:3, 3] = first_ipp
    return LPS_TO_RAS @ aff


def read_slices(paths: Sequence[Path], datasets: Sequence[Any], arrays: Sequence[np.ndarray] | None = None) -> Volume:
    """Stack the slice files of one volume (any order) into a Volume.

    ``arrays`` are the slices' decoded pixel arrays when they were decoded
    already, as each slice arrived (see :func:`decode_slice`).
    """
    if not paths:
        raise DicomReadError("no slice files given")
    orient0 = ps0 = shape0 = None
    items = []
    decoded = dict(zip(paths, arrays)) if arrays is not None else {}
    for path, ds in zip(paths, datasets):
        check_pixel_length(ds, path)
        if (int(ds.get("NumberOfFrames") or 1)) > 1:
            raise UnsupportedDicomError(f"{path}: classic multi-frame file ({ds.NumberOfFrames} frames) is not supported")
        orient, pos, ps = iop(ds), ipp(ds), ds.get("PixelSpacing")
        if orient is None or pos is None or ps is None:
            raise UnsupportedDicomError(f"{path}: no ImageOrientationPatient/ImagePositionPatient/PixelSpacing")
        shape = (int(ds.Rows), int(ds.Columns))
        if orient0 is None:
            orient0, ps0, shape0 = orient, [float(x) for x in ps], shape
        elif (not np.allclose(orient, orient0, atol=1e-4) or shape != shape0
              or not np.allclose([float(x) for x in ps], ps0, atol=1e-4)):
            raise DicomReadError(f"{path}: orientation, matrix or pixel spacing differs from {paths[0]}")
        items.append((float(np.dot(pos, slice_normal(orient0))), pos, path, ds))
    items.sort(key=lambda it: it[0])
    positions = np.array([it[0] for it in items])
    if len(items) > 1 and np.min(np.diff(positions)) < _POS_TOL_MM:
        i = int(np.argmin(np.diff(positions)))
        raise DicomReadError(f"{items[i][2]} and {items[i + 1][2]}: two slices at the same position "
                             f"{positions[i]:.3f} mm (duplicate, or slices of two volumes mixed)")
    ipps = np.array([it[1] for it in items])
    if len(items) > 1:
        step = (ipps[-1] - ipps[0]) / (len(items) - 1)
        expected = ipps[0] + np.arange(len(items))[:, None] * step
        err = np.abs(ipps - expected).max()
        if err > 0.05:
            raise DicomReadError(f"{items[0][2]}: slices are not evenly spaced (off by {err:.3f} mm; a slice missing?)")
    else:
        ds = items[0][3]
        dz = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        step = slice_normal(orient0) * float(dz)
    data = np.empty(shape0 + (len(items),), dtype=np.float32)
    for k, (_, _, path, ds) in enumerate(items):
        arr = decoded.get(path)
        if arr is None:
            arr = _pixels(path, ds)
        slope, inter = rescale(ds)
        data[:, :, k] = arr * slope + inter if (slope != 1.0 or inter != 0.0) else arr
    times = [t for t in (acquisition_time(it[3]) for it in items) if t is not None]
    return Volume(data=data, affine=slice_affine(orient0, ipps[0], ps0, step),
                  t_acquired=min(times) if times else None, path=items[0][2],
                  slice_times_s=slice_file_times([it[3] for it in items]))


def _pixels(path: Path, ds: Any) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:
        raise DicomReadError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc


def decode_slice(path: Path) -> tuple[Any, np.ndarray]:
    """Read and decode one slice file as it arrives: ``(dataset, pixel array)``.

    Slices of a volume arrive spread over the TR; decoding each on arrival
    leaves only the stacking for the moment the volume is complete (the
    35 Philips slices of a studyforrest volume cost ~230 ms together).

    Raises
    ------
    DicomReadError
        If the file cannot be read or decoded.
    """
    from ._common import dcmread

    try:
        ds = dcmread(path)
    except DicomReadError:
        raise
    except Exception as exc:
        raise DicomReadError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    return ds, _pixels(path, ds)
