"""Pattern expression: the dot product of each volume with a multivariate weight map given in MNI space.

A published signature (for example a pain or affect signature: one weight per MNI voxel) is
brought once, at the run's first volume, onto the run's voxel grid through the MNI registration
the ROIs use (``rtnf roi mni ... --transform``, :class:`~rtnf.apps.roidef.mni.MniRegistration`);
each volume its expression is the weighted sum of the realigned volume's voxels. Config::

    [signals.signature]
    class = "pattern"
    weights = "maps/signature_MNI.nii.gz"   # 3-D NIfTI in MNI152 mm (relative to the config's folder)
    registration = "rois/acc_mni.json"       # reference -> MNI, written by 'rtnf roi mni'
    # registration = "identity"              # only when the run's scanner mm ARE MNI mm (the simulator)
    # mask = "maps/cortex_MNI.nii.gz"        # MNI-space mask: weights outside it (<= 0.5) are dropped
    # threshold = 0.001                      # weights with |w| <= threshold are dropped (map units)
    # center = true                          # subtract the weights' mean over their voxels (default)
    # input = "percent"                      # or "signal": the realigned intensities themselves
    # baseline_volumes = 10                  # percent of the mean of the first 10 volumes, not the running mean
    # min_volumes = 5                        # no value before 5 volumes are in the mean

    [feedback]
    source = "signature"

What the value is
-----------------
``input = "percent"`` (the default): ``expression = sum_v w_v * 100 * (x_v / m_v - 1)``, with ``x_v``
the realigned volume at voxel ``v`` and ``m_v`` that voxel's running mean over the run so far
(current volume included, censored volumes left out) or its mean over the first
``baseline_volumes``: the weights applied to a percent-signal-change image, as signature studies
apply them to percent-scaled beta or contrast images (Wager et al. 2013). Units: map units x
percent signal change. A voxel's level and the scanner's units drop out, so the value is comparable
across runs and sites; a running mean removes each voxel's level, not its slow drift (as for the
decoder, :mod:`rtnf.analysis.decoder`).

``input = "signal"``: ``expression = sum_v w_v * x_v`` on the realigned intensities (map units x
scanner units), the raw dot product; its level depends on the image's intensity and only its
changes mean something.

``center = true`` (default) subtracts the weights' mean over the voxels used, so a change common to
every voxel (a global signal change) has expression 0 and only the pattern counts.

Bringing the map to the run
---------------------------
The map's voxel-to-MNI affine is composed with the registration's inverse (MNI -> the reference's
scanner mm) and the map resampled onto the run's grid trilinearly, by the ROIs' own resampling
(``scipy.ndimage.affine_transform``; nilearn's ``resample_img`` would cost a 3 s import at the
run's first volume): the map is a field, not a label image, and unlike a cubic spline trilinear
interpolation neither overshoots nor spreads a weight beyond its neighbouring voxels; NaNs count as 0.
Weights are a density per map voxel: each resampled weight is multiplied by the ratio of a run
voxel's volume to a map voxel's volume (both in the run's mm), so the sum of the weights, and the
expression of a smooth image, stay those of the map applied at its own resolution. Only voxels of
the run's brain mask with a non-zero weight are used (with ``input = "percent"``, not those darker
than 5 % of their median in the reference: outside the head or in a dropout, as for the decoder);
the fraction of the map's total absolute weight that lands on them (``coverage``) is logged, with a
warning below :data:`LOW_COVERAGE` (a field of view that cuts the map, or a poor registration).

Cost per volume: one trilinear sampling of the weight voxels from the realigned volume and one dot
product, about 0.05 us per voxel (``rtnf bench pipeline --signals pattern`` shows it as the stage
``signal_<name>``): a whole-brain map at 64x64x36 (63,000 voxels of the run's dilated brain mask)
took 2.4-3 ms alone and 8-12 ms median inside a bench run on a loaded machine, a 1,000-voxel map
0.07 ms. ``mask``
or ``threshold`` keep a map to the voxels that matter when the TR is short. Fitting (reading and
resampling the map) costs about 0.3 s once, at the first volume.

References
----------
Wager TD, Atlas LY, Lindquist MA, Roy M, Woo CW, Kross E (2013). An fMRI-based neurologic signature
of physical pain. N Engl J Med 368(15):1388-1397.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rtnf.analysis.decoder import MIN_MEAN_FRACTION, OnlineFeatures
from rtnf.analysis.resample import resample_to_grid
from rtnf.scanner.volume import Grid

from .base import FeedbackSignal, SignalContext, SignalError, VolumeInput

__all__ = ["PatternExpression", "IDENTITY", "LOW_COVERAGE", "weights_on_grid"]

log = logging.getLogger(__name__)

IDENTITY = "identity"
"""``registration = "identity"``: the run's scanner mm are MNI mm (a simulated run, an MNI-space series)."""

