"""Typed messages of every topic: the one definition of the wire contract.

Each topic of :data:`rtnf.wire.messages.TOPICS` has one pydantic model here
(:data:`MESSAGE_TYPES`): its fields, their types, units and bounds. The JSON
Schemas shipped in ``docs/wire/`` are generated from these classes
(``python -m rtnf.wire.schema OUTDIR``), so clients in other languages read
the same contract.

Producers
---------
Build a message and send its :meth:`~WireMessage.to_body`::

    msg = FeedbackMessage.model_construct(index=3, condition="regulate", value=0.42, reason=None,
                                          kind="continuous", signal=0.8, display_s=None, t_published=None)
    publisher.send(msg.TOPIC, msg.to_body())

``model_construct`` checks nothing and costs a few microseconds (the
feedback path is measured in milliseconds); plain construction
(``FeedbackMessage(index=3, ...)``) validates, and refuses NaN. Nested
parts (:class:`Timing`, :class:`Flags`, ...) may be models or plain dicts.
:meth:`~WireMessage.to_body` writes the fields that were *set* (given to the
constructor or assigned later, ``None`` included), in the order of the
class, without ``schema`` and ``run_id`` (:func:`rtnf.wire.messages.encode`
adds them); a field left out is not sent.

Receivers
---------
:meth:`WireMessage.from_body` (or :func:`decode_message` on raw frames)
checks a decoded body:

- unknown fields are ignored;
- a missing or invalid *required* field (:attr:`WireMessage.REQUIRED`, for
  example a feedback message's ``index``) makes the message unusable:
  :class:`~rtnf.wire.messages.MessageError` with a one-line reason;
- any other invalid value (a wrong type, a text or list over its bound, a
  number out of range) is dropped: that field reads as absent (``None``),
  the rest of the message stays usable, and :attr:`WireMessage.invalid`
  says what was dropped and why. A receiver that relies on a field refuses
  the message with :meth:`WireMessage.require` (the feedback screen does
  so for everything it shows; the console plots what is valid).

Bounds are those the feedback screen and the console apply: names (conditions,
ROIs, keys) at most :data:`MAX_NAME` characters, texts shown to the participant
at most :data:`MAX_TEXT`, indices and counts at most :data:`MAX_INDEX`, the
numbers the screen uses at most :data:`MAX_ABS_NUMBER` in magnitude; log
messages and reasons are cut to :data:`MAX_LOG_CHARS` characters. Times are
UNIX seconds (``time.time()`` of the sender's machine).

Imports only pydantic and :mod:`rtnf.wire.messages`.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, Literal, Optional, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from ._validation import _unwrap
from .messages import TOPICS, MessageError, decode

__all__ = [
    "MAX_INDEX", "MAX_TEXT", "MAX_NAME", "MAX_RUN_ID", "MAX_CONDITIONS", "MAX_ROIS", "MAX_BLOCKS",
    "MAX_ABS_NUMBER", "MAX_LOG_CHARS", "MAX_PATH", "MAX_PLANE", "VALUE_TOLERANCE", "MAX_INVALID",
    "PHASES", "RUN_EVENTS", "FEEDBACK_KINDS", "KEY_ROLES", "DIRECTIONS",
    "WireMessage", "WirePart",
    "Block", "FeedbackSettings", "RunMessage",
    "RoiValues", "Motion", "Quality", "Flags", "Timing", "VolumeMessage",
    "FeedbackMessage", "KeyPress", "HeartbeatMessage", "DisplayedMessage", "LogMessage", "KeysMessage",
    "PreviewPlane", "PreviewMessage", "RatingMessage", "RATING_MOMENTS",
    "MESSAGE_TYPES", "parse_body", "decode_message",
]

# --------------------------------------------------------------------------- bounds
MAX_INDEX = 10_000_000
"""Largest volume index or count accepted (a run has a few thousand at most):
an index of 10**400 - 1 would make the screen ignore the rest of the run."""
MAX_TEXT = 200
"""Longest text shown to the participant (instructions, reward), as the
display config's texts: a 900 kB reward text froze the screen for 16.8 s."""
MAX_NAME = 64
"""Longest name: condition, ROI, key, source, level, view."""
MAX_RUN_ID = 2 * MAX_NAME
"""Longest run id."""
MAX_CONDITIONS = 64
"""Most conditions (and instructions) in a run message."""
MAX_ROIS = 1000
"""Most ROIs in a run or volume message."""
MAX_CONFOUNDS = 256
"""Most confound regressors in a volume message (physiological and tissue terms)."""
MAX_BLOCKS = 10_000
"""Most protocol blocks in a run message."""
MAX_ABS_NUMBER = 1e9
"""Largest magnitude of a number the screen uses (TR, scale, seconds)."""
MAX_LOG_CHARS = 2000
"""Log messages and reasons longer than this are cut (not refused)."""
MAX_PATH = 4096
"""Longest folder or file name."""
MAX_PLANE = 4096
"""Largest side of a preview plane, in voxels."""
VALUE_TOLERANCE = 1e-6
"""Feedback values this far outside [0, 1] are float round-off and are
clipped; anything further out is a protocol error, not something to draw."""
MAX_INVALID = 1000
"""A message with more invalid values than this is refused as a whole."""

