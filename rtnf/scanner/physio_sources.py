"""Physiological recordings that arrive during the run: a growing text log or an LSL stream.

Each reader is a background thread started by :meth:`start` and stopped by
:meth:`stop`; it appends ``(time, cardiac, respiratory)`` samples to a
:class:`SampleBuffer` (bounded: the oldest samples are dropped) and never
blocks the run. Times are in seconds on the recording's own clock: the log's
time column times ``time_unit_s`` (or ``n / sampling_hz``), an LSL channel
likewise, or the LSL timestamps (``pylsl.local_clock`` of this machine, after
the inlet's clock correction); :class:`rtnf.analysis.confounds.physio.PhysioRegressors`
maps the volumes' times onto that clock.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtnf.scanner.lsl import load_pylsl
from rtnf.scanner.nifti import open_regular

log = logging.getLogger("rtnf.confounds.physio")

#: Seconds between two looks at the log file or the LSL inlet.
POLL_S = 0.01
#: Bytes of the log read at a time: a log holding hours before the run is caught up with in pieces (one
#: ``read()`` of it all took about 11 bytes of memory per byte of log: 571 MB for 51 MB).
READ_BYTES = 1 << 20
#: Sample times (s) at or beyond this magnitude, or not finite, are dropped as damaged (epoch seconds are 1.7e9).
MAX_TIME_S = 1e11
#: A "line" this long without a newline is no sample (a binary file, a log without line ends): dropped.
MAX_LINE_BYTES = 1 << 16


class SampleBuffer:
    """Thread-safe, time-ordered, bounded store of ``(t, cardiac, respiratory)`` samples.

    Parameters
    ----------
    capacity : int
        Samples kept (the oldest go first).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        # twice the capacity: appends shift the kept half down only once per ``capacity`` samples
        self._data = np.empty((2 * self.capacity, 3), dtype=np.float64)
        self._n = 0
        self._lock = threading.Lock()
        self.n_out_of_order = 0
        #: ``time.monotonic()`` of the last append that brought samples (None before the first).
        self.last_arrival: float | None = None

    def append(self, rows: np.ndarray) -> None:
        """Add samples, shape ``(n, 3)``; rows not later than the last kept sample are dropped (counted)."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        # One inf or absurd time would otherwise hold back every later sample (they must be later than it).
        bad = ~(np.abs(rows[:, 0]) < MAX_TIME_S)
        if bad.any():
            self.n_out_of_order += int(bad.sum())
            rows = rows[~bad]
        if not len(rows):
            return
        with self._lock:
            last = self._data[self._n - 1, 0] if self._n else -np.inf
            keep = rows[:, 0] > np.maximum.accumulate(np.r_[last, rows[:-1, 0]])
            self.n_out_of_order += int(len(rows) - keep.sum())
            rows = rows[keep][-self.capacity:]
            if self._n + len(rows) > len(self._data):
                kept = self.capacity - len(rows)
                self._data[:kept] = self._data[self._n - kept: self._n]
                self._n = kept
            self._data[self._n: self._n + len(rows)] = rows
            self._n += len(rows)
            if len(rows):
                self.last_arrival = time.monotonic()

    @property
    def latest(self) -> float | None:
        """Time of the newest sample (None when empty)."""
        with self._lock:
            return float(self._data[self._n - 1, 0]) if self._n else None

    @property
    def earliest(self) -> float | None:
        """Time of the oldest sample kept (None when empty)."""
        with self._lock:
            return float(self._data[0, 0]) if self._n else None

    def window(self, t_from: float, t_to: float = np.inf) -> np.ndarray:
        """A copy of the samples with ``t_from <= t <= t_to``, shape ``(n, 3)``."""
        with self._lock:
            times = self._data[: self._n, 0]
            lo, hi = np.searchsorted(times, t_from, "left"), np.searchsorted(times, t_to, "right")
            return self._data[lo:hi].copy()

    def column_since(self, t_from: float, column: int, max_samples: int | None = None) -> np.ndarray:
        """A copy of one column (1 cardiac, 2 respiratory) of the samples from ``t_from`` on.

        With ``max_samples``, every k-th sample only (k as small as keeps at most that many).
        """
        with self._lock:
            lo = int(np.searchsorted(self._data[: self._n, 0], t_from, "left"))
            step = 1 if max_samples is None else max(1, -(-(self._n - lo) // max_samples))
            return self._data[lo: self._n: step, column].copy()


class _Reader:
    """A background thread that feeds a :class:`SampleBuffer`; :attr:`status` says why nothing comes."""

    def __init__(self, buffer: SampleBuffer) -> None:
        self.buffer = buffer
        self.status = "not started"
        self.error: str | None = None  # a problem that no waiting will fix (a missing column)
        #: Set once the reader has caught up: the log read to its end, the stream's first samples in (or not found).
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread = threading.Thread(target=self._loop, name=f"rtnf-physio-{type(self).__name__}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (at most a second)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - the run goes on without physiological terms
            self.error = f"reader failed: {type(exc).__name__}: {exc}"
            log.error("physio %s", self.error)
        finally:
            self.ready.set()

    def _run(self) -> None:
        raise NotImplementedError


class LogTail(_Reader):
    """Tails a growing text log: one sample a line, columns split by ``delimiter``.

    Blank lines and lines starting with ``#`` are skipped; a line that is not a
    sample costs that sample (one warning for all of them).

    Parameters
    ----------
    path : Path
        The log (it may appear after the reader starts).
    buffer : SampleBuffer
        Where samples go.
    columns : tuple of (int or str or None)
        Time, cardiac and respiratory columns (0-based, or names from the last
        header line); the time may be None (then ``sampling_hz``), a signal None
        when not recorded (stored as NaN).
    delimiter : str or None
        Field separator (None: any whitespace).
    header_lines : int
        Lines before the first sample.
    sampling_hz : float or None
        Sample rate when there is no time column (sample n at ``n / sampling_hz`` s).
    time_unit_s : float
        Seconds per unit of the time column.
    """

    def __init__(self, path: Path, buffer: SampleBuffer, columns: tuple[Any, Any, Any], delimiter: str | None,
                 header_lines: int, sampling_hz: float | None, time_unit_s: float) -> None:
        super().__init__(buffer)
        self.path = Path(path)
        self.columns = columns
        self.delimiter = delimiter
        self.header_lines = header_lines
        self.sampling_hz = sampling_hz
        self.time_unit_s = time_unit_s
        self.n_bad_lines = 0
        self._index: list[int | None] | None = None
        self._n_lines = 0  # lines read, header included
        self._n_samples = 0

    def check(self) -> None:
        """Raise ValueError when the log exists but cannot be used (unreadable, a column missing from its header)."""
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise ValueError(f"physio log {self.path.name} is a folder, not a text file")
        try:
            with open_regular(self.path) as fh:  # a FIFO in its place must not block the run's first volume
                head = fh.read(65536)
        except OSError as exc:
            raise ValueError(f"physio log {self.path.name} cannot be read ({exc.strerror or exc})") from None
        lines = head.split(b"\n")
        if len(lines) > self.header_lines:  # the header is complete
            self._resolve([ln.decode("utf-8", "replace") for ln in lines[: self.header_lines]])

    def _resolve(self, header: list[str]) -> list[int | None]:
        names = self._split(header[-1]) if header else []
        out: list[int | None] = []
        for what, col in zip(("time", "cardiac", "respiratory"), self.columns):
            if isinstance(col, str):
                stripped = [n.strip().strip('"') for n in names]
                if col not in stripped:
                    raise ValueError(f"physio log {self.path.name} has no {what} column {col!r} "
                                     f"(its header names {stripped[:12]})")
                out.append(stripped.index(col))
            else:
                out.append(col)
        self._index = out
        return out

    def _split(self, line: str) -> list[str]:
        return line.split(self.delimiter) if self.delimiter is not None else line.split()

    def _run(self) -> None:
        self.status = f"physio log {self.path.name} not found"
        fh = None
        partial = b""
        header: list[str] = []
        while not self._stop.is_set():
            if fh is None:
                try:
                    fh = open_regular(self.path)
                except OSError:
                    self.ready.set()  # nothing to catch up with
                    self._stop.wait(POLL_S * 5)
                    continue
                self.status = f"physio log {self.path.name} has no sample yet"
            chunk = fh.read(READ_BYTES)
            if not chunk:
                self.ready.set()
                self._stop.wait(POLL_S)
                continue
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()  # an incomplete last line waits for its end
            if len(partial) > MAX_LINE_BYTES:  # no sample line; kept, it would grow with the file
                self.n_bad_lines += 1
                partial = b""
            rows = []
            for raw in lines:
                self._n_lines += 1
                text = raw.decode("utf-8", "replace").strip()
                if self._n_lines <= self.header_lines:
                    header.append(text)
                    if self._n_lines == self.header_lines:
                        try:
                            self._resolve(header)
                        except ValueError as exc:
                            self.error = str(exc)
                            fh.close()
                            return
                    continue
                if not text or text.startswith("#"):  # comments (Philips SCANPHYSLOG's "##" lines)
                    continue
                row = self._parse(text)
                if row is not None:
                    rows.append(row)
            if rows:
                self.buffer.append(np.array(rows))
        if fh is not None:
            fh.close()

    def _parse(self, text: str) -> tuple[float, float, float] | None:
        if self._index is None:
            self._resolve([])
        fields = self._split(text)
        try:
            t_col, c_col, r_col = self._index  # type: ignore[misc]
            values = [float(fields[c]) if c is not None else np.nan for c in (c_col, r_col)]
            t = float(fields[t_col]) * self.time_unit_s if t_col is not None else self._n_samples / self.sampling_hz
        except (ValueError, IndexError):
            self.n_bad_lines += 1
            if self.n_bad_lines == 1:  # once: a damaged line costs its sample, never the run
                log.warning("physio log %s: line %d is not a sample (%r); such lines are skipped",
                            self.path.name, self._n_lines, text[:80])
            return None
        self._n_samples += 1
        return t, values[0], values[1]


class LslInlet(_Reader):
    """Pulls an LSL stream (pylsl) found by name or type.

    Parameters
    ----------
    buffer : SampleBuffer
        Where samples go.
    name, stream_type : str or None
        The stream's name and/or type.
    channels : tuple of (int or None)
        Time, cardiac and respiratory channels (time None: the LSL timestamps,
        corrected to this machine's ``local_clock``).
    time_unit_s : float
        Seconds per unit of the time channel.
    """

    def __init__(self, buffer: SampleBuffer, name: str | None, stream_type: str | None,
                 channels: tuple[Any, Any, Any], time_unit_s: float) -> None:
        super().__init__(buffer)
        self.name, self.stream_type = name, stream_type
        self.channels = channels
        self.time_unit_s = time_unit_s
        what = " ".join(f"{k} {v!r}" for k, v in (("name", name), ("type", stream_type)) if v is not None)
        self.label = f"LSL stream with {what}"

    def _run(self) -> None:
        pylsl = load_pylsl()
        self.status = f"{self.label} not found"
        pred = " and ".join(f"{k}='{v}'" for k, v in (("name", self.name), ("type", self.stream_type)) if v is not None)
        inlet = None
        while inlet is None and not self._stop.is_set():
            found = pylsl.resolve_bypred(pred, 1, 1.0)
            if found:
                inlet = pylsl.StreamInlet(found[0], max_buflen=60)
            else:
                self.ready.set()  # not there (yet): the run does not wait for it
        if inlet is None:
            return
        n_channels = inlet.info().channel_count()
        bad = [c for c in self.channels if c is not None and c >= n_channels]
        if bad:
            self.error = f"{self.label} has {n_channels} channels, not channel {bad[0]}"
            return
        self.status = f"{self.label} has no sample yet"
        correction = 0.0
        next_correction = 0.0
        t_col, c_col, r_col = self.channels
        while not self._stop.is_set():
            if time.monotonic() >= next_correction:  # the clock offset to the sender, refreshed every 5 s
                try:
                    correction = inlet.time_correction(timeout=0.2)
                except Exception:  # noqa: BLE001 - pylsl's TimeoutError: keep the last offset
                    pass
                next_correction = time.monotonic() + 5.0
            samples, stamps = inlet.pull_chunk(timeout=POLL_S * 5)
            if not samples:
                continue
            self.ready.set()
            x = np.asarray(samples, dtype=np.float64)
            t = x[:, t_col] * self.time_unit_s if t_col is not None else np.asarray(stamps) + correction
            nan = np.full(len(x), np.nan)
            self.buffer.append(np.column_stack([t, x[:, c_col] if c_col is not None else nan,
                                                x[:, r_col] if r_col is not None else nan]))
        inlet.close_stream()
