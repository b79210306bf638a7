"""Per-volume preprocessing: realignment, optional smoothing, ROI signals, quality.

:class:`Preprocessor` is fitted on the run's first kept volume (or the
configured motion reference): it places the ROIs on the functional grid and
prepares the realigner. For each volume it estimates head motion, samples
every ROI from the realigned data (only the ROI voxels are resampled) and
measures framewise displacement, DVARS, the global signal and spikes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from .motion import MOTION_COLUMNS, Realigner
from .quality import QualityMonitor, QualityRow
from .rois import MaskROI, SphereROI
from rtnf.scanner.volume import Grid, Volume

log = logging.getLogger(__name__)


class NonFiniteVolume(ValueError):
    """A volume without one finite voxel: nothing in it can be used."""


@dataclass(frozen=True)
class Preprocessed:
    """One volume after preprocessing.

    ``motion`` and ``quality`` are None when motion correction is off.
    """

    raw: np.ndarray  # mean signal per ROI
    motion: np.ndarray | None  # 6 parameters: mm, radians
    quality: QualityRow | None
    brain: np.ndarray | None = None  # realigned values at every brain voxel (when asked for)
    n_nonfinite: int = 0  # NaN or infinite voxels of the volume as read, replaced (see Preprocessor.run)
    realign_s: float = 0.0  # seconds spent estimating motion (a stage of rtnf bench pipeline)
    data: np.ndarray | None = None  # the volume as sampled (smoothed when configured), not realigned

    def motion_dict(self) -> dict[str, float] | None:
        """Motion with fMRIPrep's names, or None."""
        return None if self.motion is None else dict(zip(MOTION_COLUMNS, map(float, self.motion)))


