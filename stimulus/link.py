"""The screen's side of the wire protocol, without PsychoPy.

:class:`ScreenState` is a pure state machine fed with decoded messages; it
decides what the participant should see. Messages are checked with the typed
messages of :mod:`rtnf.wire.topics` (the one decoder of the screen, the
console and the LSL bridge); a field the screen relies on that is invalid
makes it refuse the whole message. :class:`FeedbackLink` owns the two ZeroMQ
sockets: a SUB connected to rtnf's PUB, and a PUB bound at the screen's own
address for ``displayed`` acknowledgements, key presses and the screen's
heartbeats, built with the same typed messages. Imports nothing of rtnf
outside :mod:`rtnf.wire`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from rtnf.wire.pubsocket import BoundedPub
from rtnf.wire.subscription import Received, Subscription
from rtnf.wire.messages import (
    DEFAULT_ADDRESS,
    DEFAULT_SCREEN_ADDRESS,
    MessageError,
    encode,
)
from rtnf.wire.topics import (  # noqa: F401  (the bounds are re-exported for the screen's users)
    FEEDBACK_KINDS,
    MAX_ABS_NUMBER,
    MAX_CONDITIONS,
    MAX_INDEX,
    MAX_NAME,
    MAX_TEXT,
    PHASES,
    RUN_EVENTS,
    VALUE_TOLERANCE,
    DisplayedMessage,
    FeedbackMessage,
    HeartbeatMessage,
    KeysMessage,
    RatingMessage,
    RunMessage,
    WireMessage,
)

logger = logging.getLogger(__name__)

SUBSCRIBED_TOPICS: tuple[str, ...] = ("run", "feedback", "heartbeat")
MAX_DISPLAY_S = 60.0
"""Longest time the screen shows an intermittent score (``display_s`` of a feedback message)."""


# --------------------------------------------------------------------------- #
# Field checks: the typed messages of rtnf.wire.topics check types and bounds;
# a field the screen relies on that was invalid makes the whole message
# invalid (WireMessage.require), before any state changes, so that a
# malformed message never leaves the screen half-updated.
# --------------------------------------------------------------------------- #
def _fail(topic: str, key: str, expected: str, got: Any) -> MessageError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return MessageError(
        f"{topic} message: invalid value for {key!r}; expected {expected}, but got {shown}"
    )


def _typed(cls: type[WireMessage], body: "dict[str, Any] | WireMessage") -> Any:
    """The typed message of a decoded body (a message already typed is taken as it is)."""
    return body if isinstance(body, cls) else cls.from_body(body)


def _run_id(msg: WireMessage) -> str | None:
    """The message's run, or None for messages outside any run (empty or null)."""
    msg.require("run_id")
    return msg.run_id or None


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
    blocks : tuple of (condition, start, stop)
        The protocol's blocks in kept-volume indices (``stop`` excluded), as
        the run message lists them (for ratings after each block).
    """

    conditions: tuple[str, ...] = ()
    instructions: dict[str, str] = field(default_factory=dict)
    n_volumes: int | None = None
    tr_s: float | None = None
    baseline: str | None = None
    scale_psc: tuple[float, float] | None = None
    feedback_kind: str | None = None
    blocks: tuple[tuple[str | None, int, int], ...] = ()

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
    def handle(self, topic: str, body: "dict[str, Any] | WireMessage", t_received: float) -> bool:
        """Apply one decoded message.

        Parameters
        ----------
        topic : str
            "run", "feedback" or "heartbeat"; other topics are ignored.
        body : dict or WireMessage
            Decoded message (see :mod:`rtnf.wire.messages`), checked here with
            its typed message of :mod:`rtnf.wire.topics` (or that message).
            Unknown fields are ignored.
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
            return self._handle_run(_typed(RunMessage, body), t_received)
        if topic == "feedback":
            return self._handle_feedback(_typed(FeedbackMessage, body), t_received)
        if topic == "heartbeat":
            return self._handle_heartbeat(_typed(HeartbeatMessage, body), t_received)
        return False

    def _handle_run(self, msg: RunMessage, t: float) -> bool:
        run_id = _run_id(msg)
        info = _run_info(msg) if msg.event == "start" else None
        self.t_last_message = t
        self._enter_run(run_id)
        if msg.event == "start":
            self.run = info
            # A repeated start only refreshes the run info: it must not wake
            # a run that has already ended.
            if self.phase == "waiting" or not msg.repeat:
                self._set_phase("running", t)
        else:
            self._set_phase("ended", t)
        return True

    def _handle_feedback(self, msg: FeedbackMessage, t: float) -> bool:
        run_id = _run_id(msg)
        msg.require("condition", "value", "kind", "reward", "display_s")
        if msg.display_s is not None and not msg.display_s <= MAX_DISPLAY_S:
            raise _fail("feedback", "display_s", f"a number of seconds in (0, {MAX_DISPLAY_S:g}] or null",
                        msg.display_s)
        index, value, kind = msg.index, msg.value, msg.kind or "continuous"
        reason = msg.reason[:MAX_TEXT] if msg.reason is not None else None
        self.t_last_message = t
        self._enter_run(run_id)
        if self.phase == "ended":
            return False  # late message of a finished run
        if self.feedback is not None and index < self.feedback.index:
            return False  # older than the one shown
        self._set_phase("running", t)
        self.feedback = Feedback(index, msg.condition, value, reason, t, kind, msg.reward, msg.display_s)
        if kind == "intermittent":
            if self.feedback.is_score:
                self.score = self.feedback
        elif value is not None:
            self.bar_value = value
            self.t_bar = t
        return True

    def _handle_heartbeat(self, msg: HeartbeatMessage, t: float) -> bool:
        if msg.source == "stimulus":
            return False  # another screen's heartbeat says nothing about rtnf
        run_id = _run_id(msg)
        msg.require("state")
        if msg.state is None:
            raise _fail("heartbeat", "state", f"one of {PHASES}", None)
        self.t_last_message = t
        before = (self.run_id, self.phase)
        self._enter_run(run_id)
        if msg.state == "ended":
            self._set_phase("ended", t)
        elif msg.state == "running" and self.phase == "waiting":
            self._set_phase("running", t)
        return (self.run_id, self.phase) != before


