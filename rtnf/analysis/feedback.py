"""From ROI values to the value the participant sees.

One volume's feedback is computed in steps, each optional and set in the
config's ``[feedback]`` table:

1. signal: percent signal change of the cleaned ROI signal (``"psc"``), or
   the regulation regressor's beta or t in a sliding window (``"beta"``,
   ``"t"``), for the target ROI(s) combined by mean or median, minus a
   reference ROI for differential feedback;
2. spike removal: a Kalman filter that clips innovations beyond a threshold
   (as OpenNFT's modified Kalman filter does);
3. exponential smoothing;
4. direction: in a block whose condition asks for a decrease
   (``[protocol] directions``) the signal's sign is flipped, so the shown
   value means success the same way in every block: a falling ROI signal
   raises the bar there as a rising one does in an increase block;
5. scaling to [0, 1]: adaptive (the default: the configured range stretched or
   shrunk to the participant's own signal), a fixed range, or the range
   seen so far, clipped;
6. intermittent feedback: one value per regulation block, the mean over the
   block shifted by the hemodynamic lag, given once after the lagged block
   ends (flipped if that block asked for a decrease);
7. sham feedback replaces all of this with the values recorded in another run;
8. shaping (:mod:`rtnf.analysis.shaping`): each regulation block's value (the
   signal an intermittent score shows) is judged against a threshold from the
   previous blocks' values, this run's and (``[feedback.shaping] history``)
   earlier runs'; :meth:`FeedbackComputer.shaping` gives the threshold in
   force at each volume and the block scored there.

Spike removal and smoothing work on the ROI's own signal (before the flip),
so a change of direction between blocks is no jump for them; ``signal`` of
:class:`FeedbackValue` is that signal, as the ROI did.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .protocol import Protocol
from .roi_model import RoiModel, RoiValues
from .shaping import BlockScore, Shaper


@dataclass(frozen=True)
class FeedbackValue:
    """What the screen shows for one volume.

    ``value`` is in [0, 1], or None with a ``reason``; ``signal`` is the
    value before scaling (percent, beta or t) for the record, as the ROI did
    (before any flip for a decrease block); ``direction`` is the way of
    ``signal`` that ``value`` shows as success: ``"increase"`` (``value``
    scales ``signal``), ``"decrease"`` (``value`` scales ``-signal``), or
    None in the baseline (``signal`` as it is).
    """

    value: float | None
    reason: str | None
    signal: float | None = None
    kind: str = "continuous"
    display_s: float | None = None
    direction: str | None = None

    @property
    def success_signal(self) -> float | None:
        """``signal`` as ``value`` counts success: ``-signal`` for a decrease, else ``signal``."""
        return None if self.signal is None else signed(self.signal, self.direction)


def scale(x: float, low: float, high: float) -> float:
    """Map ``x`` linearly from [low, high] to [0, 1], clipped."""
    return float(min(1.0, max(0.0, (x - low) / (high - low))))


def signed(signal: float, direction: str | None) -> float:
    """``signal`` oriented so that success is up: flipped for ``"decrease"``, else as it is."""
    return -signal if direction == "decrease" else signal


class KalmanDespiker:
    """Random-walk Kalman filter that clips spikes, for one signal.

    The measurement noise is estimated online from the first differences of
    the signal (robustly, so spikes do not inflate it); an innovation beyond
    ``threshold`` standard deviations is clipped to that bound before the
    update, so a single spike moves the output by at most that much.

    Parameters
    ----------
    threshold : float
        Innovation bound in standard deviations (default 3).
    process_ratio : float
        Process noise as a fraction of the measurement noise (default 0.5:
        follows block-length changes within a few volumes).
    """

    def __init__(self, threshold: float = 3.0, process_ratio: float = 0.5) -> None:
        self.threshold = threshold
        self.process_ratio = process_ratio
        self._x: float | None = None
        self._p = 0.0
        self._last: float | None = None
        self._diffs: list[float] = []
        self._clipped = 0.0  # sign of the last innovation clipped, 0 when the last was not

    def __call__(self, y: float) -> float:
        """Filter one sample."""
        if self._x is None:
            self._x, self._last = y, y
            return y
        self._diffs.append(abs(y - self._last))
        self._last = y
        # median absolute difference / 0.6745 / sqrt(2) estimates the noise SD of y
        sd = float(np.median(self._diffs[-50:])) / 0.6745 / math.sqrt(2)
        r = max(sd * sd, 1e-12)
        q = self.process_ratio * r
        p_pred = self._p + q
        s = p_pred + r
        v = y - self._x
        bound = self.threshold * math.sqrt(s)
        if len(self._diffs) >= 5 and abs(v) > bound:
            sign = math.copysign(1.0, v)
            if self._clipped == sign:
                # A second outlier on the same side is a change of level (a block
                # starting), not a spike: follow it now instead of creeping after
                # it for several volumes (that lag cost a real visual run 0.04 of
                # its feedback's correlation with the task).
                self._clipped = 0.0
                self._x, self._p = y, r
                return y
            self._clipped = sign
            v = sign * bound
        else:
            self._clipped = 0.0
        k = p_pred / s
        self._x += k * v
        self._p = (1 - k) * p_pred
        return self._x


class ExponentialSmoother:
    """``s_t = alpha * x_t + (1 - alpha) * s_{t-1}``; ``alpha`` in (0, 1], 1 is no smoothing."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._s: float | None = None

    def __call__(self, x: float) -> float:
        """Smooth one sample."""
        self._s = x if self._s is None else self.alpha * x + (1 - self.alpha) * self._s
        return self._s