class Preprocessor:
    """Realign, smooth and extract ROI signals, volume after volume.

    Parameters
    ----------
    rois : list of SphereROI or MaskROI
        Not yet fitted; :meth:`fit` places them on the grid.
    motion : rtnf.config.MotionConfig
    quality : rtnf.config.QualityConfig
    sample_brain : bool
        Also return the realigned value of every brain voxel (whole-brain model).
    """

    def __init__(self, rois: list[SphereROI | MaskROI], motion: Any, quality: Any, sample_brain: bool = False) -> None:
        self.rois = rois
        self.sample_brain = sample_brain
        self.motion_cfg = motion
        self.quality_cfg = quality
        self.grid: Grid | None = None
        self.realigner: Realigner | None = None
        self.monitor: QualityMonitor | None = None
        self._sigma_vox: np.ndarray | None = None
        self._brain: np.ndarray | None = None
        self.brain_indices: np.ndarray | None = None  # flat indices of the brain mask (for whole-brain work)
        self._fill: np.ndarray | None = None  # what replaces a non-finite voxel: the first volume's value
        self._n_nonfinite_volumes = 0

    def fit(self, first: Volume) -> "Preprocessor":
        """Fit on the first volume of the run.

        Raises
        ------
        RoiError
            If an ROI lies outside the field of view.
        ConfigError
            If the configured ``motion.reference`` is not on the first volume's
            grid (in any voxel order) or cannot serve as a reference: a
            configuration error, the same for every volume of the run.
        """
        grid = first.grid
        self._fill = np.nan_to_num(np.asarray(first.data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if not np.isfinite(first.data).all():
            first = replace(first, data=self._fill)
        # The configured reference first: a config error must stop the run before any state is set.
        configured = self._configured_reference(first) if self.motion_cfg.enabled else None
        for roi in self.rois:
            roi.fit(grid)
            log.info("ROI %s: %d voxels", roi.name, roi.n_voxels)
        self.grid = grid
        voxel_mm = np.sqrt(np.sum(grid.affine[:3, :3] ** 2, axis=0))
        fwhm = self.motion_cfg.fwhm_mm
        self._sigma_vox = fwhm / np.sqrt(8 * np.log(2)) / voxel_mm if fwhm > 0 else None
        if self.motion_cfg.enabled:
            if configured is None:
                self.realigner = Realigner(sigma_vox=self.motion_cfg.sigma_vox).fit(first.data, grid.affine)
            else:
                self.realigner = self._fit_configured(configured, grid)
            self.brain_indices = self.realigner.brain_indices_
            # Every second brain voxel is plenty for DVARS and the global signal.
            self._brain = self.realigner.brain_indices_[::2]
            self.monitor = QualityMonitor(
                fd_threshold_mm=self.quality_cfg.fd_threshold_mm, spike_z=self.quality_cfg.spike_z
            )
        else:
            flat = first.data.reshape(-1)
            self.brain_indices = np.flatnonzero(flat > 0.2 * np.percentile(flat, 98))
        return self

    def _configured_reference(self, first: Volume) -> np.ndarray | None:
        """The ``motion.reference`` file's data in the first volume's voxel order, or None for "first"."""
        if self.motion_cfg.reference == "first":
            return None
        from .reference import load_motion_reference

        return load_motion_reference(self.motion_cfg.reference, first.grid, f"the first volume {first.path.name}")

    def _fit_configured(self, reference: np.ndarray, grid: Grid) -> Realigner:
        """A realigner on the configured reference; one that cannot serve is a config error."""
        from rtnf.config import ConfigError

        try:
            return Realigner(sigma_vox=self.motion_cfg.sigma_vox).fit(reference, grid.affine)
        except ValueError as exc:  # e.g. a blank template: too few brain voxels to realign
            raise ConfigError(
                f"invalid value for 'motion.reference': {self.motion_cfg.reference} cannot serve as the "
                f"reference ({exc}). Allowed: \"first\" or a brain volume on the functional grid."
            ) from None

    def sample(self, data: np.ndarray, params: np.ndarray | None, indices: np.ndarray) -> np.ndarray:
        """Realigned values of ``data`` (a :attr:`Preprocessed.data`, moved by ``params``) at flat ``indices``.

        Safe to call from another thread than :meth:`run` (the operator's products).
        """
        if self.realigner is None or params is None:
            return data.reshape(-1)[indices]
        return self.realigner.sample(data, params, indices)

    def _finite(self, volume: Volume) -> tuple[Volume, int]:
        """The volume with non-finite voxels replaced by the first volume's values, and their count.

        A single NaN voxel would otherwise make an ROI mean NaN (and with it
        the smoother's and despiker's state for the rest of the run), or make
        realignment fail for the whole volume. The first volume's value is
        the run's best guess of that voxel's signal; the count is reported.
        """
        bad = ~np.isfinite(volume.data)
        n_bad = int(bad.sum())
        if n_bad == 0:
            return volume, 0
        if n_bad == bad.size:
            raise NonFiniteVolume(f"{volume.path.name}: no finite voxel (all NaN or infinite)")
        self._n_nonfinite_volumes += 1
        k = self._n_nonfinite_volumes
        if k <= 3 or k % 50 == 0:  # said, but never a flood
            log.warning("%s: %d non-finite voxels (NaN or infinite) replaced by the first volume's values%s",
                        volume.path.name, n_bad, f" ({k} volumes so far)" if k > 1 else "")
        data = np.where(bad, self._fill, volume.data).astype(volume.data.dtype, copy=False)
        return replace(volume, data=data), n_bad

    def run(self, volume: Volume) -> Preprocessed:
        """Preprocess one volume on the fitted grid (non-finite voxels replaced and counted)."""
        volume, n_bad = self._finite(volume)
        data = volume.data
        if self._sigma_vox is not None:
            data = gaussian_filter(data, self._sigma_vox, mode="nearest")
        if self.realigner is None:
            raw = np.array([roi.transform(data) for roi in self.rois])
            brain = data.reshape(-1)[self.brain_indices] if self.sample_brain else None
            return Preprocessed(raw, None, None, brain, n_bad, data=data)
        t0 = time.perf_counter()
        params = self.realigner.estimate(volume.data)
        realign_s = time.perf_counter() - t0
        raw = np.array([self.realigner.sample(data, params, roi.indices_).mean() for roi in self.rois])
        brain = None
        if self.sample_brain and self._sigma_vox is None:
            # One resampling of the brain serves the whole-brain model and the quality checks.
            brain = self.realigner.sample(data, params, self.brain_indices)
            quality_values = brain[::2]
        else:
            quality_values = self.realigner.sample(volume.data, params, self._brain)
            if self.sample_brain:
                brain = self.realigner.sample(data, params, self.brain_indices)
        quality = self.monitor.update(params, quality_values)
        if not self.realigner.result_.converged:
            log.warning("realignment did not converge for %s", volume.path.name)
        return Preprocessed(raw, params, quality, brain, n_bad, realign_s, data)

    def skip(self) -> None:
        """Note a missing volume."""
        if self.monitor is not None:
            self.monitor.skip()
