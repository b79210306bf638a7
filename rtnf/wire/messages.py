"""The wire protocol: ZeroMQ multipart messages ``[topic, json]``.

Every message body is a UTF-8 JSON object with a ``schema`` field
(``"rtnf.<topic>/1"``) and the ``run_id``. Receivers ignore fields they do not
know. Nothing is ever pickled, and message sizes are bounded; so are numbers
(integers of at most :data:`MAX_INT_DIGITS` digits, finite floats: no NaN,
Infinity or 1e400) and nesting (:data:`MAX_DEPTH`). The typed messages of
:mod:`rtnf.wire.topics` bound every field (texts, lists, numbers).

This module imports only the standard library so that clients (the feedback
screen, the console, third-party tools) can use it without the processing
stack.

Topics
------
The fields of every topic, their types, units and bounds are defined once, by
the typed message classes of :mod:`rtnf.wire.topics` (one per topic:
:data:`rtnf.wire.topics.MESSAGE_TYPES`); ``docs/wire/`` holds the JSON Schema
generated from them (``python -m rtnf.wire.schema``) for clients in other
languages. In short:

run
    :class:`~rtnf.wire.topics.RunMessage`: start / end / abort of a run (TR,
    volumes, conditions, blocks, ROIs, feedback settings, instructions);
    the start is repeated every few seconds with ``"repeat": true``.
volume
    :class:`~rtnf.wire.topics.VolumeMessage`: one volume's ROI signals,
    motion, framewise displacement, quality, flags and timing.
feedback
    :class:`~rtnf.wire.topics.FeedbackMessage`: what the participant should
    see for one volume (value in [0, 1] or null with a reason).
heartbeat
    :class:`~rtnf.wire.topics.HeartbeatMessage`: once a second, from rtnf
    and from the feedback screen.
preview
    :class:`~rtnf.wire.topics.PreviewMessage`: image planes for the console.
log
    :class:`~rtnf.wire.topics.LogMessage`: what the operator should know
    that is not one volume's value, with alarms that stay until they clear.
displayed
    :class:`~rtnf.wire.topics.DisplayedMessage`: published by the feedback
    screen on its own socket when a frame with a new state or value flipped.
keys
    :class:`~rtnf.wire.topics.KeysMessage`: published by the feedback screen
    on its own socket, one per key press or scanner trigger.
rating
    :class:`~rtnf.wire.topics.RatingMessage`: published by the feedback
    screen on its own socket, one per rating scale shown (its answer, or
    none when its time limit ran out).

Volume numbers for people are ``index + 1`` ("volume N of n_volumes",
1-based from the first kept volume, :func:`volume_label`); the wire keeps the
0-based ``index``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

TOPICS: tuple[str, ...] = ("run", "volume", "feedback", "heartbeat", "displayed", "log", "keys", "preview", "rating")
SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: far above any real message, bounds hostile input
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_SCREEN_ADDRESS = "tcp://127.0.0.1:5556"


MAX_INT_DIGITS = 18
"""Integers on the wire have at most this many digits (an index of 10**400 - 1 is refused)."""
MAX_DEPTH = 32
"""Objects and arrays nest at most this deep in a message."""


class MessageError(ValueError):
    """A message that cannot be decoded or does not follow the protocol."""


def _no_constant(name: str) -> float:
    raise MessageError(f"{name} is not JSON (numbers must be finite)")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An integer token (not the fraction or exponent of a float) longer than MAX_INT_DIGITS.
_LONG_INT = re.compile(rb"(?<![0-9.eE+])(?<![eE]-)[0-9]{%d,}(?![0-9.eE])" % (MAX_INT_DIGITS + 1))
# A float with an exponent of three digits or more: Python reads 1e400 as infinity.
_BIG_EXPONENT = re.compile(rb"(?<![0-9.])-?[0-9.]+[eE]\+?[0-9]{3,}")  # one try per token: linear time


def _check_shape(topic: str, data: bytes) -> None:
    """Refuse numbers of more than MAX_INT_DIGITS digits and nesting deeper than MAX_DEPTH (outside strings).

    Floats as JSON encoders write them have at most 17 significant digits.
    """
    outside = _JSON_STRING.sub(b"", data)
    long_number = _LONG_INT.search(outside)
    if long_number is not None:
        raise MessageError(f"{topic} message is not acceptable: an integer of {len(long_number.group())} digits "
                           f"(at most {MAX_INT_DIGITS})")
    for match in _BIG_EXPONENT.finditer(outside):
        try:
            finite = math.isfinite(float(match.group()))
        except ValueError:
            continue  # not a number: json.loads says so
        if not finite:
            raise MessageError(f"{topic} message is not acceptable: {match.group()[:40]!r} is not a finite number")
    if _depth(outside) > MAX_DEPTH:
        raise MessageError(f"{topic} message is not acceptable: it nests deeper than {MAX_DEPTH} levels")


def _depth(outside: bytes) -> int:
    """Deepest nesting of objects and arrays (stops counting past MAX_DEPTH); strings already removed."""
    depth = deepest = 0
    for byte in outside.translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


# A shown feedback value this close to 0 or 1 is at the end of the bar (saturated) ...
SATURATION_EPS = 1e-3
# ... and more than this fraction of a run's regulation volumes there is an alarm (console, report).
SATURATION_WARN_FRACTION = 0.20


def volume_label(index: int, n_volumes: int | None = None, acquisition: Any = None) -> str:
    """How people read a volume number: "volume N of M (acq K)".

    ``N = index + 1``: 1-based, counted from the first kept volume after the
    dummies (the wire and the tables keep the 0-based ``index``); ``K`` is the
    volume's number in the scanner's file name, when known. The log, the
    terminal, the console and the report all count this way.
    """
    text = f"volume {index + 1}" + (f" of {n_volumes}" if n_volumes else "")
    if isinstance(acquisition, (int, float)) and not isinstance(acquisition, bool) and math.isfinite(acquisition):
        text += f" (acq {int(acquisition)})"
    return text


def reason_kind(reason: str | None) -> str:
    """The kind of a null feedback value's ``reason``, for counting reasons.

    The words before the first colon: "censored: FD 0.8 mm > 0.5 mm" and
    "censored: DVARS" are both "censored"; "waiting for baseline" stays as it
    is; no reason is "no value".
    """
    if not isinstance(reason, str) or not reason.strip():
        return "no value"
    return reason.split(":", 1)[0].strip() or "no value"


def schema_for(topic: str) -> str:
    """Return the schema identifier for ``topic`` (for example ``rtnf.volume/1``)."""
    return f"rtnf.{topic}/{SCHEMA_VERSION}"


def clean_floats(value: Any) -> Any:
    """Replace non-finite floats by ``None``: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_floats(v) for v in value]
    return value


