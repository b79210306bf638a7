"""The screen's side of the wire protocol, without PsychoPy.

:class:`ScreenState` is a pure state machine fed with decoded messages; it
decides what the participant should see. :class:`FeedbackLink` owns the two
ZeroMQ sockets: a SUB connected to rtnf's PUB, and a PUB bound at the
screen's own address for ``displayed`` acknowledgements and the screen's
heartbeats.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from rtnf.wire import messages
from rtnf.wire.pubsocket import BoundedPub
from rtnf.wire.subscription import Received, Subscription
from rtnf.wire.messages import (
    DEFAULT_ADDRESS,
    DEFAULT_SCREEN_ADDRESS,
    MessageError,
    encode,
)

logger = logging.getLogger(__name__)

SUBSCRIBED_TOPICS: tuple[str, ...] = ("run", "feedback", "heartbeat")
PHASES: tuple[str, ...] = ("waiting", "running", "ended")
RUN_EVENTS: tuple[str, ...] = ("start", "end", "abort")
FEEDBACK_KINDS: tuple[str, ...] = ("continuous", "intermittent")
KEYS_TOPIC = "keys"
"""Topic for key presses, published only once rtnf's wire protocol lists it
in :data:`rtnf.wire.messages.TOPICS` (see :meth:`FeedbackLink.send_key`)."""
VALUE_TOLERANCE = 1e-6
"""Values this far outside [0, 1] are float round-off and are clipped;
anything further out is a protocol error, not something to draw."""
MAX_INDEX = 10_000_000
"""Largest volume index or count accepted (a run has a few thousand at most):
an index of 10**400 - 1 would make the screen ignore the rest of the run."""
MAX_TEXT = 200
"""Longest text shown to the participant (instructions, reward), as the
display config's texts: a 900 kB reward text froze the screen for 16.8 s."""
MAX_NAME = 64
"""Longest condition name, run id or key name."""
MAX_CONDITIONS = 64
MAX_ABS_NUMBER = 1e9
"""Largest magnitude of a number the screen uses (TR, scale, seconds)."""


# --------------------------------------------------------------------------- #
# Field checks: a bad field makes the whole message invalid, before any state
# changes, so that a malformed message never leaves the screen half-updated.
# --------------------------------------------------------------------------- #
def _fail(topic: str, key: str, expected: str, got: Any) -> MessageError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return MessageError(
        f"{topic} message: invalid value for {key!r}; expected {expected}, but got {shown}"
    )


def _opt_int(body: dict[str, Any], topic: str, key: str, minimum: int = 0, maximum: int = MAX_INDEX) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise _fail(topic, key, f"an integer in [{minimum}, {maximum}] or null", value)
    return value


def _opt_number(body: dict[str, Any], topic: str, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or abs(value) > MAX_ABS_NUMBER):
        raise _fail(topic, key, f"a finite number of magnitude <= {MAX_ABS_NUMBER:g} or null", value)
    return float(value)


def _opt_str(body: dict[str, Any], topic: str, key: str, max_len: int = MAX_TEXT) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise _fail(topic, key, f"a string of at most {max_len} characters or null", value)
    return value


def _choice(body: dict[str, Any], topic: str, key: str, allowed: tuple[str, ...]) -> str:
    value = body.get(key)
    if value not in allowed:
        raise _fail(topic, key, f"one of {allowed}", value)
    return value


def _run_id(body: dict[str, Any], topic: str) -> str | None:
    """The message's run, or None for messages outside any run (empty or null)."""
    value = body.get("run_id")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 2 * MAX_NAME:
        raise _fail(topic, "run_id", f"a string of at most {2 * MAX_NAME} characters", value)
    return value


# --------------------------------------------------------------------------- #
# State
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class RunInfo:
    """What a ``run`` start message says about the run.

    Attributes
    ----------
    conditions : tuple of str
    instructions : dict
        Condition name -> text shown to the participant.
    n_volumes : int or None
    tr_s : float or None
        Repetition time in seconds.
    baseline : str or None
        The baseline condition (shown with a fixation cross by default).
    scale_psc : (float, float) or None
        Percent signal change mapped to 0 and 1 (``feedback.scale_psc`` of
        the run message); places the bar's baseline marker.
    feedback_kind : str or None
        ``feedback.kind`` of the run message ("continuous", "intermittent").
    """

    conditions: tuple[str, ...] = ()
    instructions: dict[str, str] = field(default_factory=dict)
    n_volumes: int | None = None
    tr_s: float | None = None
    baseline: str | None = None
    scale_psc: tuple[float, float] | None = None
    feedback_kind: str | None = None

    def baseline_level(self) -> float | None:
        """Bar level of 0 % signal change on the run's scale, or None if unknown or off scale."""
        if self.scale_psc is None:
            return None
        lo, hi = self.scale_psc
        if not hi > lo:
            return None
        level = -lo / (hi - lo)
        return level if 0.0 <= level <= 1.0 else None


