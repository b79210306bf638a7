"""Per-volume preprocessing: slice timing, realignment, optional smoothing, ROI signals, quality.

:class:`Preprocessor` is fitted on the run's first kept volume (or the
configured motion reference): it places the ROIs on the functional grid and
prepares the realigner. For each volume it estimates head motion, samples
every ROI from the realigned data (only the ROI voxels are resampled) and
measures framewise displacement, DVARS, the global signal and spikes.

Slice-timing correction (``[slice_timing]``, off by default) comes first, on
the volume as read, before realignment (SPM's order): a slice's time belongs
to the scanner's slice, which realignment's resampling would mix with its
neighbours. Motion is then estimated on the corrected volume too (fMRIPrep
estimates it before the correction, to avoid blending two volumes' head
positions): measured on the simulator (36 ascending slices, TR 1 s, 2 %
respiratory signal sampled per slice), estimating on the corrected volume
halves the motion that slice-dependent physiology fakes in a still head
(largest framewise displacement 0.05 mm instead of 0.15 mm), keeps the ROI's
correlation with the true respiratory trace at 0.985 instead of 0.946, and
with 2 mm / 2 degree smooth motion recovers the true translations slightly
better (largest error 0.09 mm instead of 0.12 mm). The quality checks
(DVARS, spikes) read the volume as acquired, so a spike stays in its volume.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._kernels import gaussian_weights, smooth3d
from .motion import MOTION_COLUMNS, Realigner
from .quality import QualityMonitor, QualityRow
from .rois import MaskROI, SphereROI
from .slicetiming import SliceTimer
from .slicetiming_source import choose_slice_times
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
    slice_timing_s: float | None = None  # seconds of slice-timing correction; None when it is off

    def motion_dict(self) -> dict[str, float] | None:
        """Motion with fMRIPrep's names, or None."""
        return None if self.motion is None else dict(zip(MOTION_COLUMNS, map(float, self.motion)))