def encode(topic: str, run_id: str, body: dict[str, Any]) -> list[bytes]:
    """Build the two frames of a message.

    Parameters
    ----------
    topic : str
        One of :data:`TOPICS`.
    run_id : str
        Identifier of the run the message belongs to.
    body : dict
        The topic's fields. ``schema`` and ``run_id`` are added. Non-finite
        floats become ``null``.

    Returns
    -------
    list of bytes
        ``[topic, json]`` ready for ``socket.send_multipart``.
    """
    if topic not in TOPICS:
        raise MessageError(
            f"Invalid value for the 'topic' parameter. Allowed values are {TOPICS}, "
            f"but got {topic!r} instead."
        )
    payload = {"schema": schema_for(topic), "run_id": run_id, **body}
    try:
        data = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except ValueError:
        # A NaN or infinity somewhere: replace them (walking the body costs, so only then).
        payload = {"schema": schema_for(topic), "run_id": run_id, **clean_floats(body)}
        data = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    data = data.encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(
            f"{topic} message of {len(data)} bytes exceeds MAX_MESSAGE_BYTES "
            f"({MAX_MESSAGE_BYTES})."
        )
    return [topic.encode("ascii"), data]


def decode(frames: list[bytes]) -> tuple[str, dict[str, Any]]:
    """Check and decode the frames of one received message.

    Parameters
    ----------
    frames : list of bytes
        As returned by ``socket.recv_multipart()``.

    Returns
    -------
    topic : str
    body : dict
        The decoded JSON object, including ``schema`` and ``run_id``.

    Raises
    ------
    MessageError
        If the message has the wrong number of frames, an unknown topic, is
        too large, is not a UTF-8 JSON object, or its schema does not match
        the topic.
    """
    if len(frames) != 2:
        raise MessageError(f"expected 2 frames [topic, json], got {len(frames)}")
    raw_topic, data = frames
    try:
        topic = bytes(raw_topic).decode("ascii")
    except UnicodeDecodeError as exc:
        raise MessageError("topic frame is not ASCII") from exc
    if topic not in TOPICS:
        raise MessageError(f"unknown topic {topic[:40]!r}; allowed topics are {TOPICS}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"{topic} message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    data = bytes(data)
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except MessageError as exc:
        raise MessageError(f"{topic} message is not acceptable: {exc}") from None
    except RecursionError:
        raise MessageError(f"{topic} message is not acceptable: it nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # also int('1' * 5000): "Exceeds the limit (4300 digits)"
        raise MessageError(f"{topic} message is not UTF-8 JSON: {exc}") from exc
    # Only on valid JSON: its strings are well formed, so stripping them takes linear time.
    _check_shape(topic, data)
    if not isinstance(body, dict):
        raise MessageError(f"{topic} message is not a JSON object")
    schema = body.get("schema")
    if not isinstance(schema, str) or not schema.startswith(f"rtnf.{topic}/"):
        raise MessageError(
            f"{topic} message has schema {schema!r}; expected 'rtnf.{topic}/<version>'"
        )
    return topic, body