PHASES: tuple[str, ...] = ("waiting", "running", "ended")
RUN_EVENTS: tuple[str, ...] = ("start", "end", "abort")
FEEDBACK_KINDS: tuple[str, ...] = ("continuous", "intermittent")
DIRECTIONS: tuple[str, ...] = ("increase", "decrease")
KEY_ROLES: tuple[str, ...] = ("trigger", "response")


# --------------------------------------------------------------------------- field types
def _cut(limit: int):
    def cut(value: Any) -> Any:
        return value[:limit] if isinstance(value, str) and len(value) > limit else value

    return cut


def _round_off(value: Any) -> Any:
    """Clip a value within VALUE_TOLERANCE of [0, 1] onto it (float round-off)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if -VALUE_TOLERANCE <= value < 0.0:
            return 0.0
        if 1.0 < value <= 1.0 + VALUE_TOLERANCE:
            return 1.0
    return value


Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
Count = Annotated[int, Field(ge=0)]
Number = Annotated[float, Field(ge=-MAX_ABS_NUMBER, le=MAX_ABS_NUMBER)]
Seconds = Annotated[float, Field(gt=0, le=MAX_ABS_NUMBER)]
Real = float  # any finite number (ROI signals, motion, quality measures)
Time = float  # UNIX seconds, finite
Value = Annotated[float, Field(ge=0.0, le=1.0), BeforeValidator(_round_off)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
RunId = Annotated[str, Field(max_length=MAX_RUN_ID)]
PathText = Annotated[str, Field(max_length=MAX_PATH)]
LongText = Annotated[str, BeforeValidator(_cut(MAX_LOG_CHARS))]
Phase = Literal["waiting", "running", "ended"]
FeedbackKind = Literal["continuous", "intermittent"]
Direction = Literal["increase", "decrease"]
Pair = Annotated[list[Number], Field(min_length=2, max_length=2)]
Triple = Annotated[list[Number], Field(min_length=3, max_length=3)]


# --------------------------------------------------------------------------- bases
_CONFIG = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, validate_default=False,
                     use_attribute_docstrings=True)


def _plain(value: Any) -> Any:
    """A body value as JSON-ready data: models become dicts, tuples lists."""
    if isinstance(value, WirePart):
        return value.to_body()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # Bodies are homogeneous: a list whose first item is a scalar holds scalars (preview rows).
        if value and isinstance(value[0], (WirePart, dict, list, tuple)):
            return [_plain(v) for v in value]
        return value if isinstance(value, list) else list(value)
    return value


class WirePart(BaseModel):
    """A nested object of a message (timing, flags, ...).

    Every field is optional; :meth:`to_body` writes the fields that were set.
    """

    model_config = _CONFIG

    def to_body(self) -> dict[str, Any]:
        """The object as JSON-ready data: the fields that were set, in the class's order."""
        given = self.__pydantic_fields_set__
        return {name: _plain(getattr(self, name)) for name in type(self).model_fields if name in given}


