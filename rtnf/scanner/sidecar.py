"""A NIfTI volume's BIDS JSON sidecar (``x.nii[.gz]`` -> ``x.json``): only ``SliceTiming`` is read.

dcm2niix and BIDS exports write the slice acquisition times there (seconds
from the volume's start, one per slice along the header's slice dimension).
Nothing else of the sidecar is read: it may hold identifying fields.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: A sidecar larger than this is not a sidecar (bytes).
MAX_SIDECAR_BYTES = 1 << 20


def sidecar_path(path: Path) -> Path:
    """``x.json`` beside ``x.nii`` or ``x.nii.gz``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def sidecar_slice_times(path: Path, n_slices: int) -> tuple[float, ...] | None:
    """``SliceTiming`` (s) of the volume file ``path``'s sidecar, or None when absent or unusable.

    Parameters
    ----------
    path : Path
        The NIfTI file.
    n_slices : int
        Slices along the volume's slice axis: the list must be as long.
    """
    times, problem = read_sidecar_slice_times(path, n_slices)
    if problem is not None:
        log.debug("%s: slice times not used (%s)", sidecar_path(path).name, problem)
    return times


def read_sidecar_slice_times(path: Path, n_slices: int) -> tuple[tuple[float, ...] | None, str | None]:
    """``(SliceTiming (s) or None, why a sidecar's SliceTiming is not used or None)``; see :func:`sidecar_slice_times`.

    No sidecar, or one without ``SliceTiming``, is no problem (None, None).
    """
    from .nifti import open_regular

    side = sidecar_path(path)
    try:
        with open_regular(side) as f:  # never blocks on a FIFO in the sidecar's place
            text = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError:
        return None, None  # no sidecar: the usual case
    try:
        if len(text) > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
        values = json.loads(text).get("SliceTiming")
        if values is None:
            return None, None
        times = np.asarray(values, dtype=np.float64)
        if times.shape != (n_slices,) or not np.all(np.isfinite(times)) or times.min() < 0:
            raise ValueError(f"SliceTiming is not {n_slices} finite non-negative numbers")
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:  # RecursionError: nested too deep
        return None, f"{side.name}: SliceTiming not used ({exc})"[:300]
    return tuple(float(v) for v in times), None