@dataclass(frozen=True)
class Feedback:
    """The latest accepted ``feedback`` message.

    Attributes
    ----------
    index : int
        Volume index.
    condition : str or None
    value : float or None
        The volume's own value in [0, 1]; None when the volume has none (the
        bar then holds :attr:`ScreenState.bar_value`).
    reason : str or None
        Why ``value`` is None.
    t_received : float
        ``time.time()`` when the message was received.
    kind : str
        "continuous" (moves the bar) or "intermittent" (a score shown on its
        own screen for a while).
    reward : str or None
        Reward text sent with an intermittent score (overrides the
        configured one).
    display_s : float or None
        How long to show an intermittent score (overrides the configured
        ``display.score.duration_s``). rtnf sends it with each score.
    """

    index: int
    condition: str | None
    value: float | None
    reason: str | None
    t_received: float
    kind: str = "continuous"
    reward: str | None = None
    display_s: float | None = None

    @property
    def is_score(self) -> bool:
        """An intermittent message that carries a score to show: a value, or a
        ``display_s`` (a block without a value). rtnf's per-volume
        intermittent messages between scores have neither."""
        return self.kind == "intermittent" and (
            self.value is not None or self.display_s is not None
        )


class ScreenState:
    """What the feedback screen should show, updated message by message.

    Parameters
    ----------
    heartbeat_timeout_s : float
        The link counts as lost when nothing valid came from rtnf for longer
        than this many seconds (rtnf sends a heartbeat every second).

    Attributes
    ----------
    phase : str
        "waiting" (no run yet, or only rtnf's heartbeats of a run waiting for
        its first volume: see :attr:`started`), "running" or "ended" (after a
        run end/abort message or an rtnf heartbeat with state "ended").
    run_id : str or None
    run : RunInfo or None
        None until a run start message arrived (for example when the screen
        joins late; rtnf repeats the start message every few seconds).
    feedback : Feedback or None
        The latest feedback of the current run.
    bar_value : float or None
        The level the bar shows: the latest non-null continuous value (held
        through volumes without a value), None before the first one.
    t_bar : float or None
        Receive time of the message that set :attr:`bar_value` (the bar
        glides from there).
    score : Feedback or None
        The latest intermittent feedback of the run (shown for a while from
        its ``t_received``).
    t_last_message : float or None
        Receive time of the latest valid message from rtnf.
    t_phase : float or None
        Receive time of the message that set the current phase.
    """

    def __init__(self, heartbeat_timeout_s: float = 3.0) -> None:
        if not heartbeat_timeout_s > 0:
            raise ValueError(
                "Invalid value for the 'heartbeat_timeout_s' parameter. Allowed values are "
                f"positive numbers of seconds, but got {heartbeat_timeout_s!r} instead."
            )
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.t_last_message: float | None = None
        self._reset(None)

    def _reset(self, run_id: str | None) -> None:
        self.phase = "waiting"
        self.run_id = run_id
        self.run: RunInfo | None = None
        self.feedback: Feedback | None = None
        self.bar_value: float | None = None
        self.t_bar: float | None = None
        self.score: Feedback | None = None
        self.t_phase: float | None = None

    def _set_phase(self, phase: str, t: float) -> None:
        if phase != self.phase:
            self.phase = phase
            self.t_phase = t

    def _enter_run(self, run_id: str | None) -> None:
        # A message from another run means rtnf moved on: forget everything
        # about the previous one (bar level, instructions, indices).
        if run_id is not None and run_id != self.run_id:
            self._reset(run_id)

    # ------------------------------------------------------------------ #
    @property
    def condition(self) -> str | None:
        """Condition of the feedback on screen."""
        return self.feedback.condition if self.feedback is not None else None

    @property
    def has_value(self) -> bool:
        """False when the latest volume came without a value (the bar is held)."""
        return self.feedback is not None and self.feedback.value is not None

    def instruction(self) -> str | None:
        """Text for the current condition: the run's instruction, else its name."""
        condition = self.condition
        if condition is None:
            return None
        if self.run is not None and condition in self.run.instructions:
            return self.run.instructions[condition]
        return condition

    @property
    def started(self) -> bool:
        """True once rtnf announced the current run (its run message or a heartbeat of the run).

        Phase "waiting" with a run id: rtnf's heartbeat says the run is waiting
        for its first volume (the screen joined before the start message was
        repeated).
        """
        return self.phase != "waiting" or self.run_id is not None

    def connection_lost(self, now: float) -> bool:
        """True when rtnf was heard from once, but not for ``heartbeat_timeout_s``, before the run ended.

        rtnf says goodbye at every end it lives to see: the run's end, the
        operator's Ctrl-C (an abort "stopped by the operator") and an error
        all publish a ``run`` end/abort message and a heartbeat with state
        "ended", then rtnf stops publishing. Silence after that is the normal
        end, not a lost link; silence while waiting or running (rtnf killed,
        the machine or network down) is.
        """
        if self.t_last_message is None or self.phase == "ended":
            return False
        return now - self.t_last_message > self.heartbeat_timeout_s

    # ------------------------------------------------------------------ #
    def handle(self, topic: str, body: dict[str, Any], t_received: float) -> bool:
        """Apply one decoded message.

        Parameters
        ----------
        topic : str
            "run", "feedback" or "heartbeat"; other topics are ignored.
        body : dict
            Decoded message (see :mod:`rtnf.wire.messages`). Unknown fields are
            ignored.
        t_received : float
            ``time.time()`` when the message was received.

        Returns
        -------
        bool
            True when what the screen shows may have changed.

        Raises
        ------
        MessageError
            When a field the screen relies on is invalid; the state is then
            left exactly as it was.
        """
        if topic == "run":
            return self._handle_run(body, t_received)
        if topic == "feedback":
            return self._handle_feedback(body, t_received)
        if topic == "heartbeat":
            return self._handle_heartbeat(body, t_received)
        return False

    def _handle_run(self, body: dict[str, Any], t: float) -> bool:
        run_id = _run_id(body, "run")
        event = _choice(body, "run", "event", RUN_EVENTS)
        info = _parse_run_info(body) if event == "start" else None
        self.t_last_message = t
        self._enter_run(run_id)
        if event == "start":
            self.run = info
            # A repeated start only refreshes the run info: it must not wake
            # a run that has already ended.
            if self.phase == "waiting" or not body.get("repeat", False):
                self._set_phase("running", t)
        else:
            self._set_phase("ended", t)
        return True

    def _handle_feedback(self, body: dict[str, Any], t: float) -> bool:
        run_id = _run_id(body, "feedback")
        index = _opt_int(body, "feedback", "index")
        if index is None:
            raise _fail("feedback", "index", "an integer >= 0", None)
        condition = _opt_str(body, "feedback", "condition", MAX_NAME)
        value = _opt_number(body, "feedback", "value")
        if value is not None:
            if not -VALUE_TOLERANCE <= value <= 1.0 + VALUE_TOLERANCE:
                raise _fail("feedback", "value", "a number in [0, 1] or null", value)
            value = min(max(value, 0.0), 1.0)
        reason = body.get("reason")
        reason = reason[:MAX_TEXT] if isinstance(reason, str) else None
        kind = body.get("kind")
        kind = "continuous" if kind is None else _choice(body, "feedback", "kind", FEEDBACK_KINDS)
        reward = _opt_str(body, "feedback", "reward")
        display_s = _opt_number(body, "feedback", "display_s")
        if display_s is not None and not 0 < display_s <= 60:
            raise _fail("feedback", "display_s", "a number of seconds in (0, 60] or null",
                        display_s)
        self.t_last_message = t
        self._enter_run(run_id)
        if self.phase == "ended":
            return False  # late message of a finished run
        if self.feedback is not None and index < self.feedback.index:
            return False  # older than the one shown
        self._set_phase("running", t)
        self.feedback = Feedback(index, condition, value, reason, t, kind, reward, display_s)
        if kind == "intermittent":
            if self.feedback.is_score:
                self.score = self.feedback
        elif value is not None:
            self.bar_value = value
            self.t_bar = t
        return True

    def _handle_heartbeat(self, body: dict[str, Any], t: float) -> bool:
        if body.get("source") == "stimulus":
            return False  # another screen's heartbeat says nothing about rtnf
        run_id = _run_id(body, "heartbeat")
        state = _choice(body, "heartbeat", "state", PHASES)
        self.t_last_message = t
        before = (self.run_id, self.phase)
        self._enter_run(run_id)
        if state == "ended":
            self._set_phase("ended", t)
        elif state == "running" and self.phase == "waiting":
            self._set_phase("running", t)
        return (self.run_id, self.phase) != before