class DynamicScaler:
    """Scale by the range of values seen so far (0.5 until the range is non-zero)."""

    def __init__(self) -> None:
        self.low = math.inf
        self.high = -math.inf

    def __call__(self, x: float) -> float:
        """Update the range with ``x`` and scale it."""
        self.low, self.high = min(self.low, x), max(self.high, x)
        if self.high - self.low <= 0:
            return 0.5
        return scale(x, self.low, self.high)


class AdaptiveScaler:
    """A range that follows the participant's own signal, so the bar neither saturates nor sits still.

    The configured ``scale_range`` gives the shape (where zero sits on the
    bar); its width is multiplied by a gain such that the 95th percentile of
    the absolute signal seen so far in the run lands at ``headroom`` of the
    range's larger end. The gain changes only when :meth:`adapt` is called:
    at the start of each block, so that within a block a given bar height
    always means the same signal. A fixed range of -1 to 2 % put 57 of 78
    values of a real visual run at the top of the bar (its ROI changed by
    about 10 %); an ACC signal of 0.3 % would barely move it. Adapting at
    every volume instead cost a 60-volume real series (2 % activation) 0.07
    of its shown value's correlation with the task (0.855 against 0.927).
    Until ``min_values`` values have been seen the configured range is used.
    It is given the signal as the bar shows it (flipped in decrease blocks);
    the gain depends only on magnitudes, so up and down blocks of the same
    size set it alike and share one range.

    Parameters
    ----------
    scale_range : (float, float)
        Signal values shown as an empty and a full bar before any adaptation.
    headroom : float
        Fraction of the range's larger end that the signal's 95th percentile reaches.
    min_values : int
        Values seen before the gain adapts.
    """

    QUANTILE = 95.0

    def __init__(self, scale_range: tuple[float, float], headroom: float = 0.8, min_values: int = 10) -> None:
        self.low, self.high = float(scale_range[0]), float(scale_range[1])
        self.headroom = headroom
        self.min_values = min_values
        self.gain = 1.0
        self._abs: list[float] = []

    def observe(self, x: float) -> None:
        """Add one signal value (every volume's, also in intermittent runs)."""
        self._abs.append(abs(x))

    def adapt(self) -> None:
        """Set the gain from the values observed so far (call at a block's start)."""
        end = max(abs(self.low), abs(self.high))
        if len(self._abs) >= self.min_values and end > 0:
            spread = float(np.percentile(self._abs, self.QUANTILE))
            if spread > 0:
                self.gain = spread / (self.headroom * end)

    def scale(self, x: float) -> float:
        """``x`` on the current range, in [0, 1]."""
        return scale(x, self.low * self.gain, self.high * self.gain)

    @property
    def range(self) -> tuple[float, float]:
        """The current range, in signal units."""
        return self.low * self.gain, self.high * self.gain


@dataclass(frozen=True)
class ShapingState:
    """Shaping at one volume: the threshold in force and, at the volume where a lagged block ends, its score.

    ``threshold`` is in the units of the feedback signal, oriented as success
    (what a block's value must exceed); ``block_value`` and ``block_success``
    are None except where a block is scored.
    """

    threshold: float | None
    block_value: float | None = None
    block_success: bool | None = None