class WireMessage(WirePart):
    """Base of the message of one topic.

    Attributes
    ----------
    TOPIC : str
        The topic (first frame).
    REQUIRED : tuple of str
        Fields without which the message cannot be used.
    run_id : str or None
        The run the message belongs to (filled on receipt; producers leave it
        out: :func:`rtnf.wire.messages.encode` adds it). Empty or absent: no run.
    """

    TOPIC: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    _ENVELOPE: ClassVar[frozenset[str]] = frozenset({"run_id"})

    run_id: Optional[RunId] = None

    _invalid: dict[str, str] = PrivateAttr(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        """The body to send: the fields that were set, without ``schema`` and ``run_id``.

        Returns
        -------
        dict
            JSON-ready (nested models become dicts); pass it to
            :func:`rtnf.wire.messages.encode` with :attr:`TOPIC`.
        """
        given = self.__pydantic_fields_set__
        return {name: _plain(getattr(self, name)) for name in type(self).model_fields
                if name in given and name not in self._ENVELOPE}

    @property
    def invalid(self) -> dict[str, str]:
        """Values dropped on receipt: dotted path (``"rois.acc.raw"``, ``"blocks[2].start"``) -> reason."""
        return dict(self._invalid)

    def require(self, *paths: str) -> None:
        """Refuse the message if a value at or under one of ``paths`` was invalid.

        Parameters
        ----------
        *paths : str
            Dotted field paths, e.g. ``"value"``, ``"feedback.scale_range"``.

        Raises
        ------
        MessageError
            With the reason of the first such value.
        """
        for path, reason in self._invalid.items():
            for want in paths:
                if path == want or path.startswith((want + ".", want + "[")):
                    raise MessageError(reason)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Self:
        """Check a decoded body (with or without ``schema`` and ``run_id``).

        Parameters
        ----------
        body : dict
            As returned by :func:`rtnf.wire.messages.decode`.

        Returns
        -------
        WireMessage
            The message; invalid optional values are dropped (see
            :attr:`invalid`), unknown fields ignored.

        Raises
        ------
        MessageError
            When a required field is missing or invalid, the body is not an
            object, or more than :data:`MAX_INVALID` values are invalid.
        """
        if not isinstance(body, dict):
            raise MessageError(f"{cls.TOPIC} message is not a JSON object")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
        if len(errors) > MAX_INVALID:
            raise MessageError(f"{cls.TOPIC} message has {len(errors)} invalid values (at most {MAX_INVALID}); "
                               f"the first: {_reason(cls.TOPIC, errors[0])}")
        invalid: dict[str, str] = {}
        data: Any = body
        for err in errors:
            loc = tuple(err["loc"])
            if not loc or loc[0] in cls.REQUIRED:
                raise MessageError(_reason(cls.TOPIC, err))
            cut = loc[: _droppable(cls, loc) + 1]
            path = _dotted(cut)
            if path not in invalid:
                invalid[path] = _reason(cls.TOPIC, err, path)
                data = _without(data, cut)
        try:
            msg = cls.model_validate(data)
        except ValidationError as exc:  # should not happen: what was invalid is gone
            raise MessageError(_reason(cls.TOPIC, exc.errors(include_url=False)[0])) from None
        msg._invalid = invalid
        return msg


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + str(part))
    return out


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(topic: str, err: Any, path: str | None = None) -> str:
    """One line: the topic, the key, what is wrong and (briefly) the value."""
    if err["type"] == "missing":
        return f"{topic} message: missing {_dotted(tuple(err['loc']))!r} (required)"
    key = path if path is not None else _dotted(tuple(err["loc"]))
    full = _dotted(tuple(err["loc"]))
    where = f" at {full!r}" if full != key else ""
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return f"{topic} message: invalid value for {key!r}{where}: {msg}, but got {_shown(err.get('input'))}"


def _droppable(cls: type[BaseModel], loc: tuple[Any, ...]) -> int:
    """Position in ``loc`` of the value to drop for an error there.

    The deepest field of an object, or key of a mapping, on the path: a bad
    item makes its whole list invalid, a bad value of a mapping only its key.
    """
    node: Any = cls
    cut = 0
    for i, part in enumerate(loc):
        node = _unwrap(node)
        origin = typing.get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if not isinstance(part, str) or part not in node.model_fields:
                break
            cut = i
            node = node.model_fields[part].annotation
        elif origin is dict:
            if part == "[key]":
                break
            cut = i
            node = typing.get_args(node)[1]
        elif origin in (list, tuple):
            node = typing.get_args(node)[0]
        else:
            break
    return cut


def _without(data: Any, path: tuple[Any, ...]) -> Any:
    """``data`` with the value at ``path`` removed (containers on the path copied, ``data`` untouched)."""
    key, rest = path[0], path[1:]
    if isinstance(data, dict) and key in data:
        out = dict(data)
        if rest:
            out[key] = _without(data[key], rest)
        else:
            del out[key]
        return out
    if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data) and rest:
        out_list = list(data)
        out_list[key] = _without(data[key], rest)
        return out_list
    return data


# --------------------------------------------------------------------------- run
class Block(WirePart):
    """One block of the protocol, in kept-volume indices (``stop`` excluded)."""

    condition: Optional[Name] = None
    start: Optional[Index] = None
    stop: Optional[Index] = None


