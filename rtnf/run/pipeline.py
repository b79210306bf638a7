"""Per-volume processing: file -> ROI signals -> incremental GLM -> feedback.

:class:`VolumeProcessor` turns one volume's file into one :class:`VolumeResult`:
the bodies of its ``volume`` and ``feedback`` messages (complete but for the
run loop's stamps: ``t_published`` and the ``late``/``out_of_order`` flags),
the image as received, the operator's work for that volume (whole-brain model,
t-map, preview: an :class:`~rtnf.run.operator.OperatorJob` the run loop hands
to a worker after the feedback has left) and the time each stage took. It
holds the run's model state and nothing else: no sockets, no files, no threads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtnf.config import Config
from rtnf.analysis._kernels import warm_up
from rtnf.analysis.confounds import ConfoundContext, ConfoundError, ConfoundInput, ConfoundSource, make_confounds
from rtnf.analysis.design import Design, make_design
from rtnf.analysis.feedback import FeedbackComputer, FeedbackValue
from rtnf.run.shaping_history import load_history
from rtnf.analysis.motion import motion_regressors
from rtnf.analysis.multiecho import EchoCombiner
from rtnf.analysis.preprocess import NonFiniteVolume, Preprocessed, Preprocessor
from rtnf.analysis.roi_model import RoiModel, RoiValues
from rtnf.analysis.wholebrain import WholeBrainModel, preview_body, slice_indices
from rtnf.analysis.signals import SignalContext, SignalError, VolumeInput
from rtnf.analysis.signals.registry import make_signal
from rtnf.config import ConfigError
from rtnf.wire.topics import FeedbackMessage, VolumeMessage
from .operator import OperatorJob
from rtnf.scanner.export import Arrival
from rtnf.scanner.filenames import FileNames
from rtnf.wire.messages import volume_label
from rtnf.scanner.nifti import VolumeReadError
from rtnf.scanner.rewrite import read_rewritten
from rtnf.analysis.protocol import Protocol
from rtnf.analysis.rois import make_roi
from rtnf.scanner.volume import Grid, Volume

log = logging.getLogger(__name__)

SLOW_SIGNAL_TR_FRACTION = 0.25
"""A feedback signal whose step takes more than this fraction of the TR is warned about (once a run)."""
REWRITE_WAIT_S = 1.0
"""Longest wait (s, and at most a TR) for a volume's files written again after hand-over to settle before
they are read once more; later volumes wait meanwhile."""


@dataclass
class VolumeResult:
    """What processing one volume gives the run loop.

    Attributes
    ----------
    volume, feedback : VolumeMessage, FeedbackMessage
        The ``volume`` and ``feedback`` messages (:mod:`rtnf.wire.topics`),
        complete but for what :meth:`stamp` sets.
    received : Volume or None
        The volume as read (for ``output.save_volumes``); None when missing.
    stage_s : dict of str to float
        Seconds per stage of this volume (``decode``, ``multiecho`` for multi-echo volumes, ``slice_timing``
        when on, ``realign``, ``glm``,
        ``feedback``; ``wholebrain`` and ``preview`` once the operator's
        worker has made them), for ``rtnf bench pipeline``.
    operator : OperatorJob or None
        The operator's work for this volume (None when there is none).
    """

    volume: VolumeMessage
    feedback: FeedbackMessage
    received: Any = None
    stage_s: dict[str, float] = field(default_factory=dict)
    operator: OperatorJob | None = None

    @property
    def index(self) -> int:
        """Kept-volume index (0-based)."""
        return self.volume.index

    @property
    def missing(self) -> bool:
        """Whether the volume never arrived or could not be used."""
        return bool(self.volume.flags["missing"])

    def stamp(self, t_published: float, late: bool = False, out_of_order: bool = False) -> None:
        """Set what only the run loop knows: when it sends the messages (s, epoch) and whether the volume was late."""
        self.volume.timing["t_published"] = t_published
        self.feedback.t_published = t_published
        self.volume.flags["late"] = late
        self.volume.flags["out_of_order"] = out_of_order


def _confound_row(values: Any, n: int) -> tuple[np.ndarray | None, str | None]:
    """A confound source's row as ``n`` finite float64 values, or (None, why it is not one).

    Accepted: a sequence or 1-D array of ``n`` real numbers (a scalar when ``n`` is 1). Anything else (text,
    None among the values, a nested or wrong-length list, a non-finite value) is refused, never raised.
    """
    try:
        row = np.asarray(values)
        if row.dtype.kind not in "iuf" or row.ndim > 1:
            return None, f"gave {type(values).__name__} values that are not a row of numbers"[:300]
        row = row.astype(np.float64).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - whatever the object is, it costs the source's terms only
        return None, f"gave values that are not numbers ({type(exc).__name__}: {exc})"[:300]
    if row.shape != (n,) or not np.all(np.isfinite(row)):
        return None, f"gave {row.size} values (finite: {bool(np.isfinite(row).all())}), expected {n} finite ones"
    return row, None


class VolumeProcessor:
    """The model state of one run and the steps applied to each volume.

    Parameters
    ----------
    cfg : Config
        Session config.
    protocol : Protocol, optional
        Defaults to ``cfg.make_protocol()``.
    design : Design, optional
        Defaults to the design built from the protocol, ``cfg.model`` and the confound sources.
    confounds : list of ConfoundSource, optional
        Defaults to the sources ``[confounds]`` asks for (:func:`rtnf.analysis.confounds.make_confounds`).
    """

    def __init__(
        self,
        cfg: Config,
        protocol: Protocol | None = None,
        design: Design | None = None,
        confounds: list[ConfoundSource] | None = None,
    ) -> None:
        self.cfg = cfg
        self.names = FileNames(cfg.output.file_names)
        self.protocol = protocol or cfg.make_protocol()
        self.confounds = make_confounds(cfg) if confounds is None else confounds
        self.design = design or make_design(
            self.protocol, cfg.model.hrf, cfg.model.drift_cutoff_s, cfg.model.motion_regressors,
            confounds=tuple(name for source in self.confounds for name in source.names),
        )
        self.labels = self.protocol.labels()
        self.block_of = np.empty(self.protocol.n_volumes, dtype=int)
        for seg in self.protocol.segments():
            self.block_of[seg.start : seg.stop] = seg.number
        self.rois = [make_roi(name, roi_cfg) for name, roi_cfg in cfg.rois.items()]
        self.roi_names = [roi.name for roi in self.rois]
        fb = cfg.feedback
        running = int(round(fb.running_baseline_s / self.protocol.tr_s)) if fb.baseline == "running" else None
        self.model = RoiModel(
            self.design, self.protocol, len(self.rois), cfg.model.drift_cutoff_s, fb.min_baseline_volumes, running
        )
        # [feedback.shaping]: the participant's earlier blocks, read once from the recorded runs.
        self.feedback = FeedbackComputer(fb, self.roi_names, self.protocol, shaping_history=load_history(cfg))
        self.signals = [make_signal(name, table) for name, table in cfg.signals.items()]
        self._signal_alarms: set[str] = set()  # signals whose failure has been raised as an alarm
        self._confound_alarms: set[str] = set()  # confound sources whose values are missing, as alarmed
        self._slow_signals: set[str] = set()  # signals whose slowness has been warned about
        self._failed_steps: set[str] = set()  # steps after the model update that raised, as alarmed
        # Multi-echo volumes (scanner.echoes > 1) are combined before everything else (rtnf.analysis.multiecho).
        self.multiecho = (EchoCombiner(cfg.multiecho.fit_volumes, cfg.multiecho.before_fit)
                          if cfg.scanner.echoes > 1 else None)
        self.preprocessor = Preprocessor(self.rois, cfg.motion, cfg.quality, sample_brain=False,
                                         slice_timing=cfg.slice_timing, tr_s=self.protocol.tr_s)
        if cfg.motion.enabled or cfg.motion.fwhm_mm > 0:
            warm_up()  # the compiled kernels load now (0.4 s), not on the first volume with others queued behind it
        self.grid: Grid | None = None
        self._previous_motion: np.ndarray | None = None
        self._last_value: float | None = None  # last uncensored feedback value, for censor_action "hold"
        self.wholebrain: WholeBrainModel | None = None
        self._trust_note: str | None = None  # why the whole-brain model is reduced, as last logged
        self._last_added: int | None = None  # latest volume in the whole-brain model (operator's thread)
        self._refreshed: int | None = None  # volume of the latest t-map (operator's thread)
        self._planes: dict[str, np.ndarray] | None = None
        self._roi_masks: dict[str, np.ndarray] = {}
        self._preview_scale = 1.0

    def _read(self, index: int, arrival: Arrival) -> Volume:
        """Read the volume; files written again after their hand-over (a duplicate export) are read once more.

        Raises
        ------
        VolumeReadError
            The files cannot be read (and were not rewritten, or cannot be read once rewritten either).
        """
        try:
            return arrival.load()
        except VolumeReadError as exc:
            # A rewrite read midway looks truncated; its complete copy follows within a file's write time.
            volume = read_rewritten(arrival, limit_s=min(self.protocol.tr_s, REWRITE_WAIT_S))
            if volume is None:
                raise exc
            log.info("%s (%s) was written again while it waited to be read; read again", self._label(index),
                     arrival.name)
            return volume

    def process(self, index: int, acquisition: int, arrival: Arrival) -> VolumeResult:
        """Process kept volume ``index``, read through ``arrival.load()``.

        A file that cannot be read, or whose grid differs from the run's, is
        logged and treated as a missing volume: the run goes on.
        """
        t_detected = arrival.t_detected
        name = arrival.name
        t0 = time.perf_counter()
        try:
            volume = self._read(index, arrival)
        except VolumeReadError as exc:
            log.warning("%s unreadable, treated as missing: %s", self._label(index), self.names.redact(str(exc), *arrival.paths))
            return self.missing(index, acquisition, name, t_detected, reason="unreadable file")
        stage_s = {"decode": time.perf_counter() - t0}
        if self.multiecho is not None:
            if volume.echoes is None:  # only a 4D NIfTI replay hands over volumes without the export reader
                raise ConfigError(f"scanner.echoes = {self.cfg.scanner.echoes}, but {name} is one echo (a replayed 4D "
                                  "NIfTI gives one volume per frame). Allowed: scanner.echoes = 1, or replay the "
                                  "export folder of the echo files.")
            t0 = time.perf_counter()
            volume = dataclasses.replace(volume, data=self.multiecho.combine(volume.echoes, volume.echo_times_ms))
            stage_s["multiecho"] = time.perf_counter() - t0
            if self.multiecho.n_fitted == 1 and self.preprocessor.monitor is not None:
                # The fitted combination's noise differs from the pre-fit mean's: against the pre-fit volumes'
                # DVARS every later volume was a spike (a flagged volume never joins the history), censored
                # for the rest of the run. The quality statistics start again from the first combined volume.
                self.preprocessor.monitor.reset()
        t_read = time.time()
        if self.grid is None:
            n_bad = int(volume.data.size - np.count_nonzero(np.isfinite(volume.data)))
            if n_bad:
                # The first usable volume becomes the run's reference (realignment, the value that
                # replaces a bad voxel later): one with NaN or infinite voxels must not be it.
                log.warning("%s (%s): %d non-finite voxels in what would be the run's reference volume; treated "
                            "as missing, the next volume becomes the reference", self._label(index), name, n_bad)
                return self.missing(index, acquisition, name, t_detected, reason="non-finite voxels in the first volume")
            self.preprocessor.fit(volume)
            self._fit_extras(volume, index)
            self.grid = volume.grid  # only now is the run set up: a config error before this stops the run
        elif not volume.grid.same_as(self.grid):
            log.warning(
                "%s (%s) has shape %s, expected %s (or a different affine); treated as missing",
                self._label(index), name, volume.data.shape, self.grid.shape,
            )
            return self.missing(index, acquisition, name, t_detected, reason="wrong matrix or geometry")
        try:
            pre = self.preprocessor.run(volume, index)  # the slice timer places it at its true acquisition time
        except NonFiniteVolume as exc:
            log.warning("%s: %s; treated as missing", self._label(index), exc)
            return self.missing(index, acquisition, name, t_detected, reason="no finite voxel")
        stage_s["realign"] = pre.realign_s
        if pre.slice_timing_s is not None:
            stage_s["slice_timing"] = pre.slice_timing_s
        t_preprocessed = time.time()
        censored = pre.quality is not None and pre.quality.censored
        regressors = None
        if self.cfg.model.motion_regressors:
            regressors = motion_regressors(pre.motion, self._previous_motion, self.cfg.model.motion_regressors)
        confounds = self._confound_values(index, volume.t_acquired, pre, stage_s)
        if confounds is not None:  # a source without values enters zeros: its terms have no effect on this volume
            filled = np.nan_to_num(confounds, nan=0.0)
            regressors = filled if regressors is None else np.concatenate([regressors, filled])
        timing = {"t_acquired": volume.t_acquired, "t_detected": t_detected, "t_read": t_read,
                  "t_preprocessed": t_preprocessed, "t_modelled": None, "t_published": None}
        # A censored volume is shown to the operator but kept out of the model.
        t0 = time.perf_counter()
        n_before = self.model.glm.n_obs
        try:
            values = self.model.update(index, pre.raw, regressors, include=not censored)
        except Exception as exc:
            if self.model.glm.n_obs == n_before:
                raise  # the model never took it: a missing volume (the run loop records it so)
            # In the model: never "missing", or the model and a resume (which skips it) would disagree.
            values = [RoiValues(float(r), None, None) for r in pre.raw]
            self._previous_motion = pre.motion
            fb, signals, failed = self._step_failed(index, "the ROI model", exc), None, True
        else:
            self._previous_motion = pre.motion  # only with the model: a volume missing from it never counts
            stage_s["glm"] = time.perf_counter() - t0
            fb, signals, failed = self._feedback_of(index, values, pre, censored, stage_s)
        rois = {name: {"raw": v.raw, "clean": v.clean, "psc": v.psc} for name, v in zip(self.roi_names, values)}
        timing["t_modelled"] = time.time()
        body, feedback = self._safe_bodies(index, acquisition, name, rois, timing, fb, pre, signals, confounds, failed)
        return VolumeResult(body, feedback, volume, stage_s, self._operator_job(index, pre, regressors, censored, stage_s))

    def _feedback_of(
        self, index: int, values: list[RoiValues], pre: Preprocessed, censored: bool, stage_s: dict[str, float]
    ) -> tuple[FeedbackValue, dict[str, dict[str, Any]] | None, bool]:
        """The feedback value, the signals' results and whether a step failed, for a volume the model has taken.

        A step that raises (feedback computation, shaping) costs this volume's feedback only (null, with a
        one-line reason and an alarm once): the volume is in the model, so it is recorded with its values.
        """
        signals = None
        try:
            signals = self._step_signals(index, values, pre, censored, stage_s)
            t1 = time.perf_counter()
            fb = self._censor(self.feedback.step(index, values, self.model, self._source(signals)), pre.quality)
            stage_s["feedback"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            self.feedback.shaping(index)  # scores a block whose lagged window ends here (the messages read it again)
            stage_s["shaping"] = time.perf_counter() - t1
        except Exception as exc:  # noqa: BLE001 - after the model update the volume is kept, its feedback is not
            return self._step_failed(index, "feedback", exc), signals, True
        return fb, signals, False

    def _step_failed(self, index: int, step: str, exc: Exception) -> FeedbackValue:
        """The null feedback of a volume whose ``step`` raised once the ROI model had it (one line); alarms once
        per step and run: the rows give the reason for every volume."""
        reason = " ".join(f"{step} failed: {type(exc).__name__}: {exc}".split())[:300]
        if step not in self._failed_steps:
            self._failed_steps.add(step)
            log.error("%s: %s (the volume is recorded with its values, its feedback is null; the run goes on)",
                      self._label(index), reason, exc_info=exc, extra={"alarm": "feedback_failed", "ok": False})
        return FeedbackValue(None, reason, kind=self.cfg.feedback.kind)

    def _safe_bodies(
        self, index: int, acquisition: int, name: str | None, rois: dict[str, dict[str, float | None]],
        timing: dict[str, float | None], fb: FeedbackValue, pre: Preprocessed,
        signals: dict[str, dict[str, Any]] | None, confounds: np.ndarray | None, failed: bool = False,
    ) -> tuple[VolumeMessage, FeedbackMessage]:
        """The messages of a volume the model has taken; if building them raises, the same without what raised.

        Only the feedback's parts that read the feedback state (direction, shaping) can fail here: without
        them the row keeps its ROI values and a null feedback with the reason. ``failed``: ``fb`` is already
        the null feedback of a failed step, whose reason is kept (the same fault often raises here again).
        """
        try:
            return self._bodies(index, acquisition, name, rois, timing, fb, missing=False, pre=pre,
                                signals=signals, confounds=confounds)
        except Exception as exc:  # noqa: BLE001 - the volume is in the model: it is recorded, never "missing"
            if not failed:
                fb = self._step_failed(index, "building the messages", exc)
            return self._bodies(index, acquisition, name, rois, timing, fb, missing=False, pre=pre,
                                signals=signals, confounds=confounds, feedback_state=False)

    def _confound_values(
        self, index: int, t_acquired: float | None, pre: Preprocessed, stage_s: dict[str, float]
    ) -> np.ndarray | None:
        """Every confound source's values for this volume, in the design's order (None without sources).

        A source without values for this volume (a stalled stream) gives NaN (the model enters zeros: its
        terms then have no effect on this volume; the table records n/a) and raises an alarm once, and says
        so again when it recovers.
        """
        if not self.confounds:
            return None
        data, params = pre.data, pre.motion
        volume = ConfoundInput(index=index, onset_s=index * self.protocol.tr_s, t_acquired=t_acquired,
                               motion=pre.motion, sample=lambda indices: self.preprocessor.sample(data, params, indices))
        parts = []
        for source in self.confounds:
            t0 = time.perf_counter()
            source.reason = None
            try:
                values = source.row(volume)
            except Exception as exc:  # noqa: BLE001 - a source's failure costs its terms for this volume, never the run
                values, source.reason = None, f"failed: {type(exc).__name__}: {exc}"[:300]
            if values is not None:
                # A value that is not a row of finite numbers counts as no value: converted inside the check,
                # it can never raise out of the volume's processing.
                values, bad = _confound_row(values, len(source.names))
                if values is None:
                    source.reason = bad
            stage_s[f"confound_{source.name}"] = time.perf_counter() - t0
            if values is None:
                if source.name not in self._confound_alarms:
                    self._confound_alarms.add(source.name)
                    log.error("%s: confounds.%s has no values (%s): the model goes on without its terms until it "
                              "recovers", self._label(index), source.name, source.reason or "no reason given",
                              extra={"alarm": f"confound_{source.name}", "ok": False})
                values = np.full(len(source.names), np.nan)
            elif source.name in self._confound_alarms:
                self._confound_alarms.discard(source.name)
                log.info("%s: confounds.%s has values again", self._label(index), source.name,
                         extra={"alarm": f"confound_{source.name}", "ok": True})
            parts.append(values)
        return np.concatenate(parts)

    def close(self) -> None:
        """Release what the confound sources opened (physiological streams); once, at the end of the run."""
        for source in self.confounds:
            try:
                source.close()
            except Exception as exc:  # noqa: BLE001 - the other sources still close
                log.error("confounds.%s did not close cleanly: %s", source.name, exc)

    def _step_signals(
        self, index: int, values: list, pre: Preprocessed, censored: bool, stage_s: dict[str, float]
    ) -> dict[str, dict[str, Any]]:
        """Every configured feedback signal's result for this volume (``signals`` of the volume message).

        A signal that raises costs its value for this volume (null, with the reason) and raises an alarm
        once; the run goes on.
        """
        if not self.signals:
            return {}
        names = self.roi_names
        data, params = pre.data, pre.motion
        volume = VolumeInput(
            index=index,
            condition=self.labels[index],
            raw={n: v.raw for n, v in zip(names, values)},
            clean={n: v.clean for n, v in zip(names, values)},
            psc={n: v.psc for n, v in zip(names, values)},
            motion=pre.motion,
            censored=censored,
            sample=lambda indices: self.preprocessor.sample(data, params, indices),
        )
        out = {}
        for signal in self.signals:
            t0 = time.perf_counter()
            signal.reason, signal.outputs = None, {}
            try:
                value = signal.step(volume)
                value = None if value is None else float(value)
                reason = signal.reason if value is None else None
                outputs = {str(k)[:40]: (None if v is None else float(v)) for k, v in (signal.outputs or {}).items()}
            except Exception as exc:  # noqa: BLE001 - a signal's bug costs its value, never the run
                outputs = {}
                value, reason = None, f"signal {signal.name} failed: {type(exc).__name__}: {exc}"[:300]
                if signal.name not in self._signal_alarms:
                    self._signal_alarms.add(signal.name)
                    log.error("%s: %s (the run goes on; this signal's value is null while it fails)",
                              self._label(index), reason, exc_info=exc, extra={"alarm": f"signal_{signal.name}",
                                                                               "ok": False})
            seconds = stage_s[f"signal_{signal.name}"] = time.perf_counter() - t0
            if seconds > SLOW_SIGNAL_TR_FRACTION * self.protocol.tr_s and signal.name not in self._slow_signals:
                self._slow_signals.add(signal.name)
                log.warning("%s: signal %s took %.0f ms, more than %.0f %% of the TR: the feedback waits for it",
                            self._label(index), signal.name, seconds * 1e3, SLOW_SIGNAL_TR_FRACTION * 100)
            out[signal.name] = {"value": value, "reason": reason or (None if value is not None else "no value"),
                                "outputs": outputs, "seconds": seconds}
        return out

    def _source(self, signals: dict[str, dict[str, Any]]) -> tuple[float | None, str | None] | None:
        """The value of the signal ``feedback.source`` names, or None to feed back ROI activity."""
        source = self.cfg.feedback.source
        if source is None:
            return None
        result = signals[source]
        return result["value"], None if result["value"] is not None else f"{source}: {result['reason']}"

    def _operator_job(
        self, index: int, pre: Preprocessed, regressors: np.ndarray | None, censored: bool, stage_s: dict[str, float]
    ) -> OperatorJob | None:
        """The operator's work for this volume, done by the run loop's worker after the feedback has left.

        The job keeps this volume's data and motion: it may run after the next volume is processed.
        """
        if self.wholebrain is None and self._planes is None:
            return None
        data, params = pre.data, pre.motion
        add = None
        if self.wholebrain is not None and not censored:  # a censored volume stays out of the model

            def add() -> None:
                values = self.preprocessor.sample(data, params, self.preprocessor.brain_indices)
                self.wholebrain.add(index, values, regressors)
                self._last_added = index

        return OperatorJob(index, add, lambda latest: self._products(latest, data, params), stage_s)

    def _products(self, index: int, data: np.ndarray, params: np.ndarray | None) -> dict[str, Any] | None:
        """Refresh the t-map and build the console's ``preview`` body after volume ``index`` (operator's thread)."""
        if self.wholebrain is not None:
            if self._last_added is not None and self._last_added != self._refreshed:
                self.wholebrain.refresh(self._last_added)
                self._refreshed = self._last_added
            self._say_trust(index)
        if self._planes is None:
            return None
        image = {name: self.preprocessor.sample(data, params, idx.reshape(-1)).reshape(idx.shape)
                 for name, idx in self._planes.items()}
        t_volume = self.wholebrain.t_volume() if self.wholebrain is not None else None
        return preview_body(index, self._planes, image, t_volume, self._roi_masks, self._preview_scale, self.grid)

    def _label(self, index: int) -> str:
        """The volume as people count it (:func:`rtnf.wire.messages.volume_label`)."""
        return volume_label(index, self.protocol.n_volumes)

    def _say_trust(self, index: int) -> None:
        """Log once when the whole-brain model becomes reduced by left-out volumes, and once when it recovers."""
        note = self.wholebrain.trust_note(index)
        if note != self._trust_note:
            if note is not None:
                log.warning("%s: %s", self._label(index), note)
            elif self._trust_note is not None:
                log.info("%s: whole-brain t-map from the full model again", self._label(index))
            self._trust_note = note

    def _fit_extras(self, first: Any, index: int) -> None:
        """Confound sources, feedback signals, whole-brain model and preview planes, set up on the first volume."""
        grid = first.grid
        if self.confounds:
            t_first = None if first.t_acquired is None else first.t_acquired - index * self.protocol.tr_s
            context = ConfoundContext(
                grid_shape=tuple(grid.shape), affine=grid.affine, reference=first.data,
                brain_indices=self.preprocessor.brain_indices,
                roi_indices={roi.name: roi.indices_ for roi in self.rois},
                tr_s=self.protocol.tr_s, n_volumes=self.protocol.n_volumes, t_first=t_first,
                config_dir=self.cfg.base_dir,
            )
            for source in self.confounds:
                try:
                    source.fit(context)
                except ConfoundError as exc:  # the same for every volume: the run stops, one message
                    raise ConfigError(f"confounds.{source.name}: {exc}") from None
        if self.signals:
            context = SignalContext(
                grid_shape=tuple(grid.shape), affine=grid.affine, reference=first.data,
                roi_indices={roi.name: roi.indices_ for roi in self.rois},
                brain_indices=self.preprocessor.brain_indices, protocol=self.protocol, tr_s=self.protocol.tr_s,
                config_dir=self.cfg.base_dir,
            )
            for signal in self.signals:
                try:
                    signal.fit(context)
                except Exception as exc:  # noqa: BLE001 - the same for every volume: the run stops, one message
                    what = str(exc) if isinstance(exc, SignalError) else f"fit failed: {type(exc).__name__}: {exc}"
                    raise ConfigError(f"signals.{signal.name}: {what}") from None
        if self.cfg.model.whole_brain:
            contrast = self.cfg.model.contrast or self.protocol.task_conditions[0]
            column = self.design.names.index(contrast)
            self.wholebrain = WholeBrainModel(
                self.design, self.preprocessor.brain_indices, grid, column, self.protocol.tr_s, self.cfg.model.drift_cutoff_s
            )
            log.info("whole-brain model: %d voxels, t-map of %s", self.preprocessor.brain_indices.size, contrast)
        if self.cfg.publish.preview:
            target = self.rois[self.roi_names.index(self.cfg.feedback.targets[0])]
            ijk = np.array(np.unravel_index(target.indices_, grid.shape)).mean(axis=1).round().astype(int)
            self._planes = slice_indices(grid, tuple(ijk))
            self._roi_masks = {roi.name: roi.mask(grid) for roi in self.rois}
            self._preview_scale = float(np.percentile(first.data, 99.5)) or 1.0

    def _censor(self, fb: FeedbackValue, quality) -> FeedbackValue:
        """Apply quality.censor_action to the feedback of a censored volume."""
        if not self.cfg.feedback.enabled:
            return fb  # nothing is shown in this run anyway
        if quality is None or not quality.censored:
            if fb.value is not None:
                self._last_value = fb.value
            return fb
        action = self.cfg.quality.censor_action
        reasons = ", ".join(quality.reasons)
        if action == "keep":
            return fb
        if action == "hold" and self._last_value is not None:
            return FeedbackValue(self._last_value, None, fb.signal, fb.kind, fb.display_s)
        return FeedbackValue(None, f"censored: {reasons}", fb.signal, fb.kind, fb.display_s)

    def missing(
        self, index: int, acquisition: int | None, name: str | None, t_detected: float | None, reason: str = "missing volume"
    ) -> VolumeResult:
        """The result of a volume that never arrived or could not be used (also one whose processing raised)."""
        self.preprocessor.skip(index)  # by index: a volume preprocessed before it failed is not counted twice
        timing = {"t_acquired": None, "t_detected": t_detected, "t_read": None, "t_preprocessed": None,
                  "t_modelled": None, "t_published": None}
        rois = {name: {"raw": None, "clean": None, "psc": None} for name in self.roi_names}
        fb = FeedbackValue(None, reason, kind=self.cfg.feedback.kind)
        try:
            return VolumeResult(*self._bodies(index, acquisition, name, rois, timing, fb, missing=True))
        except Exception as exc:  # noqa: BLE001 - a missing volume's row is never lost to the feedback's state
            self._step_failed(index, "building the messages", exc)  # the alarm, once
            return VolumeResult(*self._bodies(index, acquisition, name, rois, timing, fb, missing=True,
                                              feedback_state=False))

    def _bodies(
        self,
        index: int,
        acquisition: int | None,
        file: str | None,
        rois: dict[str, dict[str, float | None]],
        timing: dict[str, float | None],
        fb: FeedbackValue,
        missing: bool,
        pre: Preprocessed | None = None,
        signals: dict[str, dict[str, Any]] | None = None,
        confounds: np.ndarray | None = None,
        feedback_state: bool = True,
    ) -> tuple[VolumeMessage, FeedbackMessage]:
        """The ``volume`` and ``feedback`` messages: the one place they are built.

        ``model_construct``: the fields are rtnf's own, checked where they are computed; validating them
        again would cost the feedback path (the receivers validate, see :mod:`rtnf.wire.topics`).
        ``feedback_state``: False leaves out what reads the feedback's state (the scored block's direction,
        shaping), for a volume whose feedback failed there.
        """
        condition = self.labels[index]
        q = pre.quality if pre is not None else None
        # The feedback's direction: the way of "signal" that "value" shows as success (the scored block's for an
        # intermittent score); the volume's: the way its condition asks for (None in the baseline).
        direction = self.feedback.direction(index) if feedback_state else self.protocol.direction(condition)
        volume = VolumeMessage.model_construct(
            index=index,
            acquisition=acquisition,
            n_volumes=self.protocol.n_volumes,
            onset_s=index * self.protocol.tr_s,
            condition=condition,
            block=int(self.block_of[index]),
            direction=self.protocol.direction(condition),
            rois=rois,
            motion=pre.motion_dict() if q is not None else None,
            framewise_displacement=q.framewise_displacement if q is not None else None,
            quality=None if q is None else {
                "dvars": q.dvars, "global_signal": q.global_signal, "spike": q.spike, "reasons": list(q.reasons),
            },
            flags={"missing": missing, "censored": bool(q is not None and q.censored), "late": False,
                   "out_of_order": False},
            timing=timing,
            file=file,
        )
        if self.confounds:  # only then: clients of a run without confounds see the message they always saw
            names = self.design.confounds
            volume.confounds = dict.fromkeys(names) if confounds is None else {
                n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, confounds)}
        if self.signals:  # only then: clients of a run without signals see the message they always saw
            volume.signals = signals or {
                s.name: {"value": None, "reason": "missing volume", "outputs": {}} for s in self.signals
            }
        feedback = FeedbackMessage.model_construct(
            index=index,
            condition=condition,
            value=fb.value,
            reason=fb.reason,
            kind=fb.kind,
            signal=fb.signal,
            direction=direction,
            display_s=fb.display_s,
            t_published=None,
        )
        if not feedback_state:
            feedback.threshold = None
            return volume, feedback
        shaping = self.feedback.shaping(index)
        feedback.threshold = shaping.threshold
        if shaping.block_value is not None:  # only where a block is scored: other messages stay as they were
            feedback.block_value, feedback.block_success = shaping.block_value, shaping.block_success
        return volume, feedback
