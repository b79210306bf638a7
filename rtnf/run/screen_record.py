"""What the participant saw and did, recorded with the run's outputs.

The feedback screen publishes ``displayed`` (each flip that shows a new
state or value) and ``keys`` (key presses and scanner triggers) on its own
acknowledgement socket (``rtnf-screen --ack-address``, config
``publish.screen_address``). :class:`ScreenListener` subscribes to it in a
thread of its own that only receives: it creates, uses and closes its ZeroMQ
socket itself and hands the decoded messages (:class:`rtnf.wire.subscription.Subscription`,
the one decoder) to the run loop through a bounded queue. The run loop calls
:meth:`ScreenRecord.drain`, which writes them, flushed, as BIDS events of the
run: ``<prefix>_desc-screen_events.tsv`` with a JSON sidecar (created at the
first event: a run without a screen has none). The participant's ratings
(``rating``) go to ``<prefix>_desc-ratings_events.tsv`` (:mod:`rtnf.run.ratings`);
at the run's end the record waits for those the screen still shows (after
the last block, after the run), as its heartbeats announce them.

Only messages of this run (their ``run_id``) are written; the screen may run
on another machine (its clock is then the screen machine's).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from rtnf.wire.subscription import Received, Subscription
from . import outputs
from .ratings import RatingsRecord

log = logging.getLogger(__name__)

COLUMNS = ("onset", "duration", "trial_type", "volume_index", "value", "condition", "key", "state",
           "t_flip", "t_received", "t_key", "device", "pulse", "trigger_check")
MAX_QUEUED = 20000
RATINGS_NEWS_S = 1.5
"""At the run's end, how long to wait for the screen to say (heartbeat) whether ratings are still to come."""
RATINGS_GRACE_S = 2.0
"""How long past the time the screen said its pending ratings would have closed the record still waits."""
MAX_RATINGS_WAIT_S = 900.0
"""Longest wait for the participant's ratings at the run's end (the screen's time limits bound it first)."""
_MAX_TEXT = 64

SIDECAR = {
    "Description": "What the participant saw and did, as acknowledged by the feedback screen (rtnf-screen): "
                   "one row per displayed screen state or feedback value (trial_type 'displayed') and per key "
                   "press ('key') or scanner trigger ('trigger'). At the run's first trigger, TriggerTime (its "
                   "UNIX time on the screen machine's clock: the run's time zero) and TriggerOnset (the same "
                   "relative to StartTime) are added here.",
    "onset": {"Description": "Time of the flip (displayed) or key press, relative to StartTime.", "Units": "s"},
    "duration": {"Description": "Not measured (n/a)."},
    "trial_type": {"Description": "What happened.", "Levels": {
        "displayed": "the screen flipped a frame showing a new state or feedback value",
        "key": "a response key was pressed",
        "trigger": "a scanner trigger arrived (a key press or a byte from a serial trigger box)"}},
    "volume_index": {"Description": "0-based index of the feedback volume on screen (as index in the "
                                    "desc-rtnf_timeseries table), n/a when no value is shown."},
    "value": {"Description": "Feedback value shown, in [0, 1] (n/a: none)."},
    "condition": {"Description": "Protocol condition the screen showed."},
    "key": {"Description": "Key name as PsychoPy reports it."},
    "state": {"Description": "The screen's phase: waiting, running or ended."},
    "t_flip": {"Description": "UNIX time just after the flip (screen machine's clock).", "Units": "s"},
    "t_received": {"Description": "UNIX time the screen received the feedback message.", "Units": "s"},
    "t_key": {"Description": "UNIX time of the key press (screen machine's clock).", "Units": "s"},
    "device": {"Description": "Where a trigger or key came from: keyboard, or serial (a trigger box on a serial "
                              "port, stamped when its byte was read)."},
    "pulse": {"Description": "Triggers: the scanner pulse the trigger is, counted from the run's first trigger "
                             "(0, time zero: TriggerTime) at the TR, missed pulses included; n/a for an extra "
                             "pulse."},
    "trigger_check": {"Description": "Triggers, checked by the screen against the TR.", "Levels": {
        "time_zero": "the run's first trigger: its time zero (TriggerTime)",
        "ok": "about one TR after the previous pulse",
        "missed": "about two or more TRs after the previous pulse: pulses did not arrive before this one",
        "extra": "much sooner than one TR after the previous pulse: not a scanner pulse",
        "irregular": "neither about one TR nor a whole number of TRs after the previous pulse",
        "unchecked": "the TR was not known yet"}},
}


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**15 else "n/a"
    return repr(float(value)) if math.isfinite(value) else "n/a"


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "n/a"
    return "".join(c if c.isprintable() and c != "\t" else " " for c in value[:_MAX_TEXT])