def _parse_run_info(body: dict[str, Any]) -> RunInfo:
    conditions = body.get("conditions") or []
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS or not all(
        isinstance(c, str) and len(c) <= MAX_NAME for c in conditions
    ):
        raise _fail("run", "conditions", f"a list of at most {MAX_CONDITIONS} names of at most {MAX_NAME} "
                    "characters", conditions)
    instructions = body.get("instructions") or {}
    if not isinstance(instructions, dict) or len(instructions) > MAX_CONDITIONS or not all(
        isinstance(v, str) and len(v) <= MAX_TEXT and len(k) <= MAX_NAME for k, v in instructions.items()
    ):
        raise _fail("run", "instructions", f"an object mapping condition to a text of at most {MAX_TEXT} "
                    "characters", instructions)
    baseline = _opt_str(body, "run", "baseline", MAX_NAME)
    scale_psc = None
    feedback_kind = None
    settings = body.get("feedback")
    if isinstance(settings, dict):
        kind = settings.get("kind")
        feedback_kind = kind if kind in FEEDBACK_KINDS else None
        # The 0 % marker needs a fixed percent-signal-change scale (rtnf's
        # feedback.scale_range with signal "psc"; older messages: scale_psc).
        scale = settings.get("scale_psc")
        if settings.get("signal", "psc") == "psc" and settings.get("scaling", "fixed") == "fixed":
            scale = settings.get("scale_range", scale)
        else:
            scale = None
        if scale is not None:
            if not (isinstance(scale, list) and len(scale) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and abs(v) <= MAX_ABS_NUMBER
                for v in scale
            )):
                raise _fail("run", "feedback.scale_range", "[low, high] numbers or null", scale)
            scale_psc = (float(scale[0]), float(scale[1]))
    return RunInfo(
        conditions=tuple(conditions),
        instructions=dict(instructions),
        n_volumes=_opt_int(body, "run", "n_volumes"),
        tr_s=_opt_number(body, "run", "tr_s"),
        baseline=baseline,
        scale_psc=scale_psc,
        feedback_kind=feedback_kind,
    )