class FeedbackSettings(WirePart):
    """The run's feedback settings (``[feedback]`` of the session config)."""

    roi: Optional[Annotated[list[Name], Field(max_length=MAX_ROIS)]] = None
    """The target ROI(s)."""
    reference_roi: Optional[Name] = None
    """ROI subtracted from the target, or null."""
    signal: Optional[Name] = None
    """What is scaled: "psc" (percent signal change), "beta" or "t"."""
    kind: Optional[FeedbackKind] = None
    """"continuous" or "intermittent"."""
    scaling: Optional[Name] = None
    """"adaptive", "fixed" or "dynamic"."""
    scale_range: Optional[Pair] = None
    """[low, high] mapped to 0 and 1, in the units of ``signal``."""
    intermittent_display_s: Optional[Seconds] = None
    """How long an intermittent score is shown, in seconds."""
    enabled: Optional[bool] = None
    """False: a run without feedback by design."""
    hemodynamic_lag_s: Optional[Number] = None
    """Lag of the haemodynamic response, in seconds."""
    scale_psc: Optional[Pair] = None
    """Deprecated (older rtnf): [low, high] percent signal change; use ``scale_range``."""


class RunMessage(WireMessage):
    """``run``: start, end or abort of a run.

    rtnf repeats the start message every few seconds while the run goes on,
    with ``repeat`` true, so that late subscribers learn about the run; the
    end and abort messages repeat the start's fields with ``event`` changed,
    ``reason`` added and ``t`` renewed.
    """

    TOPIC: ClassVar[str] = "run"
    REQUIRED: ClassVar[tuple[str, ...]] = ("event",)

    event: Literal["start", "end", "abort"]
    """"start", "end" or "abort"."""
    tr_s: Optional[Number] = None
    """Repetition time, in seconds."""
    n_volumes: Optional[Index] = None
    """Kept volumes in the run (after the dummies)."""
    dummy_volumes: Optional[Index] = None
    """Volumes discarded at the start."""
    conditions: Optional[Annotated[list[Name], Field(max_length=MAX_CONDITIONS)]] = None
    baseline: Optional[Name] = None
    """The baseline condition."""
    blocks: Optional[Annotated[list[Block], Field(max_length=MAX_BLOCKS)]] = None
    directions: Optional[Annotated[dict[Name, Direction], Field(max_length=MAX_CONDITIONS)]] = None
    """Optional (older rtnf: absent): task condition -> "increase" or "decrease", which way of the ROI's
    signal is success in its blocks (the feedback value shows success the same way for both). The
    baseline has none. Absent: every task condition increases."""
    rois: Optional[Annotated[list[Name], Field(max_length=MAX_ROIS)]] = None
    """ROI names, in the order of the pipeline."""
    feedback: Optional[FeedbackSettings] = None
    instructions: Optional[Annotated[dict[Name, Text], Field(max_length=MAX_CONDITIONS)]] = None
    """Condition -> text shown to the participant."""
    export_dir: Optional[PathText] = None
    """Optional: the export folder rtnf watches."""
    output_dir: Optional[PathText] = None
    """Optional: where the outputs are written."""
    fd_threshold_mm: Optional[Number] = None
    """Optional: framewise displacement above this is high motion, in mm."""
    heartbeat_s: Optional[Number] = None
    """Optional: rtnf's heartbeat period, in seconds."""
    t: Optional[Time] = None
    """When the message was made (UNIX s)."""
    reason: Optional[LongText] = None
    """End and abort: why (null after a normal end)."""
    repeat: Optional[bool] = None
    """True on the start message's repeats."""


# --------------------------------------------------------------------------- volume
class RoiValues(WirePart):
    """One ROI's signal for one volume (null when the volume is missing)."""

    raw: Optional[Real] = None
    """Mean of the ROI's voxels, in scanner units."""
    clean: Optional[Real] = None
    """After the incremental GLM's nuisance terms."""
    psc: Optional[Real] = None
    """Percent signal change from the baseline."""


class Motion(WirePart):
    """Head position relative to the reference volume (fMRIPrep's names)."""

    trans_x: Optional[Real] = None
    """Translation, in mm."""
    trans_y: Optional[Real] = None
    """Translation, in mm."""
    trans_z: Optional[Real] = None
    """Translation, in mm."""
    rot_x: Optional[Real] = None
    """Rotation, in radians."""
    rot_y: Optional[Real] = None
    """Rotation, in radians."""
    rot_z: Optional[Real] = None
    """Rotation, in radians."""


