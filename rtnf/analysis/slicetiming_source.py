"""Which slice times a run corrects with: the config's (a list or a named order) or the first volume's header.

One rule for the run (:class:`rtnf.analysis.preprocess.Preprocessor`, at its
first volume) and for ``rtnf check`` (on a volume of the series), so that what
the check prints is what the run will do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .slicetiming import order_slice_times
from rtnf.scanner.volume import Volume

#: Configured slice times further than this from the header's (s) are reported as differing.
HEADER_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class ChosenSliceTimes:
    """The slice times a run uses, and where they come from.

    Attributes
    ----------
    times_s : tuple of float
        Seconds from the volume's start, one per slice along ``axis`` (index 0 first).
    source : str
        Where they come from: ``slice_timing.slice_times_s``, ``slice_timing.order (<order>)`` or
        ``the header of <file name>``.
    axis : int
        The volume array's slice axis.
    header_difference_s : float or None
        When configured times differ from the header's (by more than :data:`HEADER_TOLERANCE_S`):
        the largest difference (s); None otherwise (same times, no header times, or the header's used).
    """

    times_s: tuple[float, ...]
    source: str
    axis: int
    header_difference_s: float | None = None


def choose_slice_times(cfg: Any, tr_s: float, first: Volume) -> ChosenSliceTimes:
    """The slice times of ``[slice_timing]`` (``cfg``) for the series whose first volume is ``first``.

    The config's slice times (``slice_times_s`` or ``order``) win over the
    header's; with neither, the header's are used. ``cfg.enabled`` is not looked at.

    Parameters
    ----------
    cfg : rtnf.config.SliceTimingConfig
    tr_s : float
        Repetition time (s).
    first : Volume
        The series' first volume (any of its volumes: slice times are fixed for a series).

    Raises
    ------
    ConfigError
        No slice times (none configured, none in the header), the wrong number of them for the
        volume's slices, or header times that do not spread over the TR.
    """
    from rtnf.config import ConfigError  # rtnf.config imports the analysis modules

    axis = first.slice_axis
    n = int(first.data.shape[axis])
    header = first.slice_times_s
    if cfg.slice_times_s is not None:
        times, source = tuple(float(t) for t in cfg.slice_times_s), "slice_timing.slice_times_s"
        if len(times) != n:
            raise ConfigError(
                f"invalid value for 'slice_timing.slice_times_s': {len(times)} slice times, but the first "
                f"volume {first.path.name} has {n} slices along axis {axis}. Allowed: one time per slice."
            )
    elif cfg.order is not None:
        times, source = order_slice_times(cfg.order, n, tr_s), f"slice_timing.order ({cfg.order})"
    elif header is not None:
        times, source = tuple(header), f"the header of {first.path.name}"
        # Slices of a 2D EPI spread over most of the TR; a much shorter span is the time files were
        # written (a fast replay, a converter), not when their slices were acquired.
        if len(times) != n or max(times) >= tr_s or max(times) < tr_s / 4:
            raise ConfigError(
                f"invalid value for 'slice_timing.slice_times_s': not set, and the slice times in the header of "
                f"{first.path.name} ({len(times)} times from 0 to {max(times):g} s) do not spread its {n} slices "
                f"over the TR ({tr_s:g} s). Allowed: slice_timing.slice_times_s or slice_timing.order for this series."
            )
        return ChosenSliceTimes(times, source, axis)
    else:
        raise ConfigError(
            f"invalid value for 'slice_timing.enabled': true, but the first volume {first.path.name} has no "
            f"slice times in its header{_sidecar_note(first, n)}. Allowed: set slice_timing.slice_times_s or "
            "slice_timing.order, or enabled = false."
        )
    difference = None
    if header is not None and len(header) == n and not np.allclose(header, times, atol=HEADER_TOLERANCE_S):
        difference = float(np.max(np.abs(np.subtract(header, times))))
    return ChosenSliceTimes(times, source, axis, difference)


def _sidecar_note(first: Volume, n_slices: int) -> str:
    """`` (x.json: SliceTiming not used (why))`` for a NIfTI whose BIDS sidecar's slice times are unusable, else ""."""
    from rtnf.scanner.sidecar import read_sidecar_slice_times

    if first.path is None or not first.path.name.endswith((".nii", ".nii.gz")):
        return ""
    _, problem = read_sidecar_slice_times(first.path, n_slices)
    return "" if problem is None else f" ({problem})"
