"""What the operator console knows about the run: a pure state machine.

:class:`RunState` is fed the typed wire-protocol messages of
:mod:`rtnf.wire.topics` (or their decoded bodies, checked with those classes:
an invalid optional value reads as absent, a message without a usable required
field is ignored) and keeps the whole run so far as one row per volume,
in the columns the page plots. It imports neither ZeroMQ nor the web stack:
the console's subscriber thread only decodes and queues messages, and the web server's
event loop (one thread) applies them here and reads the rows back.

Rows are kept in arrival order; a row that changes after it was first added
(its feedback value or the screen's acknowledgement came later) is logged in
:attr:`RunState.changes`, so that each open page can send only what is new.
Beside the rows it keeps the run's ``log`` messages (bounded, for the event
list and the recording / error alerts), the latest ``preview`` only (made
ready to draw by :mod:`rtnf.apps.console.preview`), the screen's key presses
and the participant's ratings (``rating`` topic, as they arrive).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtnf.wire.messages import SATURATION_EPS, SATURATION_WARN_FRACTION, MessageError, reason_kind, volume_label
from rtnf.wire.topics import (
    MAX_LOG_CHARS,
    DisplayedMessage,
    FeedbackMessage,
    HeartbeatMessage,
    KeysMessage,
    LogMessage,
    PreviewMessage,
    RatingMessage,
    RunMessage,
    VolumeMessage,
    WireMessage,
    parse_body,
)
from .preview import Preview, prepare

MOTION_PARAMETERS: tuple[str, ...] = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
ROTATION_DEGREES: tuple[str, ...] = ("rot_x_deg", "rot_y_deg", "rot_z_deg")  # the rotations as plotted
STAGES: tuple[tuple[str, str, str], ...] = (
    # (column, from, to): processing latency split by stage, then the screen.
    ("lat_read_ms", "t_detected", "t_read"),
    ("lat_preprocess_ms", "t_read", "t_preprocessed"),
    ("lat_model_ms", "t_preprocessed", "t_modelled"),
    ("lat_publish_ms", "t_modelled", "t_published"),
    ("lat_display_ms", "t_published", "t_displayed"),
)
# Marker rows of the events strip: y position of each flag's marker.
MARKS: tuple[tuple[str, float], ...] = (("missing", 4.0), ("late", 3.0), ("censored", 2.0), ("motion", 1.0))
NAN = float("nan")
EVENTS_MAX = 200  # log messages kept per run (the oldest are dropped)
RATINGS_MAX = 1000  # ratings kept per run (the oldest are dropped)
MESSAGE_MAX_CHARS = MAX_LOG_CHARS  # longer log messages are cut (rtnf.wire.topics.LogMessage)
TRIGGER_PROBLEMS: tuple[str, ...] = ("missed", "extra", "irregular")  # trigger_check values listed as events
ERROR_ALERT_S = 60.0  # an ERROR log message stays in the alert bar this long (it stays in the event list)
LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RECORDING_FAILED = "RECORDING FAILED"  # rtnf.run.record's alarm, raised until ...
RECORDING_WORKS = "recording works again"  # ... its all-clear
SATURATION_ALERT_MIN_VOLUMES = 10  # regulation volumes with a value before the saturation alert can fire
NO_FEEDBACK_REASON = "no feedback in this run"  # rtnf's reason when feedback.enabled is false
BLOCK_SCORES_MAX = 1000  # scored blocks kept per run (shaping)
DEFAULT_LAG_S = 6.0  # feedback.hemodynamic_lag_s when the run message does not say

BASE_COLUMNS: tuple[str, ...] = (
    "index", "volume", "acquisition", "condition", "block", "onset_s", "feedback", "feedback_reason",
    *MOTION_PARAMETERS, *ROTATION_DEGREES, "fd", "fd_high",
    "missing", "censored", "late", "high_motion",
    *(c for c, _, _ in STAGES), "processing_ms", "e2e_ms",
    "t_detected", "t_published", "t_displayed", "t_received",
    *(f"mark_{name}" for name, _ in MARKS),
)


def roi_columns(rois: list[str]) -> list[str]:
    """Per-ROI columns: ``raw_<roi>``, ``clean_<roi>``, ``psc_<roi>``."""
    return [f"{kind}_{roi}" for roi in rois for kind in ("raw", "clean", "psc")]


def _num(value: Any) -> float:
    """A finite number as float, anything else (None, text, NaN) as NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NAN
    value = float(value)
    return value if math.isfinite(value) else NAN


def _flag(value: Any) -> bool:
    return value is True


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


_TIMES: tuple[str, ...] = ("t_acquired", "t_detected", "t_read", "t_preprocessed", "t_modelled", "t_published")


def _typed(topic: str, body: "dict[str, Any] | WireMessage") -> Any:
    """The typed message of a decoded body (rtnf.wire.topics); MessageError when it cannot be used."""
    if isinstance(body, WireMessage):
        if body.TOPIC != topic:
            raise MessageError(f"a {body.TOPIC} message given as {topic}")
        return body
    return parse_body(topic, body)