class ScreenListener(threading.Thread):
    """A thread that subscribes to the screen's ``displayed`` and ``keys`` and queues them."""

    def __init__(self, address: str, curve: tuple[str, str] | None = None, maxsize: int = MAX_QUEUED) -> None:
        super().__init__(name="rtnf-screen-listener", daemon=True)
        self.address = address
        self.curve = curve
        self.messages: "queue.Queue[Received]" = queue.Queue(maxsize=maxsize)
        self.n_dropped = 0
        self.error: str | None = None
        self._stop_event = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sub = None
        try:
            sub = Subscription(ctx, self.address, ("displayed", "keys", "rating", "heartbeat"), "the feedback screen",
                               rcvhwm=10000,
                               curve=self.curve)
            poller = zmq.Poller()
            for sock in sub.sockets:
                poller.register(sock, zmq.POLLIN)
            self.ready.set()
            while not self._stop_event.is_set():
                ready = dict(poller.poll(100))
                for message in sub.receive(ready):
                    try:
                        self.messages.put_nowait(message)
                    except queue.Full:
                        self.n_dropped += 1
        except Exception as exc:  # noqa: BLE001 - never take the run down
            self.error = str(exc)
            log.warning("not recording the feedback screen's acknowledgements from %s: %s", self.address, exc)
        finally:
            self.ready.set()
            if sub is not None:
                sub.close()
            ctx.term()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop_event.set()
        self.join(timeout_s)