def _run_info(msg: RunMessage) -> RunInfo:
    """What the screen takes from a run start message (refused if one of those fields is invalid)."""
    msg.require("conditions", "instructions", "baseline", "n_volumes", "tr_s")
    scale_psc = None
    feedback_kind = None
    settings = msg.feedback
    if settings is not None:
        feedback_kind = settings.kind  # an invalid kind is dropped: not relied upon
        # The 0 % marker needs a fixed percent-signal-change scale (rtnf's
        # feedback.scale_range with signal "psc"; older messages: scale_psc).
        if (settings.signal or "psc") == "psc" and (settings.scaling or "fixed") == "fixed":
            msg.require("feedback.scale_range", "feedback.scale_psc")
            scale = settings.scale_range if settings.scale_range is not None else settings.scale_psc
            if scale is not None:
                scale_psc = (float(scale[0]), float(scale[1]))
    return RunInfo(
        conditions=tuple(msg.conditions or ()),
        instructions=dict(msg.instructions or {}),
        n_volumes=msg.n_volumes,
        tr_s=msg.tr_s,
        baseline=msg.baseline,
        scale_psc=scale_psc,
        feedback_kind=feedback_kind,
        blocks=tuple((b.condition, b.start, b.stop) for b in (msg.blocks or ())
                     if b.start is not None and b.stop is not None and b.stop > b.start),
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
    @staticmethod
    def _build(cls: type[WireMessage], **fields: Any) -> WireMessage:
        """The message of ``fields`` (unchecked, cheap); a field the topic does not have is a TypeError."""
        unknown = sorted(set(fields) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"{cls.TOPIC} messages have no field {', '.join(map(repr, unknown))}; "
                            f"see rtnf.wire.topics.{cls.__name__}")
        return cls.model_construct(**fields)

    def _send(self, msg: WireMessage, run_id: str | None = None) -> bool:
        frames = encode(msg.TOPIC, (self.state.run_id if run_id is None else run_id) or "", msg.to_body())
        try:
            self._pub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            # Nobody keeps up: an acknowledgement is not worth stalling a frame.
            logger.debug("dropped a %s message (high-water mark)", msg.TOPIC)
            return False
        return True

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
        """Publish a ``displayed`` acknowledgement (run_id from :attr:`state`).

        ``extra``: further fields of :class:`rtnf.wire.topics.DisplayedMessage`
        (``kind``, ``view``, ``bar_value``, ``bar_shown``, ``t_settled``).
        """
        self._send(self._build(
            DisplayedMessage, source="stimulus", index=index, value=value, condition=condition, state=state,
            t_received=t_received, t_displayed=t_displayed, **extra,
        ))

    def send_key(self, *, key: str, role: str, t_key: float, **extra: Any) -> bool:
        """Publish one key press on the ``keys`` topic.

        Parameters
        ----------
        key : str
            PsychoPy's key name ("5", "t", "1", ...).
        role : str
            "trigger" or "response".
        t_key : float
            ``time.time()`` of the key press as stamped by the window's event
            handler.
        **extra
            Further fields of :class:`rtnf.wire.topics.KeysMessage` (``state``, ``index``; for
            triggers ``device`` and the fields of :meth:`stimulus.trigger.TriggerCheck.fields`).

        Returns
        -------
        bool
            False when the message was dropped (nobody keeps up).
        """
        return self._send(self._build(KeysMessage, source="stimulus", key=key, role=role, t_key=t_key, **extra))

    def send_rating(self, *, run_id: str | None, question: str, **extra: Any) -> bool:
        """Publish one rating on the ``rating`` topic.

        Parameters
        ----------
        run_id : str or None
            The run the rating was shown in (the screen may have moved on to
            another run by the time it closes).
        question : str
            The question's id.
        **extra
            Further fields of :class:`rtnf.wire.topics.RatingMessage`.

        Returns
        -------
        bool
            False when the message was dropped (nobody keeps up).
        """
        return self._send(self._build(RatingMessage, source="stimulus", question=question, **extra), run_id or "")

    def send_heartbeat(self, state: str, **extra: Any) -> None:
        """Publish the screen's ``heartbeat`` (``source: "stimulus"``).

        Parameters
        ----------
        state : str
            The screen's phase ("waiting", "running" or "ended").
        **extra
            Further fields of :class:`rtnf.wire.topics.HeartbeatMessage` (for
            example ``last_index``).
        """
        self._send(self._build(HeartbeatMessage, source="stimulus", state=state, pid=os.getpid(), t=time.time(),
                               **extra))

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
