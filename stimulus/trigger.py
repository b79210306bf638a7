"""The scanner's trigger: keyboard emulation and a serial trigger box, one clock per run.

MR scanners send a pulse at each volume. It reaches the feedback screen as a
key press (trigger boxes that emulate a keyboard, ``display.keys.trigger``,
``"5"`` by default) or as a byte on a serial port (a serial or USB-serial
trigger box, ``[display.trigger]``: ``port``, ``baud``, ``byte``). Both go
through one :class:`TriggerClock`:

- the run's first trigger sets its **time zero** (``t_zero``, carried by every
  later trigger of the run);
- each later trigger is checked against the run's TR (the ``tr_s`` of rtnf's
  run message), from the previous trigger that was a scanner pulse: about one
  TR is "ok"; about a whole number ``k >= 2`` of TRs is "missed" (``k - 1``
  pulses did not arrive); much less than a TR is "extra" (not a scanner pulse:
  it does not move the reference); anything else is "irregular". "About" is
  ``display.trigger.tolerance`` times the TR.

Every trigger is published on the screen's socket as a ``keys`` message with
role "trigger" (:class:`rtnf.wire.topics.KeysMessage`: ``device``,
``trigger_index``, ``pulse``, ``t_zero``, ``gap_s``, ``trigger_check``,
``n_missed``), written to the screen's key log and logged; rtnf records it
in the run's screen events and the operator's console lists the missed,
extra and irregular ones as events.

The serial port is read in a thread of its own (:class:`SerialTriggerReader`)
that only reads and stamps; the frame loop takes the stamped bytes at each
frame and publishes them (ZeroMQ sockets stay in the loop's thread). A port
that cannot be opened, or that disappears during the run, gives one clear
message (logged, and in the screen's heartbeat as ``trigger_error``); the
screen goes on, with the keyboard trigger.

Imports nothing of rtnf outside :mod:`rtnf.wire`, and not PsychoPy; pyserial
(a dependency of PsychoPy) is imported when a port is configured.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from rtnf.wire.display import DisplayConfig

logger = logging.getLogger("stimulus.trigger")

TRIGGER_CHECKS: tuple[str, ...] = ("time_zero", "ok", "missed", "extra", "irregular", "unchecked")
"""Values of ``trigger_check``; "unchecked": the TR is not known (no run message yet)."""
PROBLEMS: tuple[str, ...] = ("missed", "extra", "irregular")
"""Checks that are logged as warnings and shown to the operator."""
READ_TIMEOUT_S = 0.1
"""The reader thread's read returns at least this often, to notice that it should stop."""
MAX_QUEUED = 10_000


class SerialTriggerError(RuntimeError):
    """The serial trigger port cannot be used; the message says which port, why, and which key."""


def byte_name(value: int) -> str:
    """The ``key`` of a serial trigger: its character when printable ASCII ("5", "t"), else ``0xNN``."""
    return chr(value) if 0x21 <= value <= 0x7E else f"0x{value:02x}"


# --------------------------------------------------------------------------- #
# The clock
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class TriggerCheck:
    """What one trigger is, in its run.

    Attributes
    ----------
    trigger_index : int
        0-based number of the trigger in the run as received (extra pulses counted).
    pulse : int or None
        The scanner pulse it is, counted from time zero (0) at the TR, missed
        pulses included; None for an extra pulse.
    t_zero : float
        The run's time zero: the time of its first trigger (UNIX s).
    gap_s : float or None
        Seconds since the previous trigger that was a scanner pulse (None for the first).
    check : str
        One of :data:`TRIGGER_CHECKS`.
    n_missed : int
        Pulses missed just before this one.
    """

    trigger_index: int
    pulse: int | None
    t_zero: float
    gap_s: float | None
    check: str
    n_missed: int = 0

    def fields(self) -> dict[str, Any]:
        """The trigger fields of a ``keys`` message."""
        return {"trigger_index": self.trigger_index, "pulse": self.pulse, "t_zero": self.t_zero,
                "gap_s": self.gap_s, "trigger_check": self.check, "n_missed": self.n_missed}