QUALITY_VOXELS = 8000
"""Brain voxels sampled per volume for the quality measures (DVARS, global signal)."""


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
    slice_timing : rtnf.config.SliceTimingConfig, optional
        Slice-timing correction (off when None or not enabled).
    tr_s : float, optional
        Repetition time (s); needed when slice timing is on.
    """

    def __init__(self, rois: list[SphereROI | MaskROI], motion: Any, quality: Any, sample_brain: bool = False,
                 slice_timing: Any = None, tr_s: float | None = None) -> None:
        self.rois = rois
        self.slice_timing_cfg = slice_timing
        self.tr_s = tr_s
        self.slice_timer: SliceTimer | None = None
        self._index = 0  # the next volume's index when the caller gives none: the slice timer's clock
        self._undo: tuple | None = None  # (index, realigner state, monitor state) before the last run()
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
        slice_timer = self._make_slice_timer(first)
        for roi in self.rois:
            roi.fit(grid)
            log.info("ROI %s: %d voxels", roi.name, roi.n_voxels)
        self.grid = grid
        self.slice_timer = slice_timer
        voxel_mm = np.sqrt(np.sum(grid.affine[:3, :3] ** 2, axis=0))
        fwhm = self.motion_cfg.fwhm_mm
        self._sigma_vox = fwhm / np.sqrt(8 * np.log(2)) / voxel_mm if fwhm > 0 else None
        if self._sigma_vox is not None:
            self._weights = tuple(gaussian_weights(s, 4.0) for s in self._sigma_vox)  # scipy's default truncate
        if self.motion_cfg.enabled:
            if configured is None:
                self.realigner = Realigner(sigma_vox=self.motion_cfg.sigma_vox).fit(first.data, grid.affine)
            else:
                self.realigner = self._fit_configured(configured, grid)
            self.brain_indices = self.realigner.brain_indices_
            # About QUALITY_VOXELS brain voxels are plenty for DVARS and the global signal (a mean of
            # squares over 8,000 voxels varies by 1.6 %), and sampling every second one cost 1 ms a volume.
            brain = self.realigner.brain_indices_
            self._brain = brain[:: max(1, brain.size // QUALITY_VOXELS)]
            self.monitor = QualityMonitor(
                fd_threshold_mm=self.quality_cfg.fd_threshold_mm, spike_z=self.quality_cfg.spike_z
            )
        else:
            flat = first.data.reshape(-1)
            self.brain_indices = np.flatnonzero(flat > 0.2 * np.percentile(flat, 98))
        return self

    def _make_slice_timer(self, first: Volume) -> SliceTimer | None:
        """The slice timer of ``[slice_timing]`` on the first volume's slices, or None when it is off.

        The config's slice times (``slice_times_s`` or ``order``) win over the header's (a warning
        when they differ); with neither, the header's are used. They are fixed for the run from its
        first volume: slice times are part of the protocol, like the grid.

        Raises
        ------
        ConfigError
            Slice timing on, but no slice times (none configured, none in the header), the wrong
            number of them for the volume's slices, or header times beyond the TR.
        """
        cfg = self.slice_timing_cfg
        if cfg is None or not cfg.enabled:
            return None
        if not self.tr_s:
            raise ValueError("Preprocessor: slice timing needs the TR (tr_s)")
        tr = float(self.tr_s)
        chosen = choose_slice_times(cfg, tr, first)
        if chosen.header_difference_s is not None:
            log.warning("slice timing: %s differ from the header's slice times (up to %.3f s); %s used", chosen.source,
                        chosen.header_difference_s, chosen.source)
        reference = None if cfg.reference == "first" else float(cfg.reference)
        timer = SliceTimer(chosen.times_s, tr, axis=chosen.axis, reference_s=reference, method=cfg.method)
        log.info("slice timing: %d slices along axis %d from %s, moved to %.3f s (%s)", len(chosen.times_s),
                 chosen.axis, chosen.source, timer.reference_s, cfg.method)
        return timer

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

    def run(self, volume: Volume, index: int | None = None) -> Preprocessed:
        """Preprocess one volume on the fitted grid (non-finite voxels replaced and counted).

        Parameters
        ----------
        volume : Volume
        index : int, optional
            The volume's index in the run (0-based, missing volumes counted): when it was acquired, in TRs,
            for slice timing. None: the volume after the last one run or skipped.
        """
        volume, n_bad = self._finite(volume)
        index = self._index if index is None else int(index)
        self._index = max(self._index, index + 1)  # a volume given again (resume) never moves the clock back
        # What this volume changes in the realigner and the quality monitor, undone by skip(index) when its
        # processing fails later: the next volume is then compared with the last one recorded, as on a resume.
        self._undo = (index, self.realigner.checkpoint() if self.realigner is not None else None,
                      self.monitor.checkpoint() if self.monitor is not None else None)
        corrected = volume.data  # slice-time corrected when that is on: what realignment sees
        slice_timing_s = None
        if self.slice_timer is not None:
            t0 = time.perf_counter()
            corrected = self.slice_timer.correct(index, volume.data)
            slice_timing_s = time.perf_counter() - t0
        data = corrected
        if self._sigma_vox is not None:  # as gaussian_filter(data, sigma, mode="nearest"), compiled
            data = smooth3d(np.ascontiguousarray(data, dtype=np.float32), self._weights)
        if self.realigner is None:
            raw = np.array([roi.transform(data) for roi in self.rois])
            brain = data.reshape(-1)[self.brain_indices] if self.sample_brain else None
            return Preprocessed(raw, None, None, brain, n_bad, data=data, slice_timing_s=slice_timing_s)
        t0 = time.perf_counter()
        params = self.realigner.estimate(corrected)
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
        return Preprocessed(raw, params, quality, brain, n_bad, realign_s=realign_s, data=data,
                            slice_timing_s=slice_timing_s)

    def skip(self, index: int | None = None) -> None:
        """Note a missing volume: one that never came, or whose processing failed.

        Parameters
        ----------
        index : int, optional
            Its index in the run. When :meth:`run` already took it (its processing raised afterwards), the
            slice timer forgets its sample: the volumes around it are interpolated across it, and the clock
            does not count it twice. None: the volume after the last one run or skipped.
        """
        index = self._index if index is None else int(index)
        self._index = max(self._index, index + 1)
        if self.slice_timer is not None:
            self.slice_timer.forget(index)
        if self._undo is not None and self._undo[0] == index:  # run() took it, then its processing failed
            _, realigner_state, monitor_state = self._undo
            if realigner_state is not None:
                self.realigner.rollback(realigner_state)
            if monitor_state is not None:
                self.monitor.rollback(monitor_state)
        self._undo = None
        if self.monitor is not None:
            self.monitor.skip()
