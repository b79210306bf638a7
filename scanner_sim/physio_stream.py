"""The physiological recording of a run, written as it happens: a growing text log and an LSL outlet.

During an export (:func:`scanner_sim.export.export_run`) a :class:`PhysioStream`
thread sends every sample of the run's true traces
(:class:`scanner_sim.physio.PhysioTraces`) once its time has come: the
sample at scanner time ``t`` (seconds from the acquisition start of volume 0,
the first volume written, dummies included) goes out at wall time
``t0 + t / speed``, in step with the volumes.

Log format (``log``, in the export folder beside the images): a header line
``time_s<TAB>cardiac<TAB>respiratory``, then one line per sample,
``t`` (scanner seconds, 3 decimals) and the two unit-RMS waveforms (5
decimals), tab-separated; lines are appended and flushed every
:data:`CHUNK_S` seconds. rtnf reads it with ``[confounds.physio]``
``log = "<name>"``, ``header_lines = 1``, ``time_column = "time_s"``,
``cardiac_column = "cardiac"``, ``resp_column = "respiratory"``.

LSL (``lsl_name``): a stream of type ``physio`` with three double channels
(``time_s``, ``cardiac``, ``respiratory``) at :data:`scanner_sim.physio.TRACE_HZ`,
each sample stamped with the ``pylsl.local_clock`` time it was due (so the LSL
timestamps and the volumes' ``acq_time`` agree); rtnf reads it with
``lsl_name``, ``cardiac_column = 1``, ``resp_column = 2`` and either
``time_column = 0`` or no time column (the LSL timestamps).

A stall (``stall = (start_s, duration_s)``, scanner seconds) holds back every
sample due in that window until its end, then sends them at once, like a
stream that freezes and catches up.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .physio import PhysioTraces

__all__ = ["PhysioStreamOptions", "PhysioStream", "CHUNK_S", "LOG_COLUMNS"]

logger = logging.getLogger(__name__)

#: Wall seconds between two writes of the log (and pushes to the outlet).
CHUNK_S = 0.02
LOG_COLUMNS = ("time_s", "cardiac", "respiratory")


@dataclass(frozen=True)
class PhysioStreamOptions:
    """Where the recording goes during an export.

    Attributes
    ----------
    log : str or None
        File name of the growing log in the export folder.
    lsl_name : str or None
        Name of the LSL outlet.
    stall : tuple of float or None
        ``(start_s, duration_s)`` in scanner seconds: nothing is sent in that window, then everything at once.
    """

    log: str | None = None
    lsl_name: str | None = None
    stall: tuple[float, float] | None = None


class PhysioStream:
    """A thread that sends the traces of a run at the pace of its export (see the module docstring).

    Parameters
    ----------
    traces : PhysioTraces
        The run's true traces.
    export_dir : Path
        The export folder (the log goes there).
    options : PhysioStreamOptions
        What to write.
    """

    def __init__(self, traces: PhysioTraces, export_dir: Path, options: PhysioStreamOptions) -> None:
        self.traces = traces
        self.options = options
        self.log_path = None if options.log is None else Path(export_dir) / options.log
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._outlet = None
        if options.lsl_name is not None:
            import pylsl

            info = pylsl.StreamInfo(options.lsl_name, "physio", 3, float(1.0 / np.median(np.diff(traces.t_s))),
                                    "double64", f"scanner-sim-{options.lsl_name}")
            channels = info.desc().append_child("channels")
            for name, unit in (("time_s", "s"), ("cardiac", "a.u."), ("respiratory", "a.u.")):
                channels.append_child("channel").append_child_value("label", name).append_child_value("unit", unit)
            self._outlet = pylsl.StreamOutlet(info)

    def start(self, t0_wall: float, t0_mono: float, speed: float, stop: threading.Event) -> None:
        """Start sending: scanner time 0 is ``t0_wall`` (``time.time()``) and ``t0_mono`` (``time.monotonic()``)."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "w") as fh:
                fh.write("\t".join(LOG_COLUMNS) + "\n")
        self._thread = threading.Thread(target=self._run, args=(t0_wall, t0_mono, speed, stop),
                                        name="scanner-sim-physio", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Stop sending (the export is over) and wait for the thread."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self, t0_wall: float, t0_mono: float, speed: float, stop: threading.Event) -> None:
        tr = self.traces
        card, resp = tr.cardiac, tr.respiratory
        stall = self.options.stall
        sent = 0
        fh = open(self.log_path, "a") if self.log_path is not None else None
        try:
            while sent < len(tr.t_s) and not (self._done.is_set() or stop.is_set()):
                now = (time.monotonic() - t0_mono) * speed  # scanner seconds since volume 0
                due = int(np.searchsorted(tr.t_s, now, "right"))
                if stall is not None and stall[0] <= now < stall[0] + stall[1]:
                    due = min(due, int(np.searchsorted(tr.t_s, stall[0], "left")))
                if due > sent:
                    sl = slice(sent, due)
                    if fh is not None:
                        fh.write("".join(f"{t:.3f}\t{c:.5f}\t{r:.5f}\n"
                                         for t, c, r in zip(tr.t_s[sl], card[sl], resp[sl])))
                        fh.flush()
                    if self._outlet is not None:
                        self._push(sl, t0_wall, speed, card, resp)
                    sent = due
                time.sleep(CHUNK_S)
        finally:
            if fh is not None:
                fh.close()

    def _push(self, sl: slice, t0_wall: float, speed: float, card: np.ndarray, resp: np.ndarray) -> None:
        import pylsl

        # a sample's stamp is the local_clock time it was due, whenever it is pushed (a stall catches up)
        lsl_minus_unix = pylsl.local_clock() - time.time()
        for t, c, r in zip(self.traces.t_s[sl], card[sl], resp[sl]):
            self._outlet.push_sample([float(t), float(c), float(r)], t0_wall + t / speed + lsl_minus_unix)