class TriggerClock:
    """Time zero and the TR check of a run's triggers (pure: no I/O, no clock of its own).

    Parameters
    ----------
    tolerance : float
        Fraction of the TR, in (0, 0.5]: a gap within ``tolerance * TR`` of one
        TR is "ok", of ``k >= 2`` TRs "missed" (``k - 1`` pulses); a gap under
        ``(1 - tolerance) * TR`` is "extra".
    """

    def __init__(self, tolerance: float = 0.25) -> None:
        if not 0.0 < tolerance <= 0.5:
            raise ValueError("Invalid value for the 'tolerance' parameter. Allowed values are fractions of the "
                             f"TR in (0, 0.5], but got {tolerance!r} instead.")
        self.tolerance = float(tolerance)
        self.run_id: str | None = None
        self._reset(None)

    def _reset(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.n_triggers = 0
        self.t_zero: float | None = None
        self._t_pulse: float | None = None  # time of the latest trigger that was a pulse
        self._pulse = 0

    def add(self, t: float, run_id: str | None, tr_s: float | None) -> TriggerCheck:
        """Place the trigger received at ``t`` in its run.

        Parameters
        ----------
        t : float
            When the trigger arrived (``time.time()``).
        run_id : str or None
            The run the screen shows; a new run starts a new clock (its first
            trigger is its time zero). Triggers before any run form a clock of
            their own, replaced when the run starts.
        tr_s : float or None
            The run's repetition time in seconds; None or not positive: the
            trigger is counted but not checked ("unchecked").
        """
        if run_id != self.run_id:
            self._reset(run_id)
        index = self.n_triggers
        self.n_triggers += 1
        if self.t_zero is None or self._t_pulse is None:
            self.t_zero = self._t_pulse = t
            self._pulse = 0
            return TriggerCheck(index, 0, t, None, "time_zero")
        gap = t - self._t_pulse
        if tr_s is None or not tr_s > 0:
            return self._pulse_at(t, index, gap, 1, "unchecked")
        ratio = gap / tr_s
        whole = round(ratio)
        if ratio < 1.0 - self.tolerance:
            return TriggerCheck(index, None, self.t_zero, gap, "extra")
        if abs(ratio - whole) <= self.tolerance:
            if whole == 1:
                return self._pulse_at(t, index, gap, 1, "ok")
            return self._pulse_at(t, index, gap, whole, "missed", whole - 1)
        return self._pulse_at(t, index, gap, max(1, whole), "irregular")

    def _pulse_at(self, t: float, index: int, gap: float, step: int, check: str, n_missed: int = 0) -> TriggerCheck:
        self._pulse += step
        self._t_pulse = t
        assert self.t_zero is not None
        return TriggerCheck(index, self._pulse, self.t_zero, gap, check, n_missed)


def describe(check: TriggerCheck, tr_s: float | None, device: str) -> str:
    """One line for the log and the operator: what was wrong with a trigger."""
    tr = f"TR {tr_s:g} s" if tr_s else "TR unknown"
    gap = f"{check.gap_s:.3f} s" if check.gap_s is not None else "n/a"
    where = f"trigger {check.trigger_index} ({device})"
    if check.check == "missed":
        return (f"missed scanner trigger: {check.n_missed} pulse{'s' if check.n_missed > 1 else ''} did not "
                f"arrive before {where}, pulse {check.pulse}: {gap} since the previous pulse ({tr})")
    if check.check == "extra":
        return (f"extra scanner trigger: {where} came {gap} after the previous pulse ({tr}); "
                "not counted as a pulse")
    if check.check == "irregular":
        return (f"irregular scanner trigger: {where}, counted as pulse {check.pulse}, came {gap} after the "
                f"previous pulse ({tr}): neither one TR nor a whole number of TRs")
    return f"{where}: {check.check}"


# --------------------------------------------------------------------------- #
# The serial port
# --------------------------------------------------------------------------- #
class SerialTriggerReader:
    """Reads a trigger box's serial port in a thread of its own and stamps each trigger byte.

    The thread reads one byte at a time and takes ``time.time()`` right after
    the read returns, so each byte has its own time stamp. Bytes other than
    ``trigger_byte`` are counted (:attr:`n_ignored`) and dropped. The thread
    never touches ZeroMQ: the frame loop takes the stamps with :meth:`take`.

    Latency of the stamp after the pulse (what it adds, from the box's edge):

    - the line and the adapter: a native UART adds the byte's transmission
      time (10 bits / baud: 1.0 ms at 9600 baud, 0.09 ms at 115200); a USB-CDC
      box (``/dev/ttyACM*``) the next USB poll (at most 1 ms at full speed); an
      FTDI USB-serial adapter (``/dev/ttyUSB*``) holds bytes until its latency
      timer expires, **16 ms** by default on Linux: set it to 1 ms
      (``echo 1 > /sys/bus/usb-serial/devices/ttyUSB0/latency_timer``);
    - this process: the kernel wakes the blocked read within tens of
      microseconds, then the thread needs the GIL, which the frame loop may
      hold for up to Python's switch interval (``sys.getswitchinterval()``,
      5 ms) while it runs Python code; median well under a millisecond on a
      pseudo-terminal (``tests/test_serial_trigger.py``).

    The trigger is published at the frame loop's next frame (at most one
    frame, ``1 / max_fps``, later); that delay is not in the stamp.

    Parameters
    ----------
    port : str
        Device name ("/dev/ttyUSB0", "COM3") or any pyserial URL.
    baud : int
        Baud rate.
    trigger_byte : int
        The byte (0-255) the box sends for each pulse.

    Attributes
    ----------
    error : str or None
        Set (once) when the port failed while reading; the thread has then ended.
    n_ignored : int
        Bytes other than the trigger byte.
    """

    def __init__(self, port: str, baud: int, trigger_byte: int, *, maxsize: int = MAX_QUEUED) -> None:
        self.port = port
        self.baud = int(baud)
        self.trigger_byte = int(trigger_byte)
        self.error: str | None = None
        self.n_ignored = 0
        self.n_dropped = 0
        self._queue: "queue.Queue[float]" = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._serial: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the port and start reading.

        Raises
        ------
        SerialTriggerError
            The port cannot be opened (absent, busy, not a serial device,
            pyserial missing), with the port's name and the reason.
        """
        try:
            import serial  # pyserial: installed with PsychoPy (rtnf[display])
        except ImportError:
            raise SerialTriggerError(f"cannot read the serial trigger port {self.port!r} (display.trigger.port): "
                                     "pyserial is not installed (pip install pyserial)") from None
        try:
            self._serial = serial.Serial(self.port, baudrate=self.baud, timeout=READ_TIMEOUT_S, exclusive=True)
            self._serial.reset_input_buffer()  # bytes from before the screen started have no usable time
        except (serial.SerialException, OSError, ValueError) as exc:
            self._serial = None
            raise SerialTriggerError(
                f"cannot open the serial trigger port {self.port!r} (display.trigger.port) at {self.baud} baud: "
                f"{exc}") from None
        self._thread = threading.Thread(target=self._run, name="rtnf-serial-trigger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ser = self._serial
        trigger = self.trigger_byte
        while not self._stop.is_set():
            try:
                data = ser.read(1)
                t = time.time()  # right after the read returned: the byte's stamp
            except Exception as exc:  # noqa: BLE001 - SerialException, OSError, TypeError of a closed port
                if not self._stop.is_set():
                    self.error = (f"lost the serial trigger port {self.port!r} (display.trigger.port): "
                                  f"{exc or type(exc).__name__}")
                return
            if not data:
                continue  # read timeout: look at the stop flag
            if data[0] != trigger:
                self.n_ignored += 1
                continue
            try:
                self._queue.put_nowait(t)
            except queue.Full:
                self.n_dropped += 1

    @property
    def alive(self) -> bool:
        """True while the thread reads."""
        return self._thread is not None and self._thread.is_alive()

    def take(self) -> list[float]:
        """The stamps of the trigger bytes read since the last call, in order."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and close the port (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:  # noqa: BLE001 - a vanished device may fail to close
                pass
            self._serial = None


# --------------------------------------------------------------------------- #
# The frame loop's side
# --------------------------------------------------------------------------- #
class Triggers:
    """The screen's scanner triggers: the serial reader, the clock, and what each trigger is told to.

    Used by the frame loop (:class:`stimulus.cli.Loop`), in its thread: it
    hands over keyboard triggers with :meth:`trigger` and calls :meth:`poll`
    at each frame for the serial ones.

    Parameters
    ----------
    cfg : DisplayConfig
        ``trigger`` (port, baud, byte, tolerance) and ``keys.trigger``.
    link : stimulus.link.FeedbackLink
        Publishes each trigger (:meth:`~stimulus.link.FeedbackLink.send_key`).
    key_log : stimulus.cli.KeyLog
        The screen's key log.
    counter : stimulus.cli.KeyCounter
        The key counts of the screen's heartbeat.
    reader : SerialTriggerReader, optional
        Instead of one made from ``cfg.trigger`` (tests).

    Attributes
    ----------
    error : str or None
        Why the serial port is not read (see :meth:`heartbeat_fields`).
    """

    def __init__(self, cfg: DisplayConfig, link: Any, key_log: Any, counter: Any,
                 reader: SerialTriggerReader | None = None) -> None:
        self.cfg = cfg
        self.link = link
        self.key_log = key_log
        self.counter = counter
        self.clock = TriggerClock(cfg.trigger.tolerance)
        self.error: str | None = None
        self.reader: SerialTriggerReader | None = None
        port = cfg.trigger.port
        if reader is None and port is not False:
            reader = SerialTriggerReader(str(port), cfg.trigger.baud, cfg.trigger.byte)
        if reader is not None:
            try:
                reader.start()
            except SerialTriggerError as exc:
                self._fail(str(exc))
            else:
                self.reader = reader
                logger.info("serial trigger: reading %s at %d baud, trigger byte %r", reader.port, reader.baud,
                            byte_name(reader.trigger_byte))

    def _fail(self, reason: str) -> None:
        key = self.cfg.keys.trigger
        fallback = (f"the screen goes on with the keyboard trigger {key!r} only" if key is not False
                    else "no trigger is read (display.keys.trigger is false)")
        self.error = f"{reason}; {fallback}"
        logger.error("%s", self.error)

    def trigger(self, key: str, t: float, device: str, state: Any) -> TriggerCheck:
        """Place, log, record and publish one trigger.

        Parameters
        ----------
        key : str
            The key name, or the serial byte (:func:`byte_name`).
        t : float
            Its time (``time.time()``).
        device : str
            "keyboard" or "serial".
        state : stimulus.link.ScreenState
            The screen's state (run, TR, phase, feedback on screen).
        """
        tr_s = state.run.tr_s if state.run is not None else None
        check = self.clock.add(t, state.run_id, tr_s)
        self.counter.add(key, "trigger", t)
        self.key_log.write(t, key, "trigger", state, device=device, pulse=check.pulse, trigger_check=check.check)
        if check.check == "time_zero":
            logger.info("time zero of run %s: first trigger, %s %r at %.6f", state.run_id or "(none yet)", device,
                        key, t)
        elif check.check in PROBLEMS:
            logger.warning("%s", describe(check, tr_s, device))
        else:
            logger.info("trigger %s %r at %.6f (pulse %s)", device, key, t, check.pulse)
        fb = state.feedback
        self.link.send_key(key=key, role="trigger", t_key=t, state=state.phase,
                           index=None if fb is None else fb.index, device=device, **check.fields())
        return check

    def poll(self, state: Any) -> int:
        """Publish the serial triggers read since the last call; report a lost port once.

        Returns
        -------
        int
            Number of serial triggers handled.
        """
        reader = self.reader
        if reader is None:
            return 0
        stamps = reader.take()
        for t in stamps:
            self.trigger(byte_name(reader.trigger_byte), t, "serial", state)
        if reader.error is not None and not reader.alive:
            stamps_left = reader.take()  # read before the port failed
            for t in stamps_left:
                self.trigger(byte_name(reader.trigger_byte), t, "serial", state)
            self._fail(reader.error)
            reader.close()
            self.reader = None
            return len(stamps) + len(stamps_left)
        return len(stamps)

    def heartbeat_fields(self) -> dict[str, Any]:
        """``trigger_error`` for the screen's heartbeat, when the serial port is not read."""
        return {} if self.error is None else {"trigger_error": self.error}

    def close(self) -> None:
        """Stop reading the serial port."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
