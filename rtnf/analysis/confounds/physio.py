"""Physiological noise regressors computed per volume from recordings that arrive during the run.

RETROICOR (Glover, Li & Ress 2000, Magn Reson Med 44:162)
    Cardiac phase ``phi_c(t) = 2 pi (t - t_k) / (t_{k+1} - t_k)`` between the
    pulse peaks around ``t`` (the next peak usually has arrived: a volume's file
    is complete about a TR after its acquisition starts; when it has not, the
    last interval is extrapolated). Respiratory phase by histogram
    equalisation of the belt's amplitude:
    ``phi_r(t) = pi * sign(dR/dt) * P(R <= R(t))`` over the respiration seen so
    far (the recording's last ``buffer_s`` seconds). Each gives
    ``cos(m phi), sin(m phi)``, ``m = 1..order``: unit amplitude, the design's scale.
RVT (Birn et al. 2006, NeuroImage 31:1536; 2008, NeuroImage 40:644)
    Breathing depth (peak minus trough amplitude) over the breath period at the
    volume's time, centred on its running mean, optionally convolved with the
    respiration response function (:func:`respiration_response`) over the last
    40 s, then z-scored causally (running mean and SD over the run's volumes so
    far; 0 for the first three).

Peaks and troughs come from neurokit2 (``ppg_findpeaks``, Elgendi et al. 2013;
``rsp_findpeaks``, Khodadad et al. 2018) on the filtered recent window only
(:data:`CARD_WINDOW_S`, :data:`RESP_WINDOW_S`): each volume processes the data
since the previous one plus an overlap (breaths: once per second of new data at most),
so the cost does not grow with the run.
The filters are those of ``nk.ppg_clean`` (Elgendi: Butterworth 0.5-8 Hz,
order 2) and ``nk.rsp_clean`` (Khodadad: 3 Hz low-pass, order 2), designed once
(``nk.ppg_clean`` redesigns its filter at every call: 0.9 ms of a 1 ms budget,
measured); on a 20 s window a linear detrend replaces ``rsp_clean``'s 0.05 Hz
high-pass, which needs minutes to settle.

Clock
-----
The recording's times are seconds from the acquisition start of the scanner's
first volume (dummies included) plus ``time_offset_s`` (a log's time column or
``n / sampling_hz``; an LSL time channel). Kept volume ``i`` is sampled at
``time_offset_s + (dummy_volumes + i) * TR + sample_offset_s``. Without a time
channel an LSL stream's own timestamps are used: the volume's acquisition time
(UNIX, from its file) is moved onto ``pylsl.local_clock``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal as sps

from .base import ConfoundContext, ConfoundError, ConfoundInput, ConfoundSource
from rtnf.scanner.lsl import LslUnavailableError, load_pylsl
from rtnf.scanner.physio_sources import LogTail, LslInlet, SampleBuffer

__all__ = ["PhysioRegressors", "respiration_response", "fourier_terms", "retroicor_names", "PROC_HZ"]

#: Rate (Hz) of the uniform grid the recent window is resampled to before filtering and peak detection.
PROC_HZ = 100.0
#: Seconds of past data each volume re-reads before the new data, for the cardiac and respiratory detectors.
CARD_WINDOW_S, RESP_WINDOW_S = 4.0, 20.0
#: Peaks this close (s) to the newest data are provisional: the filters' edge may still move them.
CARD_EDGE_S, RESP_EDGE_S = 0.5, 5.0
#: New data (s) that make the breath detector run again (at shorter TRs volumes share a window).
RESP_STEP_S = 1.0
#: Data used after a volume's time (s): the next pulse peak; more is not read, so the values do not depend on arrival.
LOOKAHEAD_S = 2.0
#: Without a pulse peak for this long (s) the cardiac phase is unknown (sensor off).
MAX_BEAT_S = 3.0
#: Seconds of recording before a volume's time needed for its phases (earlier volumes get zeros, no alarm).
WARMUP_S = 4.0
#: At most this long (s) the first volume waits for the reader to catch up with the log or find the stream.
READY_S = 3.0
#: Length (s) of the respiration response function.
RRF_S = 40.0


def respiration_response(t_s: np.ndarray) -> np.ndarray:
    """Respiration response function of Birn et al. (2008), NeuroImage 40:644, eq. 3.

    ``RRF(t) = 0.6 t^2.1 exp(-t / 1.6) - 0.0023 t^3.54 exp(-t / 4.25)``, ``t`` in seconds (0 before 0).
    """
    t = np.clip(np.asarray(t_s, dtype=float), 0.0, None)
    return 0.6 * t**2.1 * np.exp(-t / 1.6) - 0.0023 * t**3.54 * np.exp(-t / 4.25)


def fourier_terms(phase: float, order: int) -> np.ndarray:
    """``[cos(phase), sin(phase), cos(2 phase), sin(2 phase), ...]`` up to ``order``."""
    m = np.arange(1, order + 1)
    return np.column_stack([np.cos(m * phase), np.sin(m * phase)]).reshape(-1)


def retroicor_names(cardiac_order: int, resp_order: int, rvt: bool) -> tuple[str, ...]:
    """Design column names: ``retroicor_card_cos1, retroicor_card_sin1, ..., retroicor_resp_cos1, ..., rvt``."""
    names = [f"retroicor_{kind}_{f}{m}" for kind, order in (("card", cardiac_order), ("resp", resp_order))
             for m in range(1, order + 1) for f in ("cos", "sin")]
    return tuple(names + (["rvt"] if rvt else []))


def _find(detect: Any, x: np.ndarray) -> dict:
    """neurokit2's detectors raise on a window without a beat or a breath: that is no peak."""
    try:
        return detect(x)
    except (IndexError, ValueError, ZeroDivisionError):
        return {}