def _ms(t_to: float, t_from: float) -> float:
    return (t_to - t_from) * 1000.0  # NaN stays NaN


@dataclass(frozen=True)
class LogEvent:
    """One ``log`` message from rtnf.

    Attributes
    ----------
    level : str
        "DEBUG", "INFO", "WARNING", "ERROR" or "CRITICAL" (anything else is shown as "INFO").
    message : str
        At most :data:`MESSAGE_MAX_CHARS` characters.
    t : float
        When rtnf logged it (``time.time()`` on rtnf's machine; the arrival time if absent).
    t_received : float
        When the console received it.
    """

    level: str
    message: str
    t: float
    t_received: float

    @property
    def is_error(self) -> bool:
        return self.level in ("ERROR", "CRITICAL")



def clock_time(t: float) -> str:
    """``HH:MM:SS`` local time of a UNIX time."""
    return time.strftime("%H:%M:%S", time.localtime(t))


@dataclass(frozen=True)
class Alert:
    """One active alert.

    Attributes
    ----------
    key : str
        "recording", "error", "no_feedback", "motion", "saturation", "stall", "screen" or "rtnf"
        (stable, used as a CSS class).
    level : str
        "warning" or "error".
    text : str
        What the operator reads.
    """

    key: str
    level: str
    text: str