# --------------------------------------------------------------------------- #
# Sockets
# --------------------------------------------------------------------------- #
class FeedbackLink:
    """The screen's ZeroMQ sockets and its :class:`ScreenState`.

    Parameters
    ----------
    address : str
        rtnf's PUB address; the SUB connects to it (and keeps retrying, so the
        screen may start before rtnf).
    ack_address : str
        Address the screen's PUB binds for ``displayed`` and ``heartbeat``.
    heartbeat_timeout_s : float
        Passed to :class:`ScreenState`.
    rcvhwm : int
        Receive high-water mark in messages; bounds memory if the screen
        stalls (PUB/SUB then drops, which is right for feedback).
    max_batch : int
        At most this many messages are taken per :meth:`poll`, so that a
        flood cannot keep the screen from drawing.
    curve_keys, curve_client : str, optional
        CURVE keys (``rtnf keys``) for the subscription to rtnf, and this client's name.
    ack_curve_keys : str, optional
        A key folder made by ``rtnf keys`` whose server key this screen's
        acknowledgement socket uses: only the clients in its ``authorized/``
        folder (rtnf, the console) receive acknowledgements.

    Attributes
    ----------
    state : ScreenState
    n_malformed : int
        Messages skipped because they could not be decoded or applied.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        ack_address: str = DEFAULT_SCREEN_ADDRESS,
        heartbeat_timeout_s: float = 3.0,
        *,
        rcvhwm: int = 1000,
        max_batch: int = 1000,
        curve_keys: "str | None" = None,
        curve_client: str = "screen",
        ack_curve_keys: "str | None" = None,
    ) -> None:
        self.address = address
        self.ack_address = ack_address
        self.state = ScreenState(heartbeat_timeout_s)
        self.max_batch = int(max_batch)
        self._n_rejected = 0  # decoded, but refused by the screen's state
        self._context = zmq.Context()
        # The acknowledgement socket: an XPUB that takes only the protocol's topics as
        # subscriptions and disconnects a peer sending a long one (a subscription flood grew
        # a plain PUB to 13.4 GB), with a send high-water mark (issue 15).
        self._pub = BoundedPub(self._context, sndhwm=1000)
        self._curve_server = None
        try:
            # Bounded size, reconnection after a dropped link (an oversized message makes
            # libzmq drop it for good), CURVE when rtnf is on another machine.
            curve = (curve_keys, curve_client) if curve_keys is not None else None
            self._sub = Subscription(self._context, address, SUBSCRIBED_TOPICS, "rtnf", rcvhwm, curve)
            if ack_curve_keys is not None:
                # Only the clients authorized in that key folder (rtnf, the console) receive acknowledgements.
                from rtnf.wire.keys import CurveServer

                self._curve_server = CurveServer(self._context, ack_curve_keys)
                self._pub.use_curve(self._curve_server)
            self._pub.bind(ack_address)
        except zmq.ZMQError as exc:
            self.close()
            raise RuntimeError(
                f"Cannot connect to rtnf at {address!r} or bind the screen's address "
                f"{ack_address!r}: {exc}. Is another screen already running?"
            ) from exc
        self._poller = zmq.Poller()
        for sock in self._sub.sockets:
            self._poller.register(sock, zmq.POLLIN)

    @property
    def n_malformed(self) -> int:
        """Messages skipped because they could not be decoded or applied."""
        return self._sub.n_malformed + self._n_rejected

    # ------------------------------------------------------------------ #
    def poll(self, timeout_ms: float) -> list[Received]:
        """Take the messages that arrive within ``timeout_ms``.

        Waits at most ``timeout_ms`` for the first message, then drains what
        is queued without waiting. Malformed messages are logged (one warning
        each) and skipped.

        Returns
        -------
        list of Received
            ``(topic, body, t_received)`` for each valid message, in order.
        """
        ready = dict(self._poller.poll(max(0, int(timeout_ms))))
        self._pub.service()  # subscriptions to the acknowledgements take effect every frame, not at the next send
        return self._sub.receive(ready, self.max_batch)

    def receive(self, timeout_ms: float) -> list[Received]:
        """:meth:`poll` and apply each message to :attr:`state`.

        Returns
        -------
        list of Received
            The messages that were valid and applied.
        """
        applied = []
        for message in self.poll(timeout_ms):
            try:
                self.state.handle(*message)
            except MessageError as exc:
                self._skip(exc)
                continue
            applied.append(message)
        return applied

    def _skip(self, exc: MessageError) -> None:
        self._n_rejected += 1
        logger.warning("Skipped a malformed message from %s: %s", self.address, exc)

    # ------------------------------------------------------------------ #
    def _send(self, topic: str, body: dict[str, Any]) -> None:
        frames = encode(topic, self.state.run_id or "", body)
        try:
            self._pub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            # Nobody keeps up: an acknowledgement is not worth stalling a frame.
            logger.debug("dropped a %s message (high-water mark)", topic)

    def send_displayed(
        self,
        *,
        index: int | None,
        value: float | None,
        condition: str | None,
        state: str,
        t_received: float | None,
        t_displayed: float,
        **extra: Any,
    ) -> None:
        """Publish a ``displayed`` acknowledgement (run_id from :attr:`state`)."""
        body = {
            "source": "stimulus",
            "index": index,
            "value": value,
            "condition": condition,
            "state": state,
            "t_received": t_received,
            "t_displayed": t_displayed,
        }
        body.update(extra)
        self._send("displayed", body)

    @staticmethod
    def keys_topic_available() -> bool:
        """True once rtnf's wire protocol has a ``keys`` topic."""
        return KEYS_TOPIC in messages.TOPICS

    def send_key(self, *, key: str, role: str, t_key: float, **extra: Any) -> bool:
        """Publish one key press on the ``keys`` topic, if the protocol has it.

        Parameters
        ----------
        key : str
            PsychoPy's key name ("5", "t", "1", ...).
        role : str
            "trigger" or "response".
        t_key : float
            ``time.time()`` of the key press as stamped by the window's event
            handler.

        Returns
        -------
        bool
            False when the protocol has no ``keys`` topic yet (the press is
            then only logged, and counted in the heartbeat).
        """
        if not self.keys_topic_available():
            return False
        body = {"source": "stimulus", "key": key, "role": role, "t_key": t_key}
        body.update(extra)
        self._send(KEYS_TOPIC, body)
        return True

    def send_heartbeat(self, state: str, **extra: Any) -> None:
        """Publish the screen's ``heartbeat`` (``source: "stimulus"``).

        Parameters
        ----------
        state : str
            The screen's phase ("waiting", "running" or "ended").
        **extra
            Further fields (for example ``last_index``).
        """
        body = {"source": "stimulus", "state": state, "pid": os.getpid(), "t": time.time()}
        body.update(extra)
        self._send("heartbeat", body)

    def close(self) -> None:
        """Close both sockets and the context (idempotent)."""
        sub = getattr(self, "_sub", None)
        if sub is not None:
            sub.close()
        if not self._pub.closed:
            self._pub.close(linger=0)
        if getattr(self, "_curve_server", None) is not None:
            self._curve_server.stop()
            self._curve_server = None
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> FeedbackLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
