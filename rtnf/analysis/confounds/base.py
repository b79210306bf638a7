"""The contract of a confound source: regressors that arrive with each volume.

A confound source (physiological noise from a pulse oximeter and a breathing
belt, white-matter and CSF signals, CompCor components, the global signal)
names its regressors before the run (they are columns of the design,
:func:`rtnf.analysis.design.make_design`), prepares itself at the run's first
volume (:meth:`ConfoundSource.fit`) and gives one row of values per volume
(:meth:`ConfoundSource.row`), in the feedback path, before the ROI model is
updated. Values are standardised by the source (typical size 1: unit-amplitude
Fourier terms, z-scored signals), which is what the ROI model's prior assumes
(:data:`rtnf.analysis.roi_model.CONFOUND_SCALE`).

A source that cannot give a volume's values (a stalled physiological stream)
returns None with a :attr:`~ConfoundSource.reason`: the run enters zeros for
that volume (the term then has no effect there: the model degrades to the one
without it), raises an alarm once, and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class ConfoundError(ValueError):
    """A confound source that cannot work for this run (missing mask, bad settings): the run stops with this message."""


@dataclass(frozen=True)
class ConfoundContext:
    """What a confound source may use to prepare itself, at the run's first volume.

    Attributes
    ----------
    grid_shape : tuple of int
        Voxel grid of the run.
    affine : ndarray, shape (4, 4)
        Voxel to scanner RAS mm.
    reference : ndarray
        The run's reference volume (read-only).
    brain_indices : ndarray
        Flat voxel indices (C order) of the brain mask (read-only).
    roi_indices : dict of str to ndarray
        Flat voxel indices of every configured ROI (read-only).
    tr_s : float
        Repetition time in seconds.
    n_volumes : int
        Kept volumes in the run.
    t_first : float or None
        Acquisition start of the first kept volume (UNIX seconds) when the file records it.
    config_dir : Path or None
        Folder of the session config (relative paths are relative to it).
    """

    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    reference: np.ndarray
    brain_indices: np.ndarray
    roi_indices: dict[str, np.ndarray]
    tr_s: float
    n_volumes: int
    t_first: float | None = None
    config_dir: Any = None


@dataclass(frozen=True)
class ConfoundInput:
    """One volume, as a confound source sees it.

    Attributes
    ----------
    index : int
        Kept-volume index (0-based).
    onset_s : float
        ``index * TR``: the volume's acquisition start on the run's clock (s).
    t_acquired : float or None
        Acquisition start (UNIX seconds) when the file records it.
    motion : ndarray or None
        The six motion parameters (mm, radians).
    sample : callable
        ``sample(flat_indices) -> ndarray``: the realigned volume's values at
        those voxels of the grid (trilinear; the ROIs' own sampling).
    """

    index: int
    onset_s: float
    t_acquired: float | None
    motion: np.ndarray | None
    sample: Callable[[np.ndarray], np.ndarray] = field(repr=False)


class ConfoundSource:
    """Base of every confound source.

    Parameters
    ----------
    name : str
        The source's name (``physio``, ``tissue``): its stage in the latency
        stamps is ``confound_<name>``.

    Attributes
    ----------
    names : tuple of str
        The design columns this source fills, in order (set by the constructor,
        known before the run).
    reason : str or None
        Why the last :meth:`row` gave None.
    """

    names: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self.reason: str | None = None

    def fit(self, context: ConfoundContext) -> None:
        """Prepare for the run (masks on the grid, streams opened). Raise :class:`ConfoundError` if impossible."""

    def row(self, volume: ConfoundInput) -> np.ndarray | None:
        """This volume's values, shape ``(len(names),)``, or None with :attr:`reason` set."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`fit` opened (streams, threads). Called once at the end of the run."""