class RunState:
    """The current run as seen by the console.

    Parameters
    ----------
    fd_threshold_mm : float
        Framewise displacement above this many millimetres counts as high
        motion (the run message's ``fd_threshold_mm``, the session config's
        ``quality.fd_threshold_mm``, takes precedence).
    screen_timeout_s : float
        The feedback screen counts as silent after this many seconds without
        its heartbeat.
    rtnf_timeout_s : float
        rtnf counts as silent after this many seconds without any message
        (at least three of the run message's ``heartbeat_s``).
    stall_trs : float
        While running, no volume for more than this many TRs is a stalled
        scanner.
    motion_alert_volumes : int
        The high-motion alert stays up while one of the last this many
        volumes was over the threshold.
    expect_screen : bool
        False when the console was started without a screen address: no
        screen alert then.
    t_start : float
        Console start time (``time.time()``): the reference for "never
        heard from" alerts.

    Attributes
    ----------
    generation : int
        Incremented whenever the page must be rebuilt from scratch (a new
        run, or the run's protocol learnt after its first volumes).
    rows : list of dict
        One row per volume received, in arrival order, with the columns of
        :meth:`columns`.
    changes : list of int
        Append-only log of the row positions changed after they were added.
    events : collections.deque of LogEvent
        The run's ``log`` messages, and the feedback screen's missed, extra or
        irregular scanner triggers and serial trigger port problems, oldest
        first, at most :data:`EVENTS_MAX`; :attr:`n_events` counts all of them
        (a page compares it to know when to redraw the list).
    preview : Preview or None
        The latest ``preview`` message, ready to draw (only the latest is
        kept); :attr:`n_previews` counts them.
    keys : dict
        Key presses from the feedback screen (``keys`` topic): ``n_triggers``,
        ``t_last_trigger``, ``n_responses``, ``last_response`` (key name) and
        ``t_last_response``.
    ratings : collections.deque of dict
        The participant's ratings of the run (``rating`` topic), oldest first, at
        most :data:`RATINGS_MAX`: ``question``, ``text``, ``value`` (None: no
        answer), ``scale``, ``timed_out``, ``response_time_s``, ``index``
        (feedback index on screen when it was shown), ``block``, ``condition``,
        ``when``, ``response``, ``t_onset``, ``t_received``; :attr:`n_ratings`
        counts them all.
    rating_on_screen : str or None
        The question on the participant's screen now (the screen's heartbeat).
    """

    def __init__(
        self,
        fd_threshold_mm: float = 0.5,
        screen_timeout_s: float = 3.0,
        rtnf_timeout_s: float = 3.0,
        stall_trs: float = 2.0,
        motion_alert_volumes: int = 5,
        expect_screen: bool = True,
        t_start: float = 0.0,
    ) -> None:
        if not fd_threshold_mm > 0:
            raise ValueError(
                "Invalid value for the 'fd_threshold_mm' parameter. Allowed values are positive "
                f"numbers of millimetres, but got {fd_threshold_mm!r} instead."
            )
        self.default_fd_threshold_mm = float(fd_threshold_mm)
        self.screen_timeout_s = float(screen_timeout_s)
        self.default_rtnf_timeout_s = float(rtnf_timeout_s)
        self.stall_trs = float(stall_trs)
        self.motion_alert_volumes = int(motion_alert_volumes)
        self.expect_screen = expect_screen
        self.t_start = t_start
        self.generation = 0
        self.n_messages = 0
        self.n_ignored = 0
        self.t_last_rtnf: float | None = None
        self.t_last_screen: float | None = None
        self.screen_state: str | None = None
        self._new_run(None)

    # ------------------------------------------------------------------ state
    def _new_run(self, run_id: str | None) -> None:
        self.generation += 1
        self.run_id = run_id
        self.run: RunMessage | None = None  # the run's start message
        self.end: RunMessage | None = None  # its end / abort message
        self.heartbeat_state: str | None = None
        self.rois: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.position: dict[int, int] = {}
        self.changes: list[int] = []
        self.t_last_volume: float | None = None
        self.preview: Preview | None = None
        self.n_previews = 0
        self.events: deque[LogEvent] = deque(maxlen=EVENTS_MAX)
        self.n_events = 0
        self.recording_failure: LogEvent | None = None  # set by RECORDING FAILED until it works again
        self.keys: dict[str, Any] = {"n_triggers": 0, "t_last_trigger": None, "n_responses": 0,
                                     "last_response": None, "t_last_response": None}
        self.ratings: deque[dict[str, Any]] = deque(maxlen=RATINGS_MAX)
        self.n_ratings = 0
        self.rating_on_screen: str | None = None
        self.trigger_error: str | None = None  # the screen's serial trigger port problem, once per run in events
        self._feedback: dict[int, dict[str, Any]] = {}  # feedback that came before its volume
        # Shaping ([feedback.shaping]): the success threshold in force and the blocks scored so far.
        self.threshold: float | None = None
        self.block_scores: deque[dict[str, Any]] = deque(maxlen=BLOCK_SCORES_MAX)
        self._displayed: dict[int, float] = {}  # acknowledgements that came before their volume
        self.confounds: dict[int, dict[str, float]] = {}  # each volume's confound values ([confounds]), by index
        self._cleaning: tuple[int, dict[str, Any] | None] = (-1, None)  # (rows it was computed from, result)
        self._cleaning_thread = None  # the thread computing it (see cleaning)

    @property
    def fd_threshold_mm(self) -> float:
        """The threshold in force: the run's own if it sends one, else the console's."""
        value = _num(self.run.fd_threshold_mm if self.run else None)
        return value if value > 0 else self.default_fd_threshold_mm

    @property
    def rtnf_timeout_s(self) -> float:
        """Seconds without a message before rtnf counts as silent: three of its heartbeats at least."""
        beat = _num(self.run.heartbeat_s if self.run else None)
        return max(self.default_rtnf_timeout_s, 3.0 * beat) if beat > 0 else self.default_rtnf_timeout_s

    @property
    def export_dir(self) -> str | None:
        """The export folder rtnf watches (from the run message), if it says."""
        return (self.run.export_dir if self.run else None) or None

    @property
    def output_dir(self) -> str | None:
        """The folder rtnf writes the run's outputs to (from the run message), if it says."""
        return (self.run.output_dir if self.run else None) or None

    @property
    def tr_s(self) -> float | None:
        value = _num(self.run.tr_s if self.run else None)
        return value if value > 0 else None

    @property
    def n_volumes(self) -> int | None:
        for value in (self.run.n_volumes if self.run else None, self.rows[-1].get("n_volumes") if self.rows else None):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    @property
    def blocks(self) -> list[dict[str, Any]]:
        """The protocol's blocks ``{condition, start, stop}`` (kept-volume indices)."""
        out = []
        for b in (self.run.blocks if self.run else None) or []:
            if b.start is not None and b.stop is not None and b.stop > b.start:
                out.append({"condition": b.condition or "", "start": b.start, "stop": b.stop})
        return out

    @property
    def conditions(self) -> list[str]:
        names = list((self.run.conditions if self.run else None) or [])
        for b in self.blocks:
            if b["condition"] not in names:
                names.append(b["condition"])
        return names

    @property
    def baseline(self) -> str | None:
        return self.run.baseline if self.run else None

    @property
    def phase(self) -> str:
        """'waiting' (no run, or no volume yet), 'running', 'ended' or 'aborted'."""
        if self.end is not None:
            return "aborted" if self.end.event == "abort" else "ended"
        if self.heartbeat_state == "ended":
            return "ended"
        if self.rows or self.heartbeat_state == "running":
            return "running"
        return "waiting"

    def layout_key(self) -> tuple:
        """What the plots are built from: a page rebuilds its figures only when it changes."""
        return (
            tuple(self.rois), self.n_volumes, tuple(tuple(b.values()) for b in self.blocks),
            tuple(self.conditions), self.baseline, self.fd_threshold_mm,
        )

    def columns(self) -> list[str]:
        """Every column of :attr:`rows`."""
        return list(BASE_COLUMNS) + roi_columns(self.rois)

    def column_data(self, start: int = 0) -> dict[str, list[Any]]:
        """Rows ``start:`` as columns (what a ColumnDataSource takes)."""
        rows = self.rows[start:]
        return {c: [r[c] for r in rows] for c in self.columns()}

    # --------------------------------------------------------------- messages
    def handle(self, origin: str, topic: str, body: dict[str, Any], t_received: float) -> bool:
        """Apply one decoded message.

        Parameters
        ----------
        origin : str
            "rtnf" (rtnf's PUB) or "screen" (the feedback screen's PUB).
        topic : str
        body : dict or WireMessage
            Decoded message body, checked here with its typed message of
            :mod:`rtnf.wire.topics` (or that message): unknown fields are
            ignored, an invalid optional value reads as absent (one bad value
            costs that value, not the volume).
        t_received : float
            ``time.time()`` when the message arrived.

        Returns
        -------
        bool
            False when the message was ignored (unknown topic, another run's
            acknowledgement, a required field missing or invalid).
        """
        self.n_messages += 1
        try:
            if origin == "screen":
                applied = self._handle_screen(topic, body, t_received)
            else:
                applied = self._handle_rtnf(topic, body, t_received)
        except (TypeError, ValueError, KeyError, AttributeError):
            applied = False  # a malformed field costs one message, never the console
        if not applied:
            self.n_ignored += 1
        return applied

    def _handle_rtnf(self, topic: str, body: "dict[str, Any] | WireMessage", t: float) -> bool:
        if topic not in ("run", "volume", "feedback", "heartbeat", "preview", "log"):
            return False
        msg = _typed(topic, body)
        if topic == "heartbeat" and (msg.source not in (None, "rtnf") or "source" in msg.invalid):
            return False
        self.t_last_rtnf = t
        run_id = msg.run_id or None
        if run_id is not None and run_id != self.run_id:
            self._new_run(run_id)
        if isinstance(msg, RunMessage):
            return self._on_run(msg)
        if isinstance(msg, HeartbeatMessage):
            if msg.state is not None:
                self.heartbeat_state = msg.state
            return True
        if isinstance(msg, FeedbackMessage):
            return self._on_feedback(msg)
        if isinstance(msg, PreviewMessage):
            return self._on_preview(msg)
        if isinstance(msg, LogMessage):
            return self._on_log(msg, t)
        return self._on_volume(msg, t)

    def _on_preview(self, msg: PreviewMessage) -> bool:
        preview = prepare(msg.to_body())
        if preview is None:
            return False  # the previous preview stays on screen
        self.preview = preview  # the latest only: the one before is dropped
        self.n_previews += 1
        return True

    def _on_log(self, msg: LogMessage, t: float) -> bool:
        message = msg.message  # required, at most MESSAGE_MAX_CHARS
        level = msg.level.upper() if msg.level is not None and msg.level.upper() in LEVELS else "INFO"
        event = LogEvent(level, message, t if msg.t is None else msg.t, t)
        self.events.append(event)
        self.n_events += 1
        # rtnf marks alarms with a structured field; older messages are matched by their words.
        alarm, ok = msg.alarm, msg.ok
        if alarm == "recording" and ok is False or alarm is None and event.is_error and RECORDING_FAILED in message:
            self.recording_failure = event
        elif alarm == "recording" and ok is True or alarm is None and RECORDING_WORKS in message.lower():
            self.recording_failure = None
        return True

    def _on_run(self, msg: RunMessage) -> bool:
        event = msg.event
        if event == "start":
            first = self.run is None
            self.run = msg
            if first:
                rois = list(msg.rois or [])
                if rois and rois != self.rois:
                    if self.rows:  # volumes came first: add the columns they lacked
                        for row in self.rows:
                            for c in roi_columns(rois):
                                row.setdefault(c, NAN)
                    self.rois = rois
                self.generation += 1  # the protocol's blocks and ROI names: rebuild the page
            return True
        if event in ("end", "abort"):
            if self.run is None:
                self.run = msg.model_copy(update={"event": "start"})
                self.generation += 1
            self.end = msg
            return True
        return False

    def _on_feedback(self, msg: FeedbackMessage) -> bool:
        index = msg.index
        if msg.threshold is not None:
            self.threshold = float(msg.threshold)
        if msg.block_value is not None:
            self.block_scores.append({"index": index, "value": float(msg.block_value), "success": msg.block_success,
                                      "threshold": self.threshold})
        values = {"feedback": _num(msg.value), "feedback_reason": _str(msg.reason)}
        if index in self.position:
            self._update(index, values)
        else:
            self._feedback[index] = values
        return True

    def _on_volume(self, msg: VolumeMessage, t: float) -> bool:
        index = msg.index
        if not self.rois:
            self.rois = list(msg.rois or {})
        timing = {k: _num(getattr(msg.timing, k)) for k in _TIMES} if msg.timing is not None else {}
        flags = msg.flags
        motion = {p: _num(getattr(msg.motion, p)) for p in MOTION_PARAMETERS} if msg.motion is not None else {}
        fd = _num(msg.framewise_displacement)
        high = bool(fd > self.fd_threshold_mm)
        acquisition = msg.acquisition
        row: dict[str, Any] = {
            "index": index,
            "volume": index + 1,
            "acquisition": acquisition if acquisition is not None else NAN,
            "condition": _str(msg.condition),
            "block": _num(msg.block),
            "onset_s": _num(msg.onset_s),
            "feedback": NAN,
            "feedback_reason": "",
            **{p: motion.get(p, NAN) for p in MOTION_PARAMETERS},
            **{d: math.degrees(motion.get(p, NAN)) for d, p in zip(ROTATION_DEGREES, MOTION_PARAMETERS[3:])},
            "fd": fd,
            "fd_high": fd if high else NAN,
            "missing": _flag(flags.missing if flags else None),
            "censored": _flag(flags.censored if flags else None),
            "late": _flag(flags.late if flags else None),
            "high_motion": high,
            "t_detected": timing.get("t_detected", NAN),
            "t_published": timing.get("t_published", NAN),
            "t_displayed": NAN,
            "t_received": t,
        }
        for column, start, stop in STAGES[:-1]:
            row[column] = _ms(timing.get(stop, NAN), timing.get(start, NAN))
        row["processing_ms"] = _ms(row["t_published"], row["t_detected"])
        rois = msg.rois or {}
        for roi in self.rois:
            values = rois.get(roi)
            for kind in ("raw", "clean", "psc"):
                row[f"{kind}_{roi}"] = _num(getattr(values, kind) if values is not None else None)
        if msg.confounds:
            self.confounds[index] = {k: _num(v) for k, v in msg.confounds.items()}
        row.update(self._feedback.pop(index, {}))
        self._set_display(row, self._displayed.pop(index, NAN))
        self._set_marks(row)
        if index in self.position:  # a repeated volume (never sent today) replaces the first
            position = self.position[index]
            self.rows[position] = row
            self.changes.append(position)
        else:
            self.position[index] = len(self.rows)
            self.rows.append(row)
        self.t_last_volume = t
        return True

    def _handle_screen(self, topic: str, body: "dict[str, Any] | WireMessage", t: float) -> bool:
        if topic not in ("keys", "heartbeat", "displayed", "rating"):
            return False
        self.t_last_screen = t  # the screen is alive, whatever it says
        msg = _typed(topic, body)
        if isinstance(msg, KeysMessage):
            return self._on_key(msg, t)
        if isinstance(msg, RatingMessage):
            return self._on_rating(msg, t)
        if isinstance(msg, HeartbeatMessage):
            self.screen_state = msg.state
            if not (msg.run_id and self.run_id and msg.run_id != self.run_id):
                self.rating_on_screen = msg.rating
            if msg.trigger_error and msg.trigger_error != self.trigger_error:
                self.trigger_error = msg.trigger_error  # one event line per problem, not one per heartbeat
                self._screen_event("ERROR", f"feedback screen: {msg.trigger_error}", t)
            return True
        if not isinstance(msg, DisplayedMessage):
            return False
        index = msg.index
        run_id = msg.run_id
        if index is None:
            return True  # a frame without a feedback value (instructions, end screen)
        if run_id and self.run_id and run_id != self.run_id:
            return False  # an acknowledgement of another run
        t_displayed = _num(msg.t_displayed)
        if index in self.position:
            row = self.rows[self.position[index]]
            if math.isnan(row["t_displayed"]) or t_displayed < row["t_displayed"]:
                self._update(index, {})
                self._set_display(row, t_displayed)
        elif index not in self._displayed or t_displayed < self._displayed[index]:
            self._displayed[index] = t_displayed
        return True

    def _on_key(self, msg: KeysMessage, t: float) -> bool:
        run_id = msg.run_id
        if run_id and self.run_id and run_id != self.run_id:
            return False  # a press during another run
        key, role = msg.key, msg.role  # both required
        t_key = _num(msg.t_key)
        t_key = t if math.isnan(t_key) else t_key
        if role == "trigger":
            self.keys["n_triggers"] += 1
            self.keys["t_last_trigger"] = t_key
            if msg.trigger_check in TRIGGER_PROBLEMS:  # checked against the TR by the screen (stimulus.trigger)
                self._screen_event("WARNING", trigger_text(msg, self.tr_s), t_key, t)
        else:
            self.keys["n_responses"] += 1
            self.keys["last_response"] = key[:40]
            self.keys["t_last_response"] = t_key
        return True

    def _screen_event(self, level: str, message: str, t: float, t_received: float | None = None) -> None:
        """An event line from the feedback screen, beside rtnf's ``log`` messages."""
        self.events.append(LogEvent(level, message[:MESSAGE_MAX_CHARS], t, t if t_received is None else t_received))
        self.n_events += 1

    def _on_rating(self, msg: RatingMessage, t: float) -> bool:
        run_id = msg.run_id
        if run_id and self.run_id and run_id != self.run_id:
            return False  # a rating of another run
        value = _num(msg.value)
        self.ratings.append({
            "question": msg.question, "text": msg.text or "", "value": None if math.isnan(value) else value,
            "scale": list(msg.scale) if msg.scale is not None else None, "timed_out": msg.timed_out is True,
            "response_time_s": msg.response_time_s, "index": msg.index, "block": msg.block,
            "condition": msg.condition, "when": msg.when, "response": msg.response,
            "t_onset": msg.t_onset, "t_received": t,
        })
        self.n_ratings += 1
        return True

    def _update(self, index: int, values: dict[str, Any]) -> None:
        position = self.position[index]
        self.rows[position].update(values)
        self.changes.append(position)

    @staticmethod
    def _set_display(row: dict[str, Any], t_displayed: float) -> None:
        row["t_displayed"] = t_displayed
        row["lat_display_ms"] = _ms(t_displayed, row["t_published"])
        row["e2e_ms"] = _ms(t_displayed, row["t_detected"])

    @staticmethod
    def _set_marks(row: dict[str, Any]) -> None:
        flags = {"missing": row["missing"], "late": row["late"], "censored": row["censored"], "motion": row["high_motion"]}
        for name, y in MARKS:
            row[f"mark_{name}"] = y if flags[name] else NAN

    # ----------------------------------------------------------------- views
    def latest(self) -> dict[str, Any] | None:
        return self.rows[-1] if self.rows else None

    def elapsed_s(self, now: float) -> float | None:
        """Seconds since the run started (until its end once it ended)."""
        t0 = _num(self.run.t if self.run else None)
        if math.isnan(t0):
            return None
        t1 = _num(self.end.t) if self.end is not None else now
        return max(0.0, (now if math.isnan(t1) else t1) - t0)

    def counts(self) -> dict[str, int]:
        return {
            "volumes": len(self.rows),
            "missing": sum(r["missing"] for r in self.rows),
            "late": sum(r["late"] for r in self.rows),
            "censored": sum(r["censored"] for r in self.rows),
            "high_motion": sum(r["high_motion"] for r in self.rows),
        }

    def saturation(self) -> dict[str, Any]:
        """How often the feedback bar sat at one of its ends during regulation, so far.

        Regulation volumes are the rows whose condition is known and not the
        run's baseline (from the ``run`` message) and whose feedback value is
        not null; a value is at the end of the bar when it is within
        :data:`rtnf.wire.messages.SATURATION_EPS` of 0 or 1. Computed from the rows,
        so a feedback message that came before or after its volume counts alike.

        Returns
        -------
        dict
            ``regulation`` (volumes counted), ``top`` (at 1), ``bottom`` (at 0),
            ``at_end`` (top + bottom) and ``fraction`` (``at_end / regulation``,
            None before the first regulation volume or while the baseline is
            unknown).
        """
        baseline = self.baseline
        values = [] if baseline is None else [
            r["feedback"] for r in self.rows
            if r["condition"] and r["condition"] != baseline and not math.isnan(r["feedback"])
        ]
        top = sum(v >= 1.0 - SATURATION_EPS for v in values)
        bottom = sum(v <= SATURATION_EPS for v in values)
        return {"regulation": len(values), "top": top, "bottom": bottom, "at_end": top + bottom,
                "fraction": (top + bottom) / len(values) if values else None}

    @property
    def feedback_enabled(self) -> bool:
        """False when the run shows no feedback by design (``feedback.enabled = false``)."""
        settings = self.run.feedback if self.run else None
        return settings is None or settings.enabled is not False

    @property
    def intermittent(self) -> bool:
        settings = self.run.feedback if self.run else None
        return settings is not None and settings.kind == "intermittent"

    def regulation_feedback(self) -> dict[str, Any]:
        """How much feedback the participant saw during regulation, so far.

        Regulation blocks are the protocol's blocks of a condition other than
        the baseline, numbered from 1 in run order. A block has *ended* once a
        volume at or after its last one was received, or the run ended; for
        intermittent feedback the block's window runs on by the hemodynamic
        lag (its score comes then), and a block whose score falls after the
        run's end is not judged. Counts come from the rows, so a feedback
        message that came before or after its volume counts alike.

        Returns
        -------
        dict
            ``blocks``: per ended regulation block ``number``, ``start``,
            ``stop`` (kept-volume indices), ``received`` (volumes of its window
            received), ``shown`` (of them with a feedback value) and
            ``reasons`` (kind of null reason -> count, see
            :func:`rtnf.wire.messages.reason_kind`); ``silent``: the numbers of the
            ended blocks that showed nothing; ``regulation`` and ``shown``:
            regulation volumes received and those with a value; ``reasons``
            over all regulation volumes without a value.
        """
        baseline = self.baseline
        out: dict[str, Any] = {"blocks": [], "silent": [], "regulation": 0, "shown": 0, "reasons": {}}
        if baseline is None or not self.feedback_enabled:
            return out
        lag = 0
        if self.intermittent:
            lag_s = _num(self.run.feedback.hemodynamic_lag_s)  # intermittent: the run has settings
            lag = int(round((DEFAULT_LAG_S if math.isnan(lag_s) else lag_s) / (self.tr_s or 2.0)))
        last = max(self.position) if self.position else -1
        over = self.phase in ("ended", "aborted")
        n = self.n_volumes
        by_index = {r["index"]: r for r in self.rows}
        reasons: dict[str, int] = {}
        for r in self.rows:
            if r["condition"] and r["condition"] != baseline:
                out["regulation"] += 1
                if math.isnan(r["feedback"]):
                    kind = reason_kind(r["feedback_reason"])
                    reasons[kind] = reasons.get(kind, 0) + 1
                else:
                    out["shown"] += 1
        out["reasons"] = reasons
        number = 0
        for b in self.blocks:
            if b["condition"] == baseline:
                continue
            number += 1
            stop = b["stop"] + lag
            if lag and n is not None and b["stop"] - 1 + lag >= n:
                continue  # no score planned for this block within the run
            rows = [by_index[i] for i in range(b["start"], stop) if i in by_index]
            if not rows or not (last >= stop - 1 or over):
                continue
            if all(r["feedback_reason"] == NO_FEEDBACK_REASON for r in rows):
                continue  # a run without feedback by design
            shown = sum(not math.isnan(r["feedback"]) for r in rows)
            block_reasons: dict[str, int] = {}
            for r in rows:
                if math.isnan(r["feedback"]):
                    kind = reason_kind(r["feedback_reason"])
                    block_reasons[kind] = block_reasons.get(kind, 0) + 1
            out["blocks"].append({"number": number, "start": b["start"], "stop": b["stop"], "received": len(rows),
                                  "shown": shown, "reasons": block_reasons})
            if shown == 0:
                out["silent"].append(number)
        return out

    def cleaning(self, every: int = 10, wait: bool = False) -> dict[str, Any] | None:
        """What the nuisance regressors buy in each ROI so far (:mod:`rtnf.analysis.benefit`), or None.

        Recomputed every ``every`` volumes (and at the run's end) in a thread of its own, from a copy of the
        rows: the first computation imports the design's HRF code (over a second), which must not hold up the
        page. Returns the latest result. The console knows the protocol but not the model's settings: the
        design here has SPM's HRF, 128 s drift terms, the six motion parameters when they are recorded and
        the run's confound columns. ``{"sets": [...], "rois": {roi: RoiBenefit dict}}``. ``wait``: wait for a
        computation started now (tests, scripts).
        """
        import threading

        n_rows = len(self.rows)
        done, result = self._cleaning
        due = n_rows != done and (done < 0 or n_rows - done >= every or self.end is not None)
        if due and (self._cleaning_thread is None or not self._cleaning_thread.is_alive()):
            snapshot = ([dict(r) for r in self.rows], dict(self.confounds), self.rois[:], self.blocks)
            generation = self.generation

            def work() -> None:
                value = self._compute_cleaning(*snapshot)
                if self.generation == generation:  # not a later run's
                    self._cleaning = (n_rows, value)

            self._cleaning = (n_rows, result)  # not started again for these rows
            self._cleaning_thread = threading.Thread(target=work, name="console-cleaning", daemon=True)
            self._cleaning_thread.start()
        if wait and self._cleaning_thread is not None:
            self._cleaning_thread.join()
        return self._cleaning[1]

    def _compute_cleaning(self, all_rows: list[dict[str, Any]], confounds: dict[int, dict[str, float]],
                          roi_names: list[str], run_blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
        from rtnf.analysis.benefit import SETS, roi_benefit
        from rtnf.analysis.design import make_design
        from rtnf.analysis.protocol import Block, Protocol, ProtocolError

        tr, baseline = self.tr_s, self.baseline
        rows = [r for r in all_rows if not r["missing"]]
        if tr is None or baseline is None or len(rows) < 20:
            return None
        n = max(self.n_volumes or 0, max(r["index"] for r in all_rows) + 1)
        blocks = tuple(Block(b["condition"], b["start"] * tr, (b["stop"] - b["start"]) * tr, "run")
                       for b in run_blocks if b["condition"] != baseline)
        try:
            protocol = Protocol(blocks=blocks, baseline=baseline,
                                conditions=tuple(dict.fromkeys([baseline, *(b.condition for b in blocks)])),
                                tr_s=tr, n_volumes=n)
        except (ProtocolError, ValueError):
            return None
        names = tuple(dict.fromkeys(k for values in confounds.values() for k in values))
        has_motion = any(math.isfinite(r["trans_x"]) for r in rows)
        online = np.full((n, (6 if has_motion else 0) + len(names)), np.nan)
        use = np.zeros(n, dtype=bool)
        for r in rows:
            i = r["index"]
            values = confounds.get(i, {})
            motion = [r[p] for p in MOTION_PARAMETERS] if has_motion else []
            online[i] = motion + [0.0 if not math.isfinite(values.get(c, NAN)) else values[c] for c in names]
            use[i] = not r["censored"]
        design = make_design(protocol, "spm", 128.0, 6 if has_motion else 0, confounds=names)
        if online.shape[1]:
            design = design.with_motion(online)
        rois = {}
        for roi in roi_names:
            raw = np.full(n, np.nan)
            for r in rows:
                raw[r["index"]] = r.get(f"raw_{roi}", NAN)
            rois[roi] = roi_benefit(design, raw, use).as_dict()
        return {"sets": [s for s in SETS if any(s in v["unique_r2"] for v in rois.values())], "rois": rois}

    def median_ms(self, column: str) -> float | None:
        values = [r[column] for r in self.rows if not math.isnan(r[column])]
        return statistics.median(values) if values else None

    def current_block(self) -> dict[str, Any] | None:
        row = self.latest()
        if row is None:
            return None
        for number, b in enumerate(self.blocks):
            if b["start"] <= row["index"] < b["stop"]:
                return {**b, "number": number}
        return None

    def alerts(self, now: float) -> list[Alert]:
        """The alerts in force at ``now`` (``time.time()``)."""
        out: list[Alert] = []
        if self.recording_failure is not None:
            e = self.recording_failure
            out.append(Alert("recording", "error", f"{e.message} (since {clock_time(e.t)})"))
        errors = [e for e in self.events if e.is_error and RECORDING_FAILED not in e.message
                  and now - e.t_received <= ERROR_ALERT_S]
        if errors:
            e = errors[-1]
            more = f" ({len(errors)} errors in the last {ERROR_ALERT_S:g} s; see the event list)" if len(errors) > 1 else ""
            out.append(Alert("error", "error", f"rtnf error at {clock_time(e.t)}: {e.message}{more}"))
        reg = self.regulation_feedback()
        if reg["silent"]:
            silent = [b for b in reg["blocks"] if b["number"] in reg["silent"]]
            where = ", ".join(f"{b['number']} (volumes {b['start'] + 1}–{b['stop']})" for b in silent)
            summed: dict[str, int] = {}
            for b in silent:
                for kind, count in b["reasons"].items():
                    summed[kind] = summed.get(kind, 0) + count
            why = format_reasons(summed)
            out.append(Alert(
                "no_feedback", "error",
                f"No feedback shown in regulation block{'s' if len(silent) > 1 else ''} {where}"
                + (f" ({why})" if why else "") + "; "
                f"feedback shown for {reg['shown']} of {reg['regulation']} regulation volumes so far.",
            ))
        threshold = self.fd_threshold_mm
        recent = [r for r in self.rows[-self.motion_alert_volumes:] if r["high_motion"]]
        if recent:
            worst = max(recent, key=lambda r: r["fd"])
            out.append(Alert(
                "motion", "error",
                f"High motion: framewise displacement {worst['fd']:.2f} mm at "
                f"{volume_label(worst['index'], self.n_volumes, worst['acquisition'])}, over the threshold of "
                f"{threshold:g} mm; {self.counts()['high_motion']} volume(s) over threshold in this run.",
            ))
        sat = self.saturation()
        if sat["regulation"] >= SATURATION_ALERT_MIN_VOLUMES and sat["fraction"] > SATURATION_WARN_FRACTION:
            out.append(Alert(
                "saturation", "warning",
                f"feedback at the bar's end for {sat['at_end']} of {sat['regulation']} regulation volumes "
                f"({100 * sat['fraction']:.0f} %: {sat['top']} full, {sat['bottom']} empty): "
                "check feedback.scale_range / scaling",
            ))
        tr = self.tr_s
        n = self.n_volumes
        if (
            self.phase == "running" and tr is not None and self.t_last_volume is not None
            and (n is None or self.rows[-1]["index"] < n - 1)
            and now - self.t_last_volume > self.stall_trs * tr
        ):
            out.append(Alert(
                "stall", "error",
                f"Scanner stalled: no volume for {now - self.t_last_volume:.1f} s "
                f"(more than {self.stall_trs:g} TRs of {tr:g} s); last "
                f"{volume_label(self.rows[-1]['index'], n, self.rows[-1]['acquisition'])}.",
            ))
        # Once the run is over, or the screen said it ended, its silence is expected: no alert.
        if self.expect_screen and self.phase not in ("ended", "aborted") and self.screen_state != "ended":
            if self.t_last_screen is None:
                if now - self.t_start > self.screen_timeout_s:
                    out.append(Alert("screen", "error", "Feedback screen silent: no heartbeat received from it yet."))
            elif now - self.t_last_screen > self.screen_timeout_s:
                out.append(Alert(
                    "screen", "error",
                    f"Feedback screen silent: no heartbeat for {now - self.t_last_screen:.1f} s.",
                ))
        if self.phase not in ("ended", "aborted"):
            if self.t_last_rtnf is None:
                if now - self.t_start > self.rtnf_timeout_s:
                    out.append(Alert("rtnf", "warning", "No message from rtnf yet: is `rtnf run` started?"))
            elif now - self.t_last_rtnf > self.rtnf_timeout_s:
                out.append(Alert("rtnf", "error", f"rtnf silent: no message for {now - self.t_last_rtnf:.1f} s."))
        return out


def trigger_text(msg: KeysMessage, tr_s: float | None) -> str:
    """The event line of a missed, extra or irregular scanner trigger (a ``keys`` message's trigger fields)."""
    where = f"trigger {msg.trigger_index if msg.trigger_index is not None else '?'} ({msg.device or 'keyboard'})"
    gap = f"{msg.gap_s:.3f} s" if msg.gap_s is not None else "an unknown time"
    tr = f"TR {tr_s:g} s" if tr_s else "TR unknown"
    if msg.trigger_check == "missed":
        n = msg.n_missed or 1
        return (f"feedback screen: missed scanner trigger: {n} pulse{'s' if n > 1 else ''} did not arrive before "
                f"{where}, pulse {msg.pulse}: {gap} since the previous pulse ({tr})")
    if msg.trigger_check == "extra":
        return f"feedback screen: extra scanner trigger: {where} came {gap} after the previous pulse ({tr})"
    return (f"feedback screen: irregular scanner trigger: {where}, pulse {msg.pulse}, came {gap} after the "
            f"previous pulse ({tr})")


def format_reasons(reasons: dict[str, int]) -> str:
    """``{"censored": 64, "waiting for baseline": 4}`` as "censored: 64, waiting for baseline: 4" (most first)."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