LOW_COVERAGE = 0.5
"""Below this fraction of the map's absolute weight on the run's brain voxels, :meth:`PatternExpression.fit` warns."""


class PatternExpression(FeedbackSignal):
    """The expression of an MNI-space weight map in each realigned volume (see the module docstring)."""

    class Config(BaseModel):
        """The keys of the ``[signals.<name>]`` table (paths relative to the config's folder)."""

        model_config = ConfigDict(extra="forbid")
        weights: Path
        # A registration JSON written by 'rtnf roi mni' (reference scanner mm -> MNI mm), or "identity".
        registration: Union[Literal["identity"], Path]
        mask: Optional[Path] = None
        threshold: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
        center: bool = True
        input: Literal["percent", "signal"] = "percent"
        # None: percent of each voxel's running mean (volumes so far); N: of its mean over the first N volumes.
        baseline_volumes: Optional[Annotated[int, Field(ge=1, le=10_000)]] = None
        # No value before this many volumes are in the mean (percent input only).
        min_volumes: Annotated[int, Field(ge=1, le=10_000)] = 5

    def fit(self, context: SignalContext) -> None:
        """Bring the weight map onto the run's grid and keep its brain voxels.

        Raises
        ------
        SignalError
            A missing or unreadable file, a map that is not 3-D, a registration that is not one
            ``rtnf roi mni`` wrote, or no weight left on the run's brain voxels.
        """
        cfg = self.config
        base = None if context.config_dir is None else Path(context.config_dir)
        weights, map_affine = _load_map(_resolve(cfg.weights, base), "weights")
        weights = np.where(np.isfinite(weights), weights, 0.0)
        if np.abs(weights).max(initial=0.0) > np.finfo(np.float32).max:
            # The resampling works in float32: such a weight would become infinite there, then 0.
            raise SignalError(f"invalid value for 'weights': weights beyond {np.finfo(np.float32).max:.3g} in "
                              "absolute value (float32's range); rescale the map")
        if cfg.threshold > 0:
            weights = np.where(np.abs(weights) > cfg.threshold, weights, 0.0)
        if cfg.mask is not None:
            weights = weights * _mask_on(_resolve(cfg.mask, base), weights.shape, map_affine)
        total = float(np.abs(weights).sum())
        if total == 0.0:
            raise SignalError("invalid value for 'weights': no non-zero weight"
                              + (" after 'threshold' and 'mask'" if cfg.threshold > 0 or cfg.mask is not None else ""))
        ref_to_mni = _registration(cfg.registration, base)
        shape = tuple(int(n) for n in context.grid_shape)
        grid_weights = weights_on_grid(weights, map_affine, ref_to_mni, shape, np.asarray(context.affine))
        brain = np.asarray(context.brain_indices, dtype=np.intp)
        w = grid_weights.reshape(-1)[brain]
        keep = w != 0.0
        if not keep.any():
            raise SignalError(
                "invalid value for 'weights': no weight lands on the run's brain voxels (check that the map is in "
                "MNI space and that 'registration' is the run reference's, from 'rtnf roi mni')")
        reference = np.asarray(context.reference, dtype=np.float64).reshape(-1)[brain]
        if cfg.input == "percent":
            # As for the decoder: a voxel far darker than the pattern's others (outside the head, a signal
            # dropout) would put noise over almost 0 into the sum; it is left out (and out of the coverage).
            keep &= reference > MIN_MEAN_FRACTION * np.median(reference[keep])
        self.indices = np.ascontiguousarray(brain[keep])
        w = w[keep]
        self.coverage = float(np.abs(w).sum() / total)
        if cfg.center:
            if np.ptp(w) == 0:
                # Centring would make every weight 0: the expression would be 0 at every volume, silently.
                raise SignalError(
                    f"invalid value for 'weights': all {w.size} weights on the run's voxels are equal (a mask, not "
                    "a pattern): centring would make every weight 0; set center = false to sum the voxels")
            w = w - w.mean()
        self.weights = np.ascontiguousarray(w)
        self.weight_sum = float(self.weights.sum())
        # The reference's intensities floor the running mean (a dropout cannot make the percent explode).
        self.features = OnlineFeatures(reference[keep], cfg.baseline_volumes, cfg.min_volumes)
        how = "as given" if isinstance(cfg.registration, str) and cfg.registration == IDENTITY else "registered"
        log.info("signal %s: pattern of %d voxels (%s), %.0f %% of the map's absolute weight on the run's brain",
                 self.name, self.indices.size, how, 100 * self.coverage)
        if self.coverage < LOW_COVERAGE:
            log.warning("signal %s: only %.0f %% of the weight map's absolute weight lies on the run's brain voxels "
                        "(field of view, brain mask or registration): its expression leaves out the rest",
                        self.name, 100 * self.coverage)

    def step(self, volume: VolumeInput) -> float | None:
        """The pattern's expression in this volume (None while the running mean warms up)."""
        x = np.asarray(volume.sample(self.indices), dtype=np.float64)
        if self.config.input == "signal":
            return float(self.weights @ x)
        ratio = self.features.update(x, include=not volume.censored)
        if ratio is None:
            self.reason = self.features.waiting_reason
            return None
        # sum_v w_v * 100 * (ratio_v - 1), one dot product
        return 100.0 * (float(self.weights @ ratio) - self.weight_sum)


