"""Slice acquisition times from DICOM headers (seconds from the volume's start, one per slice of the array).

Where each vendor keeps them (as dcm2niix reads them):

* Siemens mosaic (VB/VD/VE, CMRR multiband): the CSA image header's
  ``MosaicRefAcqTimes`` (ms), else the private ``(0019,1029)`` copy, one value
  per mosaic tile, i.e. per index of the array's slice axis.
* Enhanced MR (Siemens XA, Philips): each frame's
  ``FrameContentSequence.FrameAcquisitionDateTime``; Philips writes one time
  for every frame of a volume, which says nothing about the slices (None).
* Classic one-file-per-slice: each file's ``AcquisitionTime`` when they
  differ within the volume (GE and Philips usually write one time per
  volume: None).

Every function returns None when the header has no usable times, never
raises: a volume without slice times is still a volume.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._common import acquisition_time, as_str

#: A slice time must lie within this many seconds of the volume's start (no TR is longer).
_MAX_SPAN_S = 60.0


def _relative(times_s: Sequence[float] | np.ndarray) -> tuple[float, ...] | None:
    """Times shifted to start at 0, rounded to the microsecond; None when they carry no slice information."""
    t = np.asarray(times_s, dtype=np.float64)
    if t.size == 0 or not np.all(np.isfinite(t)):
        return None
    t = t - t.min()
    if t.max() <= 0.0 or t.max() >= _MAX_SPAN_S:  # all equal (one time per volume), or not slice times
        return None
    return tuple(float(v) for v in np.round(t, 6))


def mosaic_slice_times(ds: Any, csa: Any, n_slices: int) -> tuple[float, ...] | None:
    """``MosaicRefAcqTimes`` (CSA, else (0019,1029)) of a Siemens mosaic, in seconds, or None.

    Parameters
    ----------
    ds : pydicom Dataset
    csa : dict or None
        The CSA image header as nibabel's ``csareader`` reads it.
    n_slices : int
        Tiles of the mosaic (the volume's slices); the times must be as many.
    """
    values = None
    try:
        items = csa["tags"]["MosaicRefAcqTimes"]["items"] if csa else None
        if items:
            values = [float(v) for v in items]
    except (KeyError, TypeError, ValueError):
        values = None
    if values is None or len(values) < n_slices:
        elem = ds.get((0x0019, 0x1029))
        raw = getattr(elem, "value", None)
        if isinstance(raw, (int, float)):
            raw = [raw]
        try:
            values = [float(v) for v in raw] if raw is not None and not isinstance(raw, (str, bytes)) else None
        except (TypeError, ValueError):
            values = None
    if values is None or len(values) < n_slices:
        return None
    # Siemens pads the list on some versions: the first n_slices belong to the tiles.
    times = np.asarray(values[:n_slices], dtype=np.float64) / 1000.0
    if not np.all(np.isfinite(times)) or np.any(times < 0):  # max() below would skip a NaN after the first value
        return None
    out = tuple(float(v) for v in np.round(times, 6))
    return out if max(out) > 0 and max(out) < _MAX_SPAN_S else None


def frame_slice_times(wrapper: Any, n_slices: int, n_volumes: int) -> list[tuple[float, ...] | None]:
    """Per-volume slice times of an enhanced MR file from its frames' ``FrameAcquisitionDateTime``.

    Frames are taken in ``wrapper.frame_order`` (the order of the data's slice
    and time axes, Fortran order: slice fastest), as the enhanced reader lays them out.
    """
    try:
        frames = wrapper.frames
        order = np.asarray(wrapper.frame_order)
        stamps = []
        for f in frames:
            content = f.FrameContentSequence[0]
            dt = as_str(content.get("FrameAcquisitionDateTime"))
            stamps.append(acquisition_time({"AcquisitionDateTime": dt}) if dt else None)
    except (AttributeError, IndexError, TypeError, KeyError):
        return [None] * n_volumes
    if any(s is None for s in stamps) or order.size != n_slices * n_volumes:
        return [None] * n_volumes
    # Sub-second precision: acquisition_time keeps the fraction of the DT string.
    t = np.asarray(stamps, dtype=np.float64)[order].reshape(n_slices, n_volumes, order="F")
    return [_relative(t[:, v]) for v in range(n_volumes)]


def slice_file_times(datasets: Sequence[Any]) -> tuple[float, ...] | None:
    """Slice times of a stack of classic slice files (in stacking order) from their ``AcquisitionTime``, or None."""
    stamps = [acquisition_time(ds) for ds in datasets]
    if any(s is None for s in stamps):
        return None
    return _relative(stamps)