def read_sham_shaping(path: Path) -> list[ShapingState]:
    """The shaping columns of a recorded run's table, per row (a sham run shows its source's, as it shows its values).

    Tables without the columns give thresholds of None, and so do cells that are no finite number (a
    hand-edited or foreign table must not stop the run, nor show "nan" as a success).
    """
    def num(text: str | None) -> float | None:
        try:
            value = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [ShapingState(num(r.get("shaping_threshold")), num(r.get("block_value")),
                         None if num(r.get("block_success")) is None else bool(num(r.get("block_success"))))
            for r in rows]


def read_sham_series(path: Path) -> list[float | None]:
    """The ``feedback_value`` column of a recorded run's timeseries table."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "feedback_value" not in rows[0]:
        raise ValueError(f"{path}: no 'feedback_value' column; expected an rtnf desc-rtnf_timeseries.tsv")
    return [None if r["feedback_value"] in ("n/a", "") else float(r["feedback_value"]) for r in rows]


class FeedbackComputer:
    """Turns each volume's ROI values into the feedback value, per the config.

    Parameters
    ----------
    cfg : rtnf.config.FeedbackConfig
        The ``[feedback]`` settings.
    roi_names : list of str
        ROIs in the order of the values passed to :meth:`step`.
    protocol : Protocol
        For block boundaries (intermittent feedback) and the TR.
    shaping_history : iterable of float
        Earlier runs' block values, oldest first, for ``[feedback.shaping]``
        (:func:`rtnf.run.shaping_history.load_history`); ignored without shaping.
    """

    def __init__(self, cfg, roi_names: list[str], protocol: Protocol, shaping_history: Iterable[float] = ()) -> None:
        self.cfg = cfg
        targets = [cfg.roi] if isinstance(cfg.roi, str) else list(cfg.roi)
        self._targets = [roi_names.index(n) for n in targets]
        self._reference = roi_names.index(cfg.reference_roi) if cfg.reference_roi else None
        tr = protocol.tr_s
        self._window = max(4, int(round(cfg.window_s / tr)))
        self._despike = KalmanDespiker(cfg.despike_threshold) if cfg.despike else None
        self._smooth = ExponentialSmoother(cfg.smoothing_alpha) if cfg.smoothing_alpha is not None else None
        self._dynamic = DynamicScaler() if cfg.scaling == "dynamic" else None
        self._adaptive = AdaptiveScaler(tuple(cfg.scale_range)) if cfg.scaling == "adaptive" else None
        self._block_starts = {seg.start for seg in protocol.segments()}
        self._sham = read_sham_series(cfg.sham_from) if cfg.sham_from is not None else None
        # Which way is success at each volume: its condition's direction (None in the baseline).
        self._directions = [protocol.direction(c) for c in protocol.labels()]
        lag = int(round(cfg.hemodynamic_lag_s / tr))
        # Intermittent: block k's value is ready at the volume where its lagged window ends;
        # (first, stop) of that window and the block's direction.
        self._blocks = {
            seg.stop - 1 + lag: (seg.start + lag, seg.stop + lag, protocol.direction(seg.condition))
            for seg in protocol.segments()
            if seg.condition != protocol.baseline and seg.stop - 1 + lag < protocol.n_volumes
        }
        self._signals: dict[int, float] = {}
        shaping = getattr(cfg, "shaping", None)
        # The earlier runs' block values this run started from: a computer built in its place (a study arm's)
        # passes them on, so its thresholds continue the participant's history.
        self.shaping_history: tuple[float, ...] = tuple(shaping_history)
        self._shaper = Shaper(self.shaping_history if shaping is not None else (),
                              shaping.percentile if shaping is not None else None,
                              shaping.min_blocks if shaping is not None else 2,
                              shaping.last_blocks if shaping is not None else None)
        self._scores: dict[int, BlockScore | None] = {}  # by the volume where the block is scored
        self._sham_shaping = read_sham_shaping(cfg.sham_from) if cfg.sham_from is not None else None

    def shaping(self, index: int) -> ShapingState:
        """The shaping threshold in force at volume ``index`` and the block scored there, if any.

        Call in volume order, after :meth:`step` for a processed volume (also
        for a missing one): blocks whose lagged window ended are scored
        first, so a missing last volume does not lose its block. The
        threshold at a volume is the one its scored block had to beat; from
        the next volume on it includes that block.
        """
        if self._sham_shaping is not None:
            return self._sham_shaping[index] if index < len(self._sham_shaping) else ShapingState(None)
        for end in sorted(self._blocks):
            if end > index:
                break
            if end not in self._scores:
                value = self._block_signal(end)
                self._scores[end] = None if value is None else self._shaper.score(signed(value, self._blocks[end][2]))
        score = self._scores.get(index)
        if score is None:
            return ShapingState(self._shaper.threshold)
        return ShapingState(score.threshold, score.value, score.success)

    def _block_signal(self, end: int) -> float | None:
        """Mean signal (as the ROI did, before any flip) over the lagged window of the block scored at ``end``."""
        first, stop, _ = self._blocks[end]
        values = [self._signals[i] for i in range(first, stop) if i in self._signals]
        return float(np.mean(values)) if values else None

    def direction(self, index: int) -> str | None:
        """The direction in which volume ``index``'s feedback value counts success.

        The volume's condition's (None in the baseline); for an intermittent
        score, the scored block's, which may differ from the volume's.
        """
        if self.cfg.kind == "intermittent" and index in self._blocks:
            return self._blocks[index][2]
        return self._directions[index] if 0 <= index < len(self._directions) else None

    def step(
        self, index: int, values: list[RoiValues], model: RoiModel, source: tuple[float | None, str | None] | None = None
    ) -> FeedbackValue:
        """Feedback for kept volume ``index`` (call once per volume, in order).

        ``source``: the value (and the reason it is None) of the signal ``feedback.source`` names; it takes
        the place of ROI activity, then goes through the same despiking, smoothing, direction and scaling.
        """
        direction = self.direction(index)
        if self._sham is not None:
            value = self._sham[index] if index < len(self._sham) else None
            return FeedbackValue(value, None if value is not None else "no sham value for this volume", kind=self.cfg.kind,
                                 direction=direction)
        signal, reason = self._signal(index, values, model) if source is None else source
        if signal is not None and not math.isfinite(signal):
            # Never shown or recorded as a number, and kept out of the despiker's,
            # smoother's and scaler's state, which it would spoil for the rest of the run.
            signal, reason = None, "non-finite signal (NaN or infinite ROI value)"
        if self._adaptive is not None and index in self._block_starts:
            self._adaptive.adapt()
        if signal is not None:
            if self._despike is not None:
                signal = self._despike(signal)
            if self._smooth is not None:
                signal = self._smooth(signal)
            if self._adaptive is not None:
                self._adaptive.observe(signed(signal, self._directions[index]))
            self._signals[index] = signal
        if not self.cfg.enabled:
            return FeedbackValue(None, "no feedback in this run", signal=signal, kind=self.cfg.kind, direction=direction)
        if self.cfg.kind == "intermittent":
            return self._intermittent(index)
        if signal is None:
            return FeedbackValue(None, reason, kind="continuous", direction=direction)
        return FeedbackValue(self._scale(signed(signal, direction)), None, signal=signal, kind="continuous",
                             direction=direction)

    def _scale(self, signal: float) -> float:
        if self._dynamic is not None:
            return self._dynamic(signal)
        if self._adaptive is not None:
            return self._adaptive.scale(signal)
        return scale(signal, *self.cfg.scale_range)

    def _signal(self, index: int, values: list[RoiValues], model: RoiModel) -> tuple[float | None, str | None]:
        if self.cfg.signal == "psc":
            per_roi = [v.psc for v in values]
            if any(per_roi[k] is None for k in self._targets + ([self._reference] if self._reference is not None else [])):
                return None, "waiting for baseline"
        else:
            stats = model.window_contrast(index, self._window, self.cfg.signal)
            if stats is None or not np.all(np.isfinite(stats)):
                return None, "waiting for a window with task variation"
            per_roi = [float(s) for s in stats]
        combine = np.median if self.cfg.combine == "median" else np.mean
        signal = float(combine([per_roi[k] for k in self._targets]))
        if self._reference is not None:
            signal -= per_roi[self._reference]
        return signal, None

    def _intermittent(self, index: int) -> FeedbackValue:
        direction = self.direction(index)
        block = self._blocks.get(index)
        if block is None:
            return FeedbackValue(None, "intermittent: between scores", kind="intermittent", direction=direction)
        signal = self._block_signal(index)
        if signal is None:
            return FeedbackValue(None, "intermittent: no value in the block", kind="intermittent", direction=direction)
        return FeedbackValue(
            self._scale(signed(signal, direction)), None, signal=signal, kind="intermittent",
            display_s=self.cfg.intermittent_display_s, direction=direction,
        )