class Quality(WirePart):
    """Data quality of one volume."""

    dvars: Optional[Real] = None
    """RMS over the brain mask of the backward difference of the realigned volume (scanner units)."""
    global_signal: Optional[Real] = None
    """Mean of the realigned volume over the brain mask (scanner units)."""
    spike: Optional[bool] = None
    """DVARS or the global signal jumped (censored)."""
    reasons: Optional[Annotated[list[Text], Field(max_length=MAX_CONDITIONS)]] = None
    """Why the volume is censored, if it is."""


class Flags(WirePart):
    """What is special about a volume."""

    missing: Optional[bool] = None
    censored: Optional[bool] = None
    late: Optional[bool] = None
    out_of_order: Optional[bool] = None


class Timing(WirePart):
    """The timing model (UNIX seconds; null when the stage did not happen)."""

    t_acquired: Optional[Time] = None
    """Acquisition (DICOM AcquisitionTime, or the simulator's log)."""
    t_detected: Optional[Time] = None
    """The watcher saw the volume's last file complete."""
    t_read: Optional[Time] = None
    """Decoded into an array."""
    t_preprocessed: Optional[Time] = None
    """Motion estimated, ROI signals extracted."""
    t_modelled: Optional[Time] = None
    """Model updated, feedback value computed."""
    t_published: Optional[Time] = None
    """Handed to ZeroMQ."""


class SignalValue(WirePart):
    """One feedback signal's result for one volume (``[signals.<name>]``: connectivity, a decoder, a plugin)."""

    value: Optional[Real] = None
    """The signal's value (null when it has none: see ``reason``)."""
    reason: Optional[LongText] = None
    """Why ``value`` is null."""
    outputs: Optional[Annotated[dict[Name, Optional[Real]], Field(max_length=MAX_ROIS)]] = None
    """The signal's extra per-volume outputs, by name."""
    seconds: Optional[Annotated[float, Field(ge=0)]] = None
    """How long the signal's step took, in seconds (it runs before the feedback is published)."""


class VolumeMessage(WireMessage):
    """``volume``: everything about one volume, for the operator and other clients."""

    TOPIC: ClassVar[str] = "volume"
    REQUIRED: ClassVar[tuple[str, ...]] = ("index",)

    index: Index
    """0-based index from the first kept volume (people read ``index + 1``)."""
    acquisition: Optional[Index] = None
    """The volume's number in the scanner's file name."""
    n_volumes: Optional[Index] = None
    onset_s: Optional[Number] = None
    """``index * tr_s``, in seconds."""
    condition: Optional[Name] = None
    block: Optional[Index] = None
    """Number of the protocol block the volume belongs to."""
    direction: Optional[Direction] = None
    """Optional: the way of the ROI's signal the volume's condition asks for ("increase" or
    "decrease"); null in the baseline (and from older rtnf)."""
    rois: Optional[Annotated[dict[Name, RoiValues], Field(max_length=MAX_ROIS)]] = None
    """ROI name -> signals."""
    motion: Optional[Motion] = None
    framewise_displacement: Optional[Real] = None
    """In mm."""
    quality: Optional[Quality] = None
    flags: Optional[Flags] = None
    timing: Optional[Timing] = None
    file: Optional[PathText] = None
    """The volume's file name (redacted like the outputs)."""
    signals: Optional[Annotated[dict[Name, SignalValue], Field(max_length=MAX_ROIS)]] = None
    """Optional: every configured feedback signal's result, by name (absent when none is configured)."""
    confounds: Optional[Annotated[dict[Name, Optional[Real]], Field(max_length=MAX_CONFOUNDS)]] = None
    """Optional: every confound regressor's value for this volume (``[confounds]``: physiological noise, tissue
    signals), standardised, by design column name; null where the source had none (absent when none is
    configured)."""


