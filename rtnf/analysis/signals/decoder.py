"""Decoded neurofeedback ("DecNef"): the probability of a target pattern, volume by volume.

A decoder trained offline on a localizer run (``rtnf decoder train``, :mod:`rtnf.analysis.decoder`)
is applied to each realigned volume of a feedback run; the value is the probability of the target
class (0 to 1). Config::

    [motion]
    reference = "decoder/reference.nii.gz"   # realign to the training run's reference: required

    [signals.dec]
    class = "decoder"
    model_dir = "decoder"                    # the folder 'rtnf decoder train -o' wrote
    target_class = "dogs"
    # baseline_volumes = 10                  # percent of the mean of the first 10 volumes instead of
    #                                        # the running mean
    # min_volumes = 5                        # no value before 5 volumes are in the running mean

    [feedback]
    source = "dec"

Per volume (:meth:`DecodedFeedback.step`): the mask's voxels are sampled from the realigned volume,
each is divided by its running mean over the run so far (the current volume included; censored
volumes are left out of the mean) or by its mean over the first ``baseline_volumes``, standardised
with the training statistics, and the logistic model gives the class probabilities; the target's is
the value, its log-odds the extra column ``signal_<name>_logit``. Cost: one trilinear sampling of
the mask and one matrix-vector product (about 0.1 ms for 2,000 voxels; see ``tests/test_decoder.py``).

The model's voxels are indices on the training grid, so the run must be on that grid and realigned
to the training reference: :meth:`DecodedFeedback.fit` refuses another grid, and the first volume
refuses a run realigned to its own first volume (``motion.reference = "first"``, recognised by that
volume's motion being exactly zero), both with the ``motion.reference`` line to add. Nothing is
unpickled: the folder holds arrays (``allow_pickle=False``), JSON and NIfTI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rtnf.analysis.decoder import REFERENCE, DecoderError, DecoderModel, OnlineFeatures, probabilities_of

from .base import FeedbackSignal, SignalContext, SignalError, VolumeInput

log = logging.getLogger(__name__)

#: Affine entries of the run and the training grid may differ by this much (mm), as for motion.reference.
ATOL_MM = 1e-3


class DecodedFeedback(FeedbackSignal):
    """The probability of ``target_class`` under a decoder trained with ``rtnf decoder train``."""

    class Config(BaseModel):
        """The keys of the ``[signals.<name>]`` table (``model_dir`` relative to the config's folder)."""

        model_config = ConfigDict(extra="forbid")
        model_dir: Path
        target_class: str
        # None: percent of each voxel's running mean (volumes so far); N: of its mean over the first N volumes.
        baseline_volumes: Optional[Annotated[int, Field(ge=1, le=10_000)]] = None
        # No value before this many volumes are in the mean.
        min_volumes: Annotated[int, Field(ge=1, le=10_000)] = 5

    columns = ("logit",)  # log-odds of the target class, recorded as signal_<name>_logit

    def fit(self, context: SignalContext) -> None:
        """Load the model, check the run's grid and the target class.

        Raises
        ------
        SignalError
            A folder that is not a decoder, a run on another grid than the training run's, or a
            target class the decoder does not know.
        """
        folder = Path(self.config.model_dir)
        if not folder.is_absolute() and context.config_dir is not None:
            folder = Path(context.config_dir) / folder
        try:
            model = DecoderModel.load(folder)
        except DecoderError as exc:
            raise SignalError(f"invalid value for 'model_dir': {folder}: {exc.message}") from None
        reference_file = folder / REFERENCE
        shape = tuple(int(n) for n in context.grid_shape)
        affine = np.asarray(context.affine, dtype=np.float64)
        if shape != model.grid_shape or not np.allclose(affine, model.affine, atol=ATOL_MM):
            what = (f"shape {shape}, the decoder's {model.grid_shape}" if shape != model.grid_shape else
                    f"affine differs from the decoder's by up to {np.max(np.abs(affine - model.affine)):.3g} mm")
            raise SignalError(
                f"the run's grid is not the decoder's training grid ({what}): the run must be acquired with the "
                f"training run's slice prescription and realigned to its reference (motion.reference = "
                f"\"{reference_file}\")")
        if self.config.target_class not in model.classes:
            raise SignalError(f"invalid value for 'target_class': {self.config.target_class!r}. "
                              f"Allowed: one of the decoder's classes {', '.join(model.classes)}")
        self.model = model
        self.reference_file = reference_file
        self.target = model.classes.index(self.config.target_class)
        self.indices = np.ascontiguousarray(model.mask_indices, dtype=np.intp)
        self.weights, self.bias = model.folded()
        self.features = OnlineFeatures(model.voxel_mean, self.config.baseline_volumes, self.config.min_volumes)
        # The training run itself (its first volume is the reference) may run realigned to its first volume.
        self._is_training_run = self._same_as_training_reference(context.reference, reference_file)
        self._checked = False
        self._refused: str | None = None

    @staticmethod
    def _same_as_training_reference(reference: np.ndarray, path: Path) -> bool:
        import nibabel as nib

        try:
            ref = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        except Exception:  # noqa: BLE001 - an unreadable reference is reported when the pipeline loads it
            return False
        run = np.asarray(reference, dtype=np.float32)
        return ref.shape == run.shape and bool(np.allclose(ref, run, rtol=1e-6, atol=1e-6))

    def _check_realignment(self, volume: VolumeInput) -> None:
        """At the first volume: the run must be realigned to the training reference."""
        self._checked = True
        hint = f"set motion.reference = \"{self.reference_file}\" (the decoder's training reference)"
        if volume.motion is None:
            self._refused = ("motion correction is off; the decoder needs the run realigned to its training "
                             f"reference: {hint}")
        elif not self._is_training_run and np.all(np.abs(np.asarray(volume.motion)) < 1e-9):
            self._refused = ("the run is realigned to its own first volume (motion.reference = \"first\"), not to the "
                             f"decoder's training reference: {hint}")

    def step(self, volume: VolumeInput) -> float | None:
        """The target class's probability for this volume (None while the running mean warms up)."""
        if not self._checked:
            self._check_realignment(volume)
        if self._refused is not None:
            raise SignalError(self._refused)
        ratio = self.features.update(volume.sample(self.indices), include=not volume.censored)
        if ratio is None:
            self.reason = self.features.waiting_reason
            return None
        decision = self.weights @ ratio + self.bias
        p = probabilities_of(decision[None, :])[0, self.target]
        if decision.size == 1:  # two classes: the decision is the log-odds of classes[1]
            logit = float(decision[0]) if self.target == 1 else -float(decision[0])
        else:
            logit = float(np.log(max(p, 1e-300)) - np.log(max(1.0 - p, 1e-300)))
        self.outputs["logit"] = logit
        return float(p)