class ScreenRecord:
    """Writes the screen's acknowledgements of one run to ``<prefix>_desc-screen_events.tsv``.

    Parameters
    ----------
    folder : Path
        The run's ``func`` folder.
    prefix : str
        The run's BIDS prefix.
    run_id : str
        Only messages of this run are written.
    address : str
        The screen's acknowledgement address.
    curve : (folder, client name), optional
        CURVE keys when the screen uses ``--ack-curve-keys``.
    resume : bool
        Append to the file of a run whose process died.
    """

    def __init__(self, folder: Path, prefix: str, run_id: str, address: str,
                 curve: tuple[str, str] | None = None, resume: bool = False) -> None:
        self.run_id = run_id
        self.path = folder / f"{prefix}_{outputs.SCREEN_EVENTS}"
        self.sidecar_path = folder / f"{prefix}_{outputs.SCREEN_EVENTS_SIDECAR}"
        self.address = address
        self.t_start = time.time()
        self._appending = resume and self.path.exists() and self.sidecar_path.exists()
        if self._appending:
            try:
                self.t_start = float(json.loads(self.sidecar_path.read_text())["StartTime"])
            except (ValueError, KeyError, TypeError):
                self._appending = False
        elif not resume:
            for stale in (self.path, self.sidecar_path):  # an overwritten run's: not this run's events
                stale.unlink(missing_ok=True)
        self._file: Any = None  # opened at the first event: a run without a screen writes no file
        self.n_rows = 0
        self.n_displayed = 0
        self.n_other_run = 0
        self.last_displayed_index: int | None = None
        self.t_zero: float | None = None  # the run's first trigger (the screen's time zero)
        self._t_zero_written = False
        # The participant's ratings (rating topic) go to their own file; the screen's heartbeats say how
        # many are still to come, so that the end of the run waits for those shown after it.
        self.ratings = RatingsRecord(folder, prefix, run_id, self.t_start, resume)
        self.ratings_pending: int | None = None  # None: the screen has no ratings configured
        self.ratings_until: float | None = None
        self._ratings_fresh = False  # a heartbeat or rating came after the latest displayed
        self.listener = ScreenListener(address, curve)
        self.listener.start()
        self.listener.ready.wait(5.0)

    def _row(self, message: Received) -> str | None:
        body = message.body
        if body.get("run_id") != self.run_id:
            self.n_other_run += 1
            return None
        if message.topic == "displayed":
            kind, t = "displayed", body.get("t_displayed")
        else:
            kind, t = ("trigger" if body.get("role") == "trigger" else "key"), body.get("t_key")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            t = message.t_received
        index = body.get("index")
        if kind == "trigger" and self.t_zero is None:
            t_zero = body.get("t_zero")
            if isinstance(t_zero, (int, float)) and not isinstance(t_zero, bool) and math.isfinite(t_zero):
                self.t_zero = float(t_zero)
        if kind == "displayed":
            self.n_displayed += 1
            if isinstance(index, int) and not isinstance(index, bool):
                self.last_displayed_index = max(index, self.last_displayed_index or 0)
        cells = {
            "onset": f"{t - self.t_start:.4f}", "duration": "n/a", "trial_type": kind,
            "volume_index": _num(index) if isinstance(index, int) else "n/a",
            "value": _num(body.get("value")), "condition": _text(body.get("condition")),
            "key": _text(body.get("key")), "state": _text(body.get("state")),
            "t_flip": _num(body.get("t_displayed")), "t_received": _num(body.get("t_received")),
            "t_key": _num(body.get("t_key")),
            "device": _text(body.get("device") or ("keyboard" if message.topic == "keys" else None)),
            "pulse": _num(body.get("pulse")) if isinstance(body.get("pulse"), int) else "n/a",
            "trigger_check": _text(body.get("trigger_check")) if kind == "trigger" else "n/a",
        }
        return "\t".join(cells[c] for c in COLUMNS) + "\n"

    def _open(self) -> None:
        if not self._appending:
            sidecar = {**SIDECAR, "StartTime": self.t_start, "RunId": self.run_id, "ScreenAddress": self.address}
            self.sidecar_path.write_text(json.dumps(sidecar, indent=2))
        self._file = open(self.path, "a" if self._appending else "w", encoding="utf-8")
        if not self._appending:
            self._file.write("\t".join(COLUMNS) + "\n")

    def _write_time_zero(self) -> None:
        """Add the run's time zero (its first trigger) to the sidecar, once."""
        self._t_zero_written = True
        try:
            sidecar = json.loads(self.sidecar_path.read_text())
            if "TriggerTime" in sidecar:
                return  # a resumed run keeps the time zero it had
            sidecar.update(TriggerTime=self.t_zero, TriggerOnset=round(self.t_zero - self.t_start, 6))
            tmp = self.sidecar_path.with_name(self.sidecar_path.name + ".tmp")
            tmp.write_text(json.dumps(sidecar, indent=2))
            tmp.replace(self.sidecar_path)
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("could not add the time zero to %s: %s", self.sidecar_path.name, exc)

    def drain(self) -> int:
        """Write the queued messages (run loop's thread); returns the rows written."""
        lines = []
        while True:
            try:
                message = self.listener.messages.get_nowait()
            except queue.Empty:
                break
            if message.topic in ("rating", "heartbeat"):
                self._ratings_message(message)
                continue
            line = self._row(message)
            if message.topic == "displayed":
                self._ratings_fresh = False
            if line is not None:
                lines.append(line)
        if lines:
            if self._file is None:
                self._open()
            self._file.write("".join(lines))
            self._file.flush()
            self.n_rows += len(lines)
        if self.t_zero is not None and not self._t_zero_written and self._file is not None:
            self._write_time_zero()
        return len(lines)

    def _ratings_message(self, message: Received) -> None:
        """A rating of this run is written; it and the screen's heartbeats say how many ratings are to come."""
        body = message.body
        if body.get("run_id") != self.run_id:
            return
        if message.topic == "rating":
            self.ratings.write(body)
        pending, until = body.get("ratings_pending"), body.get("ratings_until")
        if isinstance(pending, int) and not isinstance(pending, bool) and pending >= 0:
            self.ratings_pending = pending
            ok = isinstance(until, (int, float)) and not isinstance(until, bool) and math.isfinite(until)
            self.ratings_until = float(until) if ok else None
            self._ratings_fresh = True

    def _wait_for_ratings(self) -> None:
        """At the run's end: wait for the ratings the screen still shows (after the last block, after the run)."""
        if self.ratings_pending is None:
            return  # no ratings configured on the screen (or no screen)
        deadline = time.time() + RATINGS_NEWS_S
        while not self._ratings_fresh and time.time() < deadline:  # news from after the last acknowledgement
            time.sleep(0.05)
            self.drain()
        if not self.ratings_pending:
            return
        cap = time.time() + MAX_RATINGS_WAIT_S
        log.info("waiting for %d rating(s) of the participant on the feedback screen", self.ratings_pending)
        while self.ratings_pending and time.time() < cap:
            until = self.ratings_until
            if until is not None and time.time() > until + RATINGS_GRACE_S:
                break
            time.sleep(0.05)
            self.drain()
        if self.ratings_pending:
            log.warning("%d rating(s) the feedback screen announced did not arrive; they are not in %s",
                        self.ratings_pending, self.ratings.path.name)

    def finish(self, last_index: int | None, grace_s: float = 1.5) -> None:
        """Wait (briefly) for the screen to acknowledge the last volume, write, stop and close."""
        try:
            deadline = time.time() + grace_s
            self.drain()
            while (self.n_displayed and last_index is not None and time.time() < deadline
                   and (self.last_displayed_index is None or self.last_displayed_index < last_index)):
                time.sleep(0.05)
                self.drain()
            if last_index is not None:
                self._wait_for_ratings()
            time.sleep(0.05 if self.n_displayed else 0)
            self.drain()
        finally:
            self.listener.stop()
            if self._file is not None:
                self._file.close()
            self.ratings.close()
        if self.listener.n_dropped:
            log.warning("%d acknowledgements of the feedback screen were dropped (queue full)",
                        self.listener.n_dropped)
        if self.n_rows:
            log.info("feedback screen: %d events recorded in %s", self.n_rows, self.path.name)
        if self.ratings.n_rows:
            log.info("feedback screen: %d ratings recorded in %s", self.ratings.n_rows, self.ratings.path.name)