# --------------------------------------------------------------------------- feedback
class FeedbackMessage(WireMessage):
    """``feedback``: what the participant should see for one volume."""

    TOPIC: ClassVar[str] = "feedback"
    REQUIRED: ClassVar[tuple[str, ...]] = ("index",)

    index: Index
    condition: Optional[Name] = None
    value: Optional[Value] = None
    """In [0, 1], or null (see ``reason``)."""
    reason: Optional[LongText] = None
    """Why ``value`` is null, else null."""
    kind: Optional[FeedbackKind] = None
    """"continuous" (moves the bar) or "intermittent" (a score); null means continuous."""
    signal: Optional[Real] = None
    """The value before scaling, in the units of the run's ``feedback.signal``: the ROI's own signal,
    before any flip for a decrease block."""
    direction: Optional[Direction] = None
    """Optional: the way of ``signal`` that ``value`` shows as success: "increase" (``value`` grows with
    ``signal``) or "decrease" (``value`` grows as ``signal`` falls: the sign was flipped before scaling);
    the volume's condition's, or for an intermittent score the scored block's. Null in the baseline
    (``signal`` scaled as it is) and from older rtnf (read as "increase")."""
    display_s: Optional[Seconds] = None
    """Intermittent scores: how long to show it, in seconds."""
    t_published: Optional[Time] = None
    reward: Optional[Text] = None
    """Optional: reward text shown with an intermittent score."""
    threshold: Optional[Real] = None
    """Optional: the success threshold in force (``[feedback.shaping]``), in the units of ``signal`` oriented as
    success: the block being judged succeeds when its value exceeds it (0 without shaping: the block must beat
    its baseline). At a volume where a block is scored, the threshold that block had to beat."""
    block_value: Optional[Real] = None
    """Optional, only where a block is scored (where its window, shifted by the hemodynamic lag, ends): the
    block's mean feedback signal, oriented as success (minus the mean in a block that asks for a decrease)."""
    block_success: Optional[bool] = None
    """Optional, with ``block_value``: whether it exceeds ``threshold``."""


# --------------------------------------------------------------------------- heartbeat
class KeyPress(WirePart):
    """The latest response key in a screen's heartbeat."""

    key: Optional[Name] = None
    t_key: Optional[Time] = None


class HeartbeatMessage(WireMessage):
    """``heartbeat``: once a second, so that a silent link can be told from a dead one.

    rtnf sends ``source``, ``state``, ``last_index``, ``n_volumes``, ``t``;
    the feedback screen (on its own socket) adds ``pid``, ``connection_lost``,
    ``n_malformed``, ``view``, its key counts and ``trigger_error``.
    """

    TOPIC: ClassVar[str] = "heartbeat"

    source: Optional[Name] = None
    """"rtnf" or "stimulus"."""
    state: Optional[Phase] = None
    """"waiting", "running" or "ended"."""
    last_index: Optional[Index] = None
    """Index of the latest volume published (rtnf) or acknowledged (screen)."""
    n_volumes: Optional[Index] = None
    t: Optional[Time] = None
    pid: Optional[Count] = None
    connection_lost: Optional[bool] = None
    n_malformed: Optional[Count] = None
    view: Optional[Name] = None
    n_triggers: Optional[Count] = None
    t_last_trigger: Optional[Time] = None
    n_responses: Optional[Count] = None
    last_response: Optional[KeyPress] = None
    rating: Optional[Name] = None
    """Optional (screen with ratings): id of the rating question on screen now, null for none."""
    n_ratings: Optional[Count] = None
    """Optional (screen with ratings): ratings shown so far in the run."""
    ratings_pending: Optional[Count] = None
    """Optional (screen with ratings): ratings of the run on screen or waiting to be shown."""
    ratings_until: Optional[Time] = None
    """Optional (screen with ratings): when the pending ratings will have closed at the latest (their time
    limits), null when none is pending."""
    trigger_error: Optional[LongText] = None
    """Optional (screen): why the serial trigger port is not read (cannot be opened, or lost); absent
    when it works or none is configured."""


# --------------------------------------------------------------------------- screen
class DisplayedMessage(WireMessage):
    """``displayed`` (the feedback screen's socket): a frame showing a new state or value was flipped."""

    TOPIC: ClassVar[str] = "displayed"

    source: Optional[Name] = None
    index: Optional[Index] = None
    """Feedback index on screen; null for frames without a feedback value."""
    value: Optional[Value] = None
    condition: Optional[Name] = None
    state: Optional[Phase] = None
    t_received: Optional[Time] = None
    """When the screen received the feedback message."""
    t_displayed: Optional[Time] = None
    """Just after the flip."""
    kind: Optional[FeedbackKind] = None
    view: Optional[Name] = None
    bar_value: Optional[Value] = None
    """Level the bar heads to."""
    bar_shown: Optional[Value] = None
    """Level drawn on that frame (gliding)."""
    t_settled: Optional[Time] = None
    """When the bar's glide ends."""


