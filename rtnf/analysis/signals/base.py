"""The interface of a feedback signal: a config table, ``fit`` once, ``step`` per volume.

Writing one::

    from pydantic import BaseModel
    from rtnf.analysis.signals import FeedbackSignal

    class MeanOfTwo(FeedbackSignal):
        class Config(BaseModel, extra="forbid"):   # the keys of its [signals.<name>] table
            rois: tuple[str, str]

        def fit(self, context):                    # once, at the run's first volume
            self.a, self.b = self.config.rois
            for roi in self.config.rois:
                context.require_roi(roi)

        def step(self, volume):                    # each volume, in order, in the feedback path
            a, b = volume.psc[self.a], volume.psc[self.b]
            return None if a is None or b is None else (a + b) / 2

The value (a float, or None with :attr:`FeedbackSignal.reason` saying why)
is recorded in the run's table as ``signal_<name>`` and, when
``feedback.source`` names the signal, scaled like ROI activity
(``feedback.scaling``, ``scale_range``, directions) and shown. ``step``
runs in the per-volume loop before the feedback is published, so it must be
fast (the bench shows it as the stage ``signal_<name>``); an exception costs
that volume's value (null, with the reason) and raises an alarm, never the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict


class SignalError(ValueError):
    """A signal that cannot work for this run (bad settings, an unknown ROI, missing training data)."""


@dataclass(frozen=True)
class SignalContext:
    """What a signal may use to prepare itself, at the run's first volume.

    Attributes
    ----------
    grid_shape : tuple of int
        Voxel grid of the run (the first volume's).
    affine : ndarray, shape (4, 4)
        Voxel to scanner RAS mm.
    reference : ndarray
        The run's reference volume (the first kept volume, as read).
    roi_indices : dict of str to ndarray
        Flat voxel indices (C order) of every configured ROI on the grid.
    brain_indices : ndarray
        Flat voxel indices of the brain mask.
    protocol : Protocol
        Conditions, blocks, TR and number of volumes (:mod:`rtnf.analysis.protocol`).
    tr_s : float
        Repetition time in seconds.
    config_dir : Path or None
        Folder of the session config (relative paths in a signal's table are relative to it).
    """

    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    reference: np.ndarray
    roi_indices: dict[str, np.ndarray]
    brain_indices: np.ndarray
    protocol: Any
    tr_s: float
    config_dir: Any = None

    def require_roi(self, name: str) -> np.ndarray:
        """The flat indices of ROI ``name``; :class:`SignalError` naming the configured ROIs if there is none."""
        if name not in self.roi_indices:
            raise SignalError(f"no ROI named {name!r}; configured ROIs: {sorted(self.roi_indices)}")
        return self.roi_indices[name]


@dataclass
class VolumeInput:
    """What a signal gets for one volume.

    Attributes
    ----------
    index : int
        Kept-volume index (0-based).
    condition : str
        The volume's protocol condition.
    raw, clean, psc : dict of str to float or None
        Every ROI's mean signal, drift-cleaned signal and percent signal change
        (:class:`~rtnf.analysis.roi_model.RoiValues`).
    motion : ndarray or None
        The six motion parameters (mm, radians).
    censored : bool
        The volume failed the quality checks.
    sample : callable
        ``sample(flat_indices) -> ndarray``: the realigned volume's values at
        those voxels of the grid (trilinear; the ROIs' own sampling).
    """

    index: int
    condition: str
    raw: dict[str, float | None]
    clean: dict[str, float | None]
    psc: dict[str, float | None]
    motion: np.ndarray | None
    censored: bool
    sample: Callable[[np.ndarray], np.ndarray] = field(repr=False)


class FeedbackSignal:
    """Base of every feedback signal (see the module docstring for an example).

    Parameters
    ----------
    name : str
        The signal's name in the config (``[signals.<name>]``; the table's column is ``signal_<name>``).
    config : pydantic model
        Its table, validated by :attr:`Config`.

    Attributes
    ----------
    Config : type
        A pydantic model of the signal's settings (every key of its table but ``class``).
    reason : str or None
        Why the last :meth:`step` returned None (for the table and the operator).
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    columns: ClassVar[tuple[str, ...]] = ()
    """Extra outputs recorded per volume as ``signal_<name>_<column>`` (filled from :attr:`outputs`)."""

    def __init__(self, name: str, config: BaseModel) -> None:
        self.name = name
        self.config = config
        self.reason: str | None = None
        self.outputs: dict[str, float | None] = {}

    def fit(self, context: SignalContext) -> None:
        """Prepare for the run (called once, at its first usable volume). Raise :class:`SignalError` if it cannot work."""

    def step(self, volume: VolumeInput) -> float | None:  # pragma: no cover - abstract
        """The signal's value for this volume (None when there is none yet; set :attr:`reason`)."""
        raise NotImplementedError