def _detrend(x: np.ndarray) -> np.ndarray:
    """``x`` minus its least-squares line (closed form: ``scipy.signal.detrend`` costs 0.15 ms a call)."""
    u = np.arange(len(x)) - (len(x) - 1) / 2.0
    return x - x.mean() - u * (u @ x) / (u @ u)


class _ZeroPhase:
    """``scipy.signal.sosfiltfilt`` (odd padding, the same result) with the filter's initial state computed once.

    ``sosfiltfilt`` recomputes ``sosfilt_zi`` at every call: 40 % of its cost on a few seconds of data.
    """

    def __init__(self, sos: np.ndarray) -> None:
        self.sos = sos
        self.zi = sps.sosfilt_zi(sos)
        # scipy's default pad length for second-order sections
        self.pad = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = min(self.pad, len(x) - 1)
        ext = np.concatenate([2 * x[0] - x[p:0:-1], x, 2 * x[-1] - x[-2:-p - 2:-1]])
        y, _ = sps.sosfilt(self.sos, ext, zi=self.zi * ext[0])
        y, _ = sps.sosfilt(self.sos, y[::-1], zi=self.zi * y[-1])
        return y[::-1][p: len(y) - p]


class _Running:
    """Running mean and SD (Welford), for the causal z-score."""

    def __init__(self) -> None:
        self.n, self.mean, self._m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self._m2 += d * (x - self.mean)

    @property
    def sd(self) -> float:
        return math.sqrt(self._m2 / (self.n - 1)) if self.n > 1 else 0.0