class KeysMessage(WireMessage):
    """``keys`` (the feedback screen's socket): one key press, or one scanner trigger (a key or a serial trigger box)."""

    TOPIC: ClassVar[str] = "keys"
    REQUIRED: ClassVar[tuple[str, ...]] = ("key", "role")

    source: Optional[Name] = None
    key: Name
    """PsychoPy's key name ("5", "t", "1", ...)."""
    role: Literal["trigger", "response"]
    t_key: Optional[Time] = None
    """The press as the screen saw it."""
    state: Optional[Phase] = None
    index: Optional[Index] = None
    """Feedback index on screen, or null."""
    # The scanner's triggers (role "trigger"), checked by the screen against the TR (stimulus.trigger):
    device: Optional[Name] = None
    """Optional: where the press came from: "keyboard" (absent: keyboard) or "serial" (a trigger box on a
    serial port; ``key`` is then the byte, as its character or ``0xNN``)."""
    trigger_index: Optional[Index] = None
    """Optional, triggers: 0-based number of the trigger in the run as the screen received it (0: the
    trigger that set the run's time zero; extra pulses counted)."""
    pulse: Optional[Index] = None
    """Optional, triggers: the scanner pulse this trigger is, counted from time zero at the TR (missed
    pulses counted); null for an extra pulse."""
    t_zero: Optional[Time] = None
    """Optional, triggers: the run's time zero, ``t_key`` of its first trigger (UNIX s)."""
    gap_s: Optional[Number] = None
    """Optional, triggers: seconds since the previous trigger that was a scanner pulse."""
    trigger_check: Optional[Literal["time_zero", "ok", "missed", "extra", "irregular", "unchecked"]] = None
    """Optional, triggers: "time_zero" (the run's first), "ok" (about one TR after the previous pulse),
    "missed" (about k >= 2 TRs: ``n_missed`` = k - 1 pulses did not arrive before this one), "extra" (much
    sooner than a TR: not a scanner pulse), "irregular" (neither about one TR nor a whole number of TRs)
    or "unchecked" (the TR is not known yet)."""
    n_missed: Optional[Count] = None
    """Optional, triggers: pulses missed just before this one (0 unless ``trigger_check`` is "missed")."""


# --------------------------------------------------------------------------- log
class LogMessage(WireMessage):
    """``log``: what the operator should know that is not one volume's value.

    A skipped file, another series, a duplicate, a stale file, the export
    folder vanishing; ``alarm`` marks conditions the console shows until
    they clear (``ok`` false when one starts, true when it clears).
    """

    TOPIC: ClassVar[str] = "log"
    REQUIRED: ClassVar[tuple[str, ...]] = ("message",)

    level: Optional[Name] = None
    """"WARNING", "ERROR", ... (Python's level names)."""
    message: Annotated[str, Field(min_length=1), BeforeValidator(_cut(MAX_LOG_CHARS))]
    t: Optional[Time] = None
    alarm: Optional[Name] = None
    """A condition the console shows until it clears ("recording", "no_usable_volume")."""
    ok: Optional[bool] = None
    """False when the alarm starts, true when it clears."""


# --------------------------------------------------------------------------- preview
Rows8 = Annotated[list[Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(max_length=MAX_PLANE)]],
                  Field(max_length=MAX_PLANE)]
RowsT = Annotated[list[Annotated[list[Optional[Real]], Field(max_length=MAX_PLANE)]], Field(max_length=MAX_PLANE)]
Rows01 = Annotated[list[Annotated[list[Annotated[int, Field(ge=0, le=1)]], Field(max_length=MAX_PLANE)]],
                   Field(max_length=MAX_PLANE)]


class PreviewPlane(WirePart):
    """One plane through the feedback ROI; arrays are lists of rows in voxel order."""

    shape: Optional[Annotated[list[Annotated[int, Field(ge=1, le=MAX_PLANE)]], Field(min_length=2, max_length=2)]] = None
    image: Optional[Rows8] = None
    """The realigned volume, 0-255."""
    tmap: Optional[RowsT] = None
    """t values at 0.1 precision, null outside the brain (only with the whole-brain model)."""
    rois: Optional[Annotated[dict[Name, Rows01], Field(max_length=MAX_ROIS)]] = None
    """ROI name -> 0/1 rows."""


class PreviewMessage(WireMessage):
    """``preview``: for the console, after each volume: three planes through the feedback ROI."""

    TOPIC: ClassVar[str] = "preview"
    REQUIRED: ClassVar[tuple[str, ...]] = ("planes",)

    index: Optional[Index] = None
    planes: Annotated[dict[Name, PreviewPlane], Field(max_length=16)]
    """"sagittal", "coronal", "axial" -> plane."""
    axcodes: Optional[Annotated[list[Literal["L", "R", "P", "A", "I", "S"]], Field(min_length=3, max_length=3)]] = None
    """Orientation of the voxel axes, e.g. ["L", "P", "S"]."""
    voxel_mm: Optional[Annotated[list[Annotated[float, Field(gt=0, lt=100)]], Field(min_length=3, max_length=3)]] = None
    """Voxel size along the three axes, in mm."""
    t_ready: Optional[Time] = None
    """When the preview was made (UNIX s; it is made after the volume's feedback left)."""


