"""Enhanced (multi-frame) MR DICOM: Siemens XA10/XA20/XA30 fMRI (one file per volume, no CSA, TR only
in the functional groups) and Philips enhanced files (possibly several volumes per file).

nibabel's ``MultiframeWrapper`` sorts frames by their dimension indices and
positions; this module splits a 4D result into volumes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rtnf.scanner.volume import Volume
from ._common import LPS_TO_RAS, DicomReadError, UnsupportedDicomError, acquisition_time, dicomwrappers, rescale
from .pixels import check_pixel_length
from .slicetimes import frame_slice_times


def _affine(wrapper: Any) -> np.ndarray:
    """nibabel's affine with the slice step taken from the first and last frame positions (as dcm2niix).

    nibabel steps from the first two positions; over 176 slices that drifts by
    more than 1e-3 mm from dcm2niix's first-to-last average.
    """
    aff = np.array(wrapper.affine, dtype=np.float64)
    try:
        ipps = np.array([[float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient] for f in wrapper.frames])
    except (AttributeError, IndexError, TypeError):
        return aff
    pos = np.round(ipps @ np.asarray(wrapper.slice_normal, dtype=np.float64), 4)
    uniq, first = np.unique(pos, return_index=True)
    if len(uniq) > 1:
        aff[:3, 2] = (ipps[first[-1]] - ipps[first[0]]) / (len(uniq) - 1)
    return aff


def _frame_scale(frame: Any, shared: Any, ds: Any) -> tuple[float, float]:
    for group in (frame, shared):
        seq = group.get("PixelValueTransformationSequence") if group is not None else None
        if seq:
            return rescale(seq[0])
    return rescale(ds)


def _scaled_data(wrapper: Any, ds: Any) -> np.ndarray:
    """Frames in nibabel's order with each frame's RescaleSlope/Intercept (DICOM displayed values).

    nibabel prefers real-world-value maps and, for Philips, the private scale
    slope; rtnf uses the DICOM rescale everywhere (as dcm2niix's scl_slope).
    Frame-filtered files (several stacks) fall back to nibabel's scaling.
    """
    frames = wrapper.frames
    n_file = int(ds.get("NumberOfFrames") or 1)
    if len(frames) != n_file:
        return np.asarray(wrapper.get_data(), dtype=np.float32)
    shared = wrapper.shared
    scales = np.array([_frame_scale(f, shared, ds) for f in frames], dtype=np.float64)
    raw = np.asarray(wrapper.get_pixel_array())
    if raw.ndim == 2:
        raw = raw[None]
    order = wrapper.frame_order
    shape = wrapper.image_shape
    arr = raw.transpose(1, 2, 0)[..., order].astype(np.float32)
    slope, inter = scales[order, 0], scales[order, 1]
    if np.any(slope != 1.0) or np.any(inter != 0.0):
        arr = arr * slope.astype(np.float32) + inter.astype(np.float32)
    return arr.reshape(shape, order="F")


def read_enhanced(path: Path, ds: Any) -> list[Volume]:
    """All volumes of one enhanced MR file, in the file's temporal (dimension-index) order."""
    check_pixel_length(ds, path)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise UnsupportedDicomError(
            f"{path}: enhanced MR file without functional groups: no slice geometry to build an affine"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nibabel's Philips scale-factor notices
            wrapper = dicomwrappers.MultiframeWrapper(ds)
            data = _scaled_data(wrapper, ds)
            affine = LPS_TO_RAS @ _affine(wrapper)
    except Exception as exc:  # WrapperError and friends
        raise DicomReadError(f"{path}: cannot decode enhanced MR file ({type(exc).__name__}: {exc})") from exc
    t = acquisition_time(ds)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        times = frame_slice_times(wrapper, data.shape[2], 1)
        return [Volume(data=data, affine=affine, t_acquired=t, path=path, slice_times_s=times[0])]
    if data.ndim == 4:
        times = frame_slice_times(wrapper, data.shape[2], data.shape[3])
        return [Volume(data=np.ascontiguousarray(data[..., i]), affine=affine, t_acquired=t, path=path,
                       slice_times_s=times[i]) for i in range(data.shape[3])]
    raise UnsupportedDicomError(f"{path}: enhanced MR file with {data.ndim} dimensions {data.shape}; "
                                "rtnf reads 3D or 3D+time files")