class PhysioRegressors(ConfoundSource):
    """RETROICOR and RVT regressors from a pulse and a breathing recording (``[confounds.physio]``).

    Parameters
    ----------
    cfg : rtnf.config.PhysioConfig
        The settings.
    base_dir : Path, optional
        The session config's folder (an absolute ``log`` needs none).
    export_dir : Path, optional
        The scanner's export folder: a relative ``log`` is there, beside the images.
    dummy_volumes : int
        Volumes the scanner acquired before the first kept one (the recording's clock starts with the first acquired).
    """

    def __init__(self, cfg: Any, base_dir: Path | None = None, export_dir: Path | None = None,
                 dummy_volumes: int = 0) -> None:
        super().__init__("physio")
        self.cfg = cfg
        self.names = retroicor_names(cfg.cardiac_order, cfg.resp_order, cfg.rvt)
        self.dummy_volumes = int(dummy_volumes)
        folder = export_dir if export_dir is not None else base_dir
        self.log_path = None if cfg.log is None else (
            Path(cfg.log) if Path(cfg.log).is_absolute() or folder is None else Path(folder) / cfg.log)
        fs = cfg.sampling_hz or 1000.0  # the fastest usual physiological rate when the log does not say
        self.buffer = SampleBuffer(int(math.ceil(cfg.buffer_s * fs)))
        self.reader: LogTail | LslInlet | None = None
        self._tr = 0.0
        self._t_first: float | None = None
        self._unix_minus_lsl = 0.0
        nyq = PROC_HZ / 2
        self._card_filter = _ZeroPhase(sps.butter(2, [0.5 / nyq, 8.0 / nyq], btype="bandpass", output="sos"))
        self._resp_filter = _ZeroPhase(sps.butter(2, 3.0 / nyq, btype="lowpass", output="sos"))
        self._card_peaks: deque[float] = deque(maxlen=4096)
        self._card_done = -np.inf
        self._card_provisional: list[float] = []  # beats near the newest data, which a later window may move
        self._resp_peaks: deque[tuple[float, float]] = deque(maxlen=1024)
        self._resp_troughs: deque[tuple[float, float]] = deque(maxlen=1024)
        self._resp_done = -np.inf
        self._resp_provisional: dict[str, list[tuple[float, float]]] = {"RSP_Peaks": [], "RSP_Troughs": []}
        self._resp_slope: tuple[np.ndarray, np.ndarray] | None = None  # the last window's times and dR/dt
        self._rvt_raw, self._rvt_out = _Running(), _Running()
        self._rvt_hist: deque[tuple[float, float]] = deque()
        # (last_arrival,) when the last volume found no data: later volumes do not wait again until data come
        self._gave_up: tuple[float | None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def fit(self, context: ConfoundContext) -> None:
        """Open the log or the LSL stream and start its reader thread."""
        import neurokit2  # noqa: F401 - imported here: its first import takes seconds, not a volume's time

        cfg = self.cfg
        self._tr = context.tr_s
        self._t_first = context.t_first
        columns = (cfg.time_column, cfg.cardiac_column if cfg.cardiac_order > 0 else None,
                   cfg.resp_column if (cfg.resp_order > 0 or cfg.rvt) else None)
        if self.log_path is not None:
            reader = LogTail(self.log_path, self.buffer, columns, cfg.delimiter, cfg.header_lines, cfg.sampling_hz,
                             cfg.time_unit_s)
            try:
                reader.check()
            except ValueError as exc:
                raise ConfoundError(str(exc)) from None
        else:
            try:
                pylsl = load_pylsl()
            except LslUnavailableError as exc:
                raise ConfoundError(str(exc)) from None
            if cfg.time_column is None:
                if context.t_first is None:
                    raise ConfoundError("LSL timestamps are matched with the volumes' acquisition times, which these "
                                        "files do not record; stream a time channel on the scanner's clock and set "
                                        "time_column")
                self._unix_minus_lsl = time.time() - pylsl.local_clock()
            reader = LslInlet(self.buffer, cfg.lsl_name, cfg.lsl_type, columns, cfg.time_unit_s)
        self.reader = reader
        reader.start()
        # the log so far (dummies, the minutes before the run) is read once here, not by the first volume's wait
        reader.ready.wait(READY_S)

    def close(self) -> None:
        """Stop the reader thread."""
        if self.reader is not None:
            self.reader.stop()

    # ------------------------------------------------------------------ per volume
    def volume_time(self, volume: ConfoundInput) -> float | None:
        """The volume's sampling time on the recording's clock (s), None when it cannot be known."""
        cfg = self.cfg
        if self.log_path is not None or cfg.time_column is not None:
            return cfg.time_offset_s + (self.dummy_volumes + volume.index) * self._tr + cfg.sample_offset_s
        t_unix = volume.t_acquired if volume.t_acquired is not None else (
            None if self._t_first is None else self._t_first + volume.onset_s)
        return None if t_unix is None else t_unix - self._unix_minus_lsl + cfg.sample_offset_s

    def row(self, volume: ConfoundInput) -> np.ndarray | None:
        """This volume's RETROICOR (and RVT) values, or None with :attr:`reason` when the data are not there."""
        t = self.volume_time(volume)
        if t is None:
            self.reason = "the volume has no acquisition time to match with the LSL timestamps"
            return None
        if not self._wait_for(t):
            return None
        end = min(self.buffer.latest, t + LOOKAHEAD_S)  # type: ignore[type-var]
        if t - self.buffer.earliest < WARMUP_S:  # type: ignore[operator]
            # the recording has just begun (no dummies): no phase yet, and no alarm for that; zeros keep the
            # terms without effect on these volumes
            return np.zeros(len(self.names))
        parts = []
        if self.cfg.cardiac_order > 0:
            self._update_cardiac(t, end)
            phase = self._cardiac_phase(t)
            if phase is None:
                return None
            parts.append(fourier_terms(phase, self.cfg.cardiac_order))
        if self.cfg.resp_order > 0 or self.cfg.rvt:
            slope = self._update_resp(t, end)
            if self.cfg.resp_order > 0:
                phase = self._resp_phase(t, slope)
                if phase is None:
                    return None
                parts.append(fourier_terms(phase, self.cfg.resp_order))
            if self.cfg.rvt:
                parts.append(np.array([self._rvt(t)]))
        return np.concatenate(parts)

    def _wait_for(self, t: float) -> bool:
        """Wait at most ``max_wait_s`` for data up to ``t``; False with :attr:`reason` when it did not come."""
        buf, reader = self.buffer, self.reader
        latest = buf.latest
        stalled = self._gave_up == (buf.last_arrival,)
        if (latest is None or latest < t) and not stalled:  # once stalled, later volumes do not wait again
            deadline = time.monotonic() + self.cfg.max_wait_s
            while (latest is None or latest < t) and time.monotonic() < deadline and not reader.error:
                time.sleep(0.002)
                latest = buf.latest
        if latest is not None and latest >= t:
            self._gave_up = None
            return True
        self._gave_up = (buf.last_arrival,)
        if reader.error:
            self.reason = reader.error
        elif latest is None or buf.last_arrival is None:
            self.reason = reader.status
        else:
            self.reason = (f"physio stream stalled for {time.monotonic() - buf.last_arrival:.1f} s "
                           f"(its data end {t - latest:.1f} s before this volume's time)")
        return False

    def _grid(self, t_from: float, t_to: float, column: int) -> tuple[np.ndarray, np.ndarray]:
        """The recording's column between two times, resampled on the :data:`PROC_HZ` grid."""
        w = self.buffer.window(t_from - 1.0 / PROC_HZ, t_to)
        tg = np.arange(max(t_from, w[0, 0]), w[-1, 0], 1.0 / PROC_HZ) if len(w) > 1 else np.empty(0)
        return tg, np.interp(tg, w[:, 0], w[:, column]) if len(tg) else np.empty(0)

    def _update_cardiac(self, t: float, end: float) -> None:
        import neurokit2 as nk

        start = max(self._card_done - CARD_WINDOW_S, t - 10.0)  # bounded at the first volume and after a stall
        tg, x = self._grid(start, end, 1)
        if len(x) < PROC_HZ:
            return
        clean = self._card_filter(x - x.mean())
        found = _find(lambda v: nk.ppg_findpeaks(v, sampling_rate=int(PROC_HZ)), clean).get("PPG_Peaks", [])
        peaks = tg[np.asarray(found, dtype=int)]
        done = end - CARD_EDGE_S
        last = self._card_peaks[-1] if self._card_peaks else -np.inf
        for p in peaks[(peaks > self._card_done) & (peaks <= done)]:
            if p - last > 0.25:  # the same beat found again a sample away in the overlap
                self._card_peaks.append(float(p))
                last = p
        self._card_done = max(self._card_done, done)
        self._card_provisional = [float(p) for p in peaks[peaks > done] if p - last > 0.25]

    def _cardiac_phase(self, t: float) -> float | None:
        peaks = np.array(list(self._card_peaks) + self._card_provisional)
        k = int(np.searchsorted(peaks, t, "right")) - 1
        if len(peaks) < 2 or (k >= 0 and t - peaks[k] > MAX_BEAT_S) or (k < 0 and peaks[0] - t > MAX_BEAT_S):
            self.reason = f"no pulse peak found within {MAX_BEAT_S:g} s of this volume (pulse sensor off?)"
            return None
        if k < 0:  # before the first beat seen: extrapolate the first interval backwards
            k = 0
        if k + 1 < len(peaks):
            period = peaks[k + 1] - peaks[k]
        else:  # the next beat has not arrived: the last interval goes on
            period = peaks[k] - peaks[k - 1]
        return float((2.0 * np.pi * (t - peaks[k]) / period) % (2.0 * np.pi))

    def _update_resp(self, t: float, end: float) -> float:
        """Detect new breaths in the recent window; returns the sign of dR/dt at ``t`` (+1 or -1)."""
        import neurokit2 as nk

        cached = self._resp_slope
        if cached is not None and end - cached[0][-1] < RESP_STEP_S and t <= cached[0][-1] - 0.5:
            # short TRs: a breath lasts seconds; the last window still covers t, well inside its edge
            return 1.0 if np.interp(t, *cached) >= 0 else -1.0
        start = max(min(self._resp_done - RESP_WINDOW_S, t - RESP_WINDOW_S), t - 30.0)
        tg, x = self._grid(start, end, 2)
        if len(x) < 4 * PROC_HZ:
            return 0.0
        clean = self._resp_filter(_detrend(x))
        self._resp_slope = (tg, np.gradient(clean))
        info = _find(lambda v: nk.rsp_findpeaks(v, sampling_rate=int(PROC_HZ)), clean)
        done = end - RESP_EDGE_S
        for key, store in (("RSP_Peaks", self._resp_peaks), ("RSP_Troughs", self._resp_troughs)):
            idx = np.asarray(info.get(key, []), dtype=int)
            last = store[-1][0] if store else -np.inf
            for i in idx:
                if self._resp_done < tg[i] <= done and tg[i] - last > 1.0:
                    store.append((float(tg[i]), float(clean[i])))
                    last = tg[i]
            self._resp_provisional[key] = [(float(tg[i]), float(clean[i])) for i in idx if tg[i] > done]
        self._resp_done = max(self._resp_done, done)
        return 1.0 if np.interp(t, *self._resp_slope) >= 0 else -1.0

    def _resp_phase(self, t: float, sign: float) -> float | None:
        # the amplitude distribution (Glover's histogram): a 0.3 Hz breath needs no more than 4000 samples of it
        amplitudes = self.buffer.column_since(t - self.cfg.buffer_s, 2, max_samples=4000)
        near = self.buffer.window(t - 1.0, t + 1.0)
        finite = amplitudes[np.isfinite(amplitudes)]
        if len(finite) < 50 or len(near) < 2 or sign == 0.0:
            self.reason = "too little respiration recorded yet for its phase (4 s at least)"
            return None
        r = float(np.interp(t, near[:, 0], near[:, 2]))
        return float(np.pi * sign * np.count_nonzero(finite <= r) / max(len(finite), 1))

    def _rvt(self, t: float) -> float:
        """The standardised RVT at ``t`` (0 until there are breaths and three volumes)."""
        peaks = np.array(list(self._resp_peaks) + self._resp_provisional["RSP_Peaks"]).reshape(-1, 2)
        troughs = np.array(list(self._resp_troughs) + self._resp_provisional["RSP_Troughs"]).reshape(-1, 2)
        if len(peaks) < 2 or len(troughs) < 1:
            return 0.0
        depth = np.interp(t, peaks[:, 0], peaks[:, 1]) - np.interp(t, troughs[:, 0], troughs[:, 1])
        period = np.interp(t, peaks[1:, 0], np.diff(peaks[:, 0]))
        raw = float(depth / period)
        self._rvt_raw.add(raw)
        self._rvt_hist.append((t, raw - self._rvt_raw.mean))
        while self._rvt_hist and t - self._rvt_hist[0][0] > RRF_S:
            self._rvt_hist.popleft()
        if self.cfg.rvt_rrf:
            times, values = np.array(self._rvt_hist).T
            y = float(np.sum(respiration_response(t - times) * values) * self._tr)
        else:
            y = raw - self._rvt_raw.mean
        self._rvt_out.add(y)
        sd = self._rvt_out.sd
        return (y - self._rvt_out.mean) / sd if self._rvt_out.n >= 3 and sd > 0 else 0.0