# --------------------------------------------------------------------------- rating
RATING_MOMENTS: tuple[str, ...] = ("before_run", "after_block", "after_run", "volume")
"""When a rating is shown (``when`` of a rating message)."""


class RatingMessage(WireMessage):
    """``rating`` (the feedback screen's socket): one answered (or unanswered) rating scale.

    Published when the scale left the screen: confirmed with a key or a
    click, or closed by its time limit (``value`` null, ``timed_out`` true).
    Times are the screen machine's.
    """

    TOPIC: ClassVar[str] = "rating"
    REQUIRED: ClassVar[tuple[str, ...]] = ("question",)

    source: Optional[Name] = None
    question: Name
    """The question's id (``[[display.ratings]] id``, e.g. "intensity")."""
    text: Optional[Text] = None
    """The question as shown."""
    value: Optional[Number] = None
    """The answer in the scale's units, null for no answer."""
    scale: Optional[Pair] = None
    """[low, high]: the values of the scale's left and right ends."""
    when: Optional[Literal["before_run", "after_block", "after_run", "volume"]] = None
    """The moment it was shown for."""
    block: Optional[Index] = None
    """``when`` "after_block": the protocol block rated (0-based, as ``blocks`` of the run message and
    ``block`` of the volume messages)."""
    condition: Optional[Name] = None
    """``when`` "after_block": that block's condition."""
    index: Optional[Index] = None
    """Feedback index on screen when the rating was shown (null before the run's first volume)."""
    t_onset: Optional[Time] = None
    """Just after the flip of the first frame showing the scale."""
    t_response: Optional[Time] = None
    """The confirming key press or click (null without an answer)."""
    response_time_s: Optional[Annotated[float, Field(ge=0, le=MAX_ABS_NUMBER)]] = None
    """``t_response - t_onset``, in seconds (null without an answer)."""
    t_offset: Optional[Time] = None
    """Just after the flip of the first frame without the scale."""
    timed_out: Optional[bool] = None
    """True when the time limit closed the scale without an answer."""
    time_limit_s: Optional[Seconds] = None
    response: Optional[Name] = None
    """How it was answered: the confirming key's name or "mouse"; null without an answer."""
    n_moves: Optional[Count] = None
    """Key presses that moved the marker."""
    ratings_pending: Optional[Count] = None
    """Ratings of the run still on screen or waiting after this one."""
    ratings_until: Optional[Time] = None
    """When those will have closed at the latest (their time limits), null when none is pending."""


# --------------------------------------------------------------------------- registry
MESSAGE_TYPES: dict[str, type[WireMessage]] = {
    cls.TOPIC: cls
    for cls in (RunMessage, VolumeMessage, FeedbackMessage, HeartbeatMessage, DisplayedMessage, LogMessage,
                KeysMessage, PreviewMessage, RatingMessage)
}
"""Topic -> message class, for every topic of :data:`rtnf.wire.messages.TOPICS` (in its order)."""


def parse_body(topic: str, body: dict[str, Any]) -> WireMessage:
    """The typed message of a decoded ``body`` on ``topic`` (see :meth:`WireMessage.from_body`).

    Raises
    ------
    MessageError
        For an unknown topic or a body that cannot be used.
    """
    cls = MESSAGE_TYPES.get(topic)
    if cls is None:
        raise MessageError(f"unknown topic {str(topic)[:40]!r}; allowed topics are {TOPICS}")
    return cls.from_body(body)


def decode_message(frames: list[bytes]) -> tuple[str, WireMessage]:
    """Check and decode the frames of one received message into its typed message.

    Parameters
    ----------
    frames : list of bytes
        As returned by ``socket.recv_multipart()``.

    Returns
    -------
    topic : str
    message : WireMessage
        An instance of ``MESSAGE_TYPES[topic]``.

    Raises
    ------
    MessageError
        When :func:`rtnf.wire.messages.decode` refuses the frames or the
        body cannot be used (:meth:`WireMessage.from_body`).
    """
    topic, body = decode(frames)
    return topic, parse_body(topic, body)