def weights_on_grid(
    weights: np.ndarray, map_affine: np.ndarray, ref_to_mni: np.ndarray, shape: tuple[int, int, int],
    affine: np.ndarray,
) -> np.ndarray:
    """A weight map in MNI space resampled onto a run's grid, per run voxel.

    Parameters
    ----------
    weights : ndarray, shape (i, j, k)
        Weights per map voxel (no NaN).
    map_affine : ndarray, shape (4, 4)
        Map voxel -> MNI mm.
    ref_to_mni : ndarray, shape (4, 4)
        The run's scanner mm -> MNI mm (:attr:`MniRegistration.ref_to_mni`).
    shape, affine
        The run's grid (voxel -> scanner mm).

    Returns
    -------
    ndarray of float64, shape ``shape``
        The map interpolated at the run's voxel centres (trilinear; 0 beyond half a map voxel outside
        the map) times the ratio of voxel volumes (run voxel over map voxel, in the run's mm), so that
        its sum is about the map's.
    """
    ref_to_mni = np.asarray(ref_to_mni, dtype=np.float64)
    map_affine = np.asarray(map_affine, dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    # The ROIs' resampling (scipy.ndimage, already loaded by the pipeline: no import at the first volume),
    # trilinear: no overshoot, and a voxel has a weight only within one map voxel of a non-zero weight (a
    # cubic spline's ringing would give every voxel of the grid a tiny one).
    data = resample_to_grid(weights, map_affine, Grid(tuple(shape), affine), order=1, world_to_src=ref_to_mni)
    # map voxel -> MNI mm -> the run's scanner mm: a map voxel's volume there
    in_run = np.linalg.inv(ref_to_mni) @ map_affine
    ratio = abs(float(np.linalg.det(affine[:3, :3]))) / abs(float(np.linalg.det(in_run[:3, :3])))
    return np.nan_to_num(np.asarray(data, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0) * ratio


def _resolve(path: Path, base: Path | None) -> Path:
    return path if path.is_absolute() or base is None else base / path


def _load_map(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NIfTI's data (float64) and affine; :class:`SignalError` naming ``key`` otherwise."""
    import nibabel as nib

    if not path.is_file():
        raise SignalError(f"invalid value for '{key}': file not found: {path}")
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - nibabel's errors vary by file type: one message
        raise SignalError(
            f"invalid value for '{key}': cannot read {path} as NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SignalError(f"invalid value for '{key}': {path} has shape {data.shape}. Allowed: a 3-D map")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SignalError(f"invalid value for '{key}': {path} has no usable voxel-to-mm affine")
    return data, affine


def _mask_on(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """An MNI-space mask (kept where > 0.5) on the weight map's grid (nearest neighbour), as 0/1."""
    data, mask_affine = _load_map(path, "mask")
    inside = (np.nan_to_num(data) > 0.5).astype(np.float32)
    on_grid = resample_to_grid(inside, mask_affine, Grid(tuple(shape), np.asarray(affine)), order=0)
    return (on_grid > 0.5).astype(np.float64)


def _registration(value: Any, base: Path | None) -> np.ndarray:
    """The reference -> MNI affine: identity, or read from a JSON 'rtnf roi mni' wrote."""
    if isinstance(value, str) and value == IDENTITY:
        return np.eye(4)
    from rtnf.apps.roidef._common import RoiDefError
    from rtnf.apps.roidef.mni import MniRegistration

    path = _resolve(Path(value), base)
    if not path.is_file():
        raise SignalError(f"invalid value for 'registration': file not found: {path} (write one with "
                          "'rtnf roi mni ... -r <reference>', or \"identity\" for a run in MNI mm)")
    try:
        m = MniRegistration.load(path).ref_to_mni
    except RoiDefError:
        raise SignalError(f"invalid value for 'registration': {path} is not a registration written by "
                          "'rtnf roi mni' (a JSON with a 4x4 'ref_to_mni')") from None
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-6:
        raise SignalError(f"invalid value for 'registration': {path} holds a singular or non-finite matrix")
    return m
