"""The ``[display]`` table of a session config: how the feedback screen looks.

Pure pydantic models and a small loader, importing nothing else from rtnf,
so that both sides can use them:

- rtnf's :class:`~rtnf.config.Config` holds ``display: DisplayConfig`` and
  validates it with the rest of the session config;
- the feedback screen (``rtnf-screen --config session.toml``) reads only the
  ``[display]`` table with :func:`load_display`, without the processing stack.

Every key has a default, so an empty or absent ``[display]`` table gives the
standard screen. Colours are ``"#rrggbb"`` strings or ``[r, g, b]`` lists of
integers in 0-255 (stored as tuples). TOML has no null: features are switched
off with ``false`` or ``"none"`` where the key says so.

Example
-------
.. code-block:: toml

    [display]
    size = [1024, 768]
    mirror = true

    [display.bar]
    glide_s = 0.3
    target = 0.75

    [display.conditions.rest]
    view = "fixation"
    instruction = "Relax and look at the cross"
    colour = "#8fb8ff"

    [display.keys]
    trigger = "5"
    responses = ["1", "2"]

    [display.trigger]          # the scanner's pulse from a serial trigger box (optional)
    port = "/dev/ttyUSB0"
    baud = 115200
    byte = "5"
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from ._validation import format_validation_error
from .ratings import RatingDisplay, RatingInput, Ratings, rating_keys

__all__ = [
    "BarDisplay",
    "RatingDisplay",
    "RatingInput",
    "ConditionDisplay",
    "DisplayConfig",
    "DisplayConfigError",
    "FixationDisplay",
    "GaugeDisplay",
    "KeysDisplay",
    "PictureDisplay",
    "ScoreDisplay",
    "TextsDisplay",
    "ToneDisplay",
    "TriggerDisplay",
    "VIEWS",
    "load_display",
    "parse_display",
]

RGB = tuple[int, int, int]
VIEWS: tuple[str, ...] = ("bar", "gauge", "picture", "number", "fixation", "text")
"""What a condition shows under its instruction: the thermometer, a dial (a
needle over an arc), a picture whose size, opacity or colour follows the value,
the value as a number, a fixation cross, or only the instruction text."""
Label = Annotated[str, Field(max_length=40)]
"""Text beside a mark (target, baseline): a word or two."""

_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")
_KEY_NAME = r"^[a-z0-9_]+$"  # PsychoPy/pyglet key names: "5", "t", "space", "escape", "num_1"


class DisplayConfigError(ValueError):
    """A ``[display]`` table that cannot be used; the message names the key, the value and what is allowed."""


def _allowed(what: str) -> PydanticCustomError:
    # A custom error: its message reads the same in rtnf.config's formatter
    # (no "Value error, " prefix).
    return PydanticCustomError("display_value", "Allowed: {what}", {"what": what})


def _colour(value: Any) -> RGB:
    """``"#rrggbb"`` or ``[r, g, b]`` (integers 0-255) -> ``(r, g, b)``."""
    if isinstance(value, str):
        m = _HEX.match(value)
        if m is not None:
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    elif isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value
    ):
        return (value[0], value[1], value[2])
    raise _allowed("'#rrggbb' (hexadecimal) or [r, g, b] with integers 0-255")


def _level_or(*words: str) -> Any:
    """A level in [0, 1] or one of ``words`` (one clear message instead of one per union branch)."""
    allowed = " or ".join(["a number in [0, 1]"] + [repr(w) for w in words])

    def check(value: Any) -> float | str:
        if isinstance(value, str) and value in words:
            return value
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0.0 <= value <= 1.0):
            return float(value)
        raise _allowed(allowed)

    return PlainValidator(check)


def _key_or_false(value: Any) -> str | bool:
    if value is False:
        return False
    if isinstance(value, str) and re.match(_KEY_NAME, value) and len(value) <= 20:
        return value
    raise _allowed("a PsychoPy key name such as '5', 't', 'space' (lower case), or false")


Colour = Annotated[RGB, BeforeValidator(_colour)]
MAX_STATE_TEXT = 200
"""Longest text of a screen state (``[display.texts]``): a line or two for the participant."""
StateText = Annotated[str, Field(max_length=MAX_STATE_TEXT)]
Level = Annotated[float, Field(ge=0.0, le=1.0)]
KeyName = Annotated[str, Field(pattern=_KEY_NAME, min_length=1, max_length=20)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BarDisplay(_Model):
    """The thermometer: geometry, colours, target line, baseline marker, glide."""

    width_px: Annotated[int, Field(ge=4, le=2000)] = 80
    height_frac: Annotated[float, Field(gt=0.05, le=0.9)] = 0.6
    """Height of the bar as a fraction of the window height."""
    offset_y_frac: Annotated[float, Field(ge=-0.4, le=0.4)] = -0.05
    """Vertical offset of the bar's centre from the window's centre, fraction of the height."""
    fill: Colour = (255, 140, 0)
    background: Colour = (60, 60, 60)
    frame: Colour = (200, 200, 200)
    target: Annotated[Union[float, str], _level_or("none")] = 0.75
    """Level in [0, 1] marked by the target line (two ticks beside the bar), or "none"."""
    target_colour: Colour = (255, 255, 255)
    baseline: Annotated[Union[float, str], _level_or("auto", "none")] = "auto"
    """Level of the baseline marker (a short line on both sides of the bar): a
    level in [0, 1], "auto" (where 0 % signal change falls on the scale that
    rtnf announces in its run message, when inside [0, 1]) or "none"."""
    baseline_colour: Colour = (120, 170, 255)
    glide_s: Annotated[float, Field(ge=0.0, le=2.0)] = 0.3
    """Time in seconds for the bar to move to a new value (0: jump)."""
    easing: Literal["ease-out", "linear"] = "ease-out"
    null_text: StateText = "…"
    """Quiet indicator under the bar when a volume has no value (the bar holds)."""
    null_colour: Colour = (130, 130, 130)
    target_label: Label = ""
    """Text beside the target line (and the gauge's target tick), in ``target_colour``; empty: none."""
    baseline_label: Label = ""
    """Text beside the baseline marker (and the gauge's baseline tick), in ``baseline_colour``; empty: none."""


class ScoreDisplay(_Model):
    """The intermittent score screen, shown for ``feedback`` messages of kind "intermittent"."""

    duration_s: Annotated[float, Field(gt=0.0, le=60.0)] = 2.0
    text: StateText = "{score}"
    """Format string; ``{score}`` is the value times ``scale`` rounded to an
    integer, ``{value}`` the value in [0, 1]."""
    scale: Annotated[float, Field(gt=0, le=1e6)] = 100.0
    colour: Colour = (255, 255, 255)
    height_frac: Annotated[float, Field(gt=0.01, le=0.5)] = 0.15
    reward_text: StateText = ""
    """Shown under the score when the value reaches ``reward_threshold`` (empty:
    never). A ``reward`` string in the feedback message overrides it."""
    reward_threshold: Level = 0.5
    reward_colour: Colour = (255, 215, 0)
    null_text: StateText = "No score for this block"
    """Shown instead of the score when the intermittent value is null."""
    # view = "number" writes the continuous value with text, scale, colour and
    # height_frac above (under the instruction; a null volume holds the number
    # and shows bar.null_text under it).


def _two(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return list(value)
    raise _allowed("a list of two: [at value 0, at value 1]")


def _pair(item: Any) -> Any:
    """Two values: at feedback value 0 and at feedback value 1 (a TOML list of two)."""
    return Annotated[list[item], BeforeValidator(_two)]


Scale = Annotated[float, Field(ge=0.0, le=4.0)]
Hertz = Annotated[float, Field(ge=50.0, le=8000.0)]


class GaugeDisplay(_Model):
    """The dial of ``view = "gauge"``: a needle over an arc, swinging clockwise as the value rises.

    The needle has the bar's fill colour (``bar.fill`` or the condition's
    ``bar_fill``) and glides like the bar (``bar.glide_s``, ``bar.easing``);
    the target and baseline marks (``bar.target``, ``bar.baseline`` and their
    colours and labels) are ticks outside the arc.
    """

    radius_frac: Annotated[float, Field(ge=0.05, le=0.45)] = 0.3
    """Radius of the arc (its middle line) as a fraction of the window height."""
    offset_y_frac: Annotated[float, Field(ge=-0.4, le=0.4)] = -0.15
    """Vertical offset of the needle's pivot from the window's centre, fraction of the height."""
    sweep_deg: Annotated[float, Field(ge=30.0, le=300.0)] = 180.0
    """Angle of the arc, centred on straight up: value 0 at its left end, 1 at its right end."""
    arc_width_px: Annotated[int, Field(ge=1, le=200)] = 12
    arc_colour: Colour = (60, 60, 60)
    needle_width_px: Annotated[int, Field(ge=1, le=100)] = 6
    hub_colour: Colour = (200, 200, 200)
    """The disc over the needle's pivot."""


class PictureDisplay(_Model):
    """The picture of ``view = "picture"``: its size, opacity and colour follow the value.

    Each of ``scale``, ``opacity`` and ``colour`` is a pair: the look at value
    0 and at value 1, interpolated linearly in between (and gliding like the
    bar); equal ends keep that property fixed. The default picture is a flame
    drawn by code (:mod:`stimulus.displays.picture`) that shrinks as the value
    (success) rises, for example as pain-related activity falls.
    """

    file: Annotated[str, Field(max_length=1000)] = ""
    """Image file (PNG, JPEG; transparency kept), relative to the session TOML's folder;
    empty: the built-in flame. Checked when the screen starts."""
    height_frac: Annotated[float, Field(gt=0.05, le=0.9)] = 0.5
    """Height of the picture at scale 1 as a fraction of the window height (its width keeps
    the image's proportions)."""
    offset_y_frac: Annotated[float, Field(ge=-0.4, le=0.4)] = -0.05
    """Vertical offset of the centre of the scale-1 picture from the window's centre."""
    anchor: Literal["bottom", "centre"] = "bottom"
    """What stays in place as the picture scales: its bottom edge (a flame on the ground) or its centre."""
    scale: _pair(Scale) = [1.0, 0.3]
    """Size at value 0 and at value 1 (1: height_frac of the window)."""
    opacity: _pair(Level) = [1.0, 1.0]
    """Opacity at value 0 and at value 1 (0: invisible)."""
    colour: _pair(Colour) = [(255, 255, 255), (255, 255, 255)]
    """Colour multiplied into the image at value 0 and at value 1 ("#ffffff": the image's own colours)."""


class ToneDisplay(_Model):
    """The tone of conditions with ``tone = true``, for eyes-closed designs (PsychoPy's sound).

    Each new value of such a condition plays a tone of ``duration_s`` (cutting
    the previous one); its pitch and volume follow the value. A volume without
    a value plays nothing (silence is the "no value" state).
    """

    pitch_hz: _pair(Hertz) = [220.0, 880.0]
    """Pitch at value 0 and at value 1, in Hz; equal steps of the value are equal musical
    intervals (geometric interpolation)."""
    volume: _pair(Level) = [0.5, 0.5]
    """Volume (0-1) at value 0 and at value 1."""
    duration_s: Annotated[float, Field(ge=0.05, le=10.0)] = 0.4
    """Length of each tone (ramped on and off)."""


class FixationDisplay(_Model):
    """The fixation cross of rest conditions."""

    size_px: Annotated[int, Field(ge=4, le=2000)] = 40
    thickness_px: Annotated[int, Field(ge=1, le=200)] = 4
    colour: Colour = (255, 255, 255)


class TextsDisplay(_Model):
    """Texts of the screen's states (each at most :data:`MAX_STATE_TEXT` characters)."""

    waiting: StateText = "Waiting for the scanner…"
    """Before any run: rtnf has not started one yet."""
    get_ready: StateText = "Get ready"
    """From the run's start (rtnf's run message or first heartbeat) to its first
    volume, instead of an empty thermometer."""
    ended: StateText = "Run finished. Thank you!"
    """After the run ended (normally, or stopped by the operator): shown alone,
    never with the connection-lost notice (rtnf is expected to go quiet then)."""
    lost: StateText = "Connection to rtnf lost"
    """Shown when rtnf goes silent for ``heartbeat_timeout_s`` before the run ended."""
    colour: Colour = (255, 255, 255)
    lost_colour: Colour = (235, 70, 70)


class ConditionDisplay(_Model):
    """How one condition looks. Unset keys fall back to the defaults described."""

    view: Optional[Literal["bar", "gauge", "picture", "number", "fixation", "text"]] = None
    """Default: "fixation" for the run's baseline condition, "bar" for the others
    (see :data:`VIEWS`)."""
    instruction: Optional[StateText] = None
    """Default: the run message's instruction for the condition, else its name."""
    colour: Optional[Colour] = None
    """Colour of the instruction. Default: ``texts.colour``."""
    bar_fill: Optional[Colour] = None
    """Colour of the bar's fill (and of the gauge's needle) in this condition. Default: ``bar.fill``."""
    tone: bool = False
    """Play a tone at each new value of this condition ([display.tone]), whatever its view
    (eyes closed: view = "text" or "fixation")."""


class KeysDisplay(_Model):
    """Keyboard: scanner trigger, participant responses, quit.

    Names are PsychoPy's (pyglet's) key names: ``"5"``, ``"t"``, ``"space"``,
    ``"escape"``, ``"num_1"``.
    """

    trigger: Annotated[Union[str, bool], PlainValidator(_key_or_false)] = "5"
    """The scanner's pulse as a key press (keyboard emulation), or false."""
    responses: list[KeyName] = ["1", "2", "3", "4"]
    quit: KeyName = "escape"


BAUD_RATES: tuple[int, ...] = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
"""Baud rates a serial trigger port may be set to (``display.trigger.baud``)."""


def _port_or_false(value: Any) -> str | bool:
    if value is False:
        return False
    # A device name only: pyserial's URL forms (socket://, spy://...) would open connections or files.
    if (isinstance(value, str) and 0 < len(value) <= 200 and value == value.strip()
            and all(c.isprintable() for c in value) and "://" not in value):
        return value
    raise _allowed("a serial port name such as '/dev/ttyUSB0' or 'COM3' (at most 200 printable "
                   "characters), or false")


def _trigger_byte(value: Any) -> int:
    if isinstance(value, str) and len(value) == 1 and ord(value) < 128:
        return ord(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise _allowed("one ASCII character such as '5' or 't', or the byte's value as an integer 0-255")


class TriggerDisplay(_Model):
    """The scanner's trigger pulse read from a serial port or USB-serial trigger box (pyserial).

    Every trigger, from this port or from the keyboard emulation
    (``keys.trigger``), goes through one clock: the run's first sets its time
    zero, each later one is checked against the TR (see :mod:`stimulus.trigger`).
    """

    port: Annotated[Union[str, bool], PlainValidator(_port_or_false)] = False
    """Serial port of the trigger box ("/dev/ttyUSB0", "/dev/ttyACM0", "COM3"), or false: keyboard only."""
    baud: Literal[BAUD_RATES] = 9600  # type: ignore[valid-type]
    """Baud rate of the port, as the trigger box's manual says (USB-CDC boxes ignore it)."""
    byte: Annotated[int, PlainValidator(_trigger_byte)] = ord("5")
    """The byte the box sends for each pulse: one ASCII character ("5", "t", "s") or its value 0-255;
    other bytes are ignored."""
    tolerance: Annotated[float, Field(ge=0.05, le=0.5)] = 0.25
    """Fraction of the TR a trigger may be off: a gap between triggers longer than (1 + tolerance) TR
    is reported as missed pulse(s) (about gap / TR - 1 of them), one shorter than (1 - tolerance) TR
    as an extra pulse."""


class DisplayConfig(_Model):
    """The ``[display]`` table: window, layout, texts, per-condition looks and keys."""

    size: Annotated[list[Annotated[int, Field(ge=64, le=16384)]],
                    Field(min_length=2, max_length=2)] = [1024, 768]
    """Window size in pixels [width, height] (ignored in full screen)."""
    fullscreen: bool = False
    screen: Annotated[int, Field(ge=0, le=16)] = 0
    """Monitor index (the projector is often 1)."""
    mirror: bool = False
    """Mirror the whole image left-right (projection seen through a mirror)."""
    background: Colour = (0, 0, 0)
    font: Annotated[str, Field(max_length=200)] = ""
    """Font name for all texts; empty: PsychoPy's default."""
    text_height_frac: Annotated[float, Field(gt=0.01, le=0.3)] = 0.045
    max_fps: Annotated[float, Field(gt=0, le=500)] = 60.0
    heartbeat_timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    """Show the connection-lost notice after this long without a message from rtnf
    (before the run ended: rtnf is expected to go quiet after its end)."""
    bar: BarDisplay = BarDisplay()
    score: ScoreDisplay = ScoreDisplay()
    fixation: FixationDisplay = FixationDisplay()
    texts: TextsDisplay = TextsDisplay()
    conditions: Annotated[dict[Annotated[str, Field(max_length=64)], ConditionDisplay], Field(max_length=64)] = {}
    keys: KeysDisplay = KeysDisplay()
    gauge: GaugeDisplay = GaugeDisplay()
    picture: PictureDisplay = PictureDisplay()
    tone: ToneDisplay = ToneDisplay()
    trigger: TriggerDisplay = TriggerDisplay()
    ratings: Ratings = []
    """Visual analogue scales shown at configured moments (``[[display.ratings]]``, :mod:`rtnf.wire.ratings`)."""
    rating_input: RatingInput = RatingInput()
    """Keys (and mouse) that answer the ratings."""

    def condition(self, name: str | None) -> ConditionDisplay:
        """The settings of condition ``name`` (defaults when it has none)."""
        if name is not None and name in self.conditions:
            return self.conditions[name]
        return ConditionDisplay()


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #
def parse_display(raw: Any, source: str = "display") -> DisplayConfig:
    """Validate a ``[display]`` table already read from TOML.

    Parameters
    ----------
    raw : dict
        The table (``{}`` for all defaults).
    source : str
        Prefix of error messages (for example the file name).

    Raises
    ------
    DisplayConfigError
        One message naming each bad key, its value and what is allowed.
    """
    try:
        cfg = DisplayConfig.model_validate(raw)
    except ValidationError as exc:
        raise DisplayConfigError(f"{source}: {format_validation_error(exc, DisplayConfig, 'display')}") from None
    for key in cfg.keys.responses:
        if key in (cfg.keys.trigger, cfg.keys.quit):
            raise DisplayConfigError(
                f"{source}: invalid value for 'display.keys.responses': {key!r} is also the "
                "trigger or quit key. Allowed: keys different from 'display.keys.trigger' "
                "and 'display.keys.quit'."
            )
    if cfg.keys.trigger == cfg.keys.quit:
        raise DisplayConfigError(
            f"{source}: invalid value for 'display.keys.trigger': {cfg.keys.trigger!r} is the "
            "quit key. Allowed: a key different from 'display.keys.quit'."
        )
    if cfg.ratings:
        for key, role in rating_keys(cfg.rating_input).items():
            if key in (cfg.keys.trigger, cfg.keys.quit):
                raise DisplayConfigError(
                    f"{source}: invalid value for 'display.rating_input.{role}': {key!r} is also the "
                    "trigger or quit key. Allowed: keys different from 'display.keys.trigger' "
                    "and 'display.keys.quit'."
                )
    try:
        cfg.score.text.format(score=0, value=0.0)
    except (KeyError, IndexError, ValueError) as exc:
        raise DisplayConfigError(
            f"{source}: invalid value for 'display.score.text': {cfg.score.text!r} ({exc!r}). "
            "Allowed: text with the placeholders {score} and {value} only."
        ) from None
    return cfg


def load_display(path: str | Path) -> DisplayConfig:
    """Read only the ``[display]`` table of a session config file.

    The rest of the file is not checked here (rtnf does that when it loads
    the session); a file without ``[display]`` gives the defaults.

    Parameters
    ----------
    path : str or Path
        TOML file.

    Returns
    -------
    DisplayConfig

    Raises
    ------
    DisplayConfigError
        If the file cannot be read, is not TOML, or ``[display]`` is invalid;
        one message naming the key, the bad value and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DisplayConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DisplayConfigError(f"{path}: not valid TOML: {exc}") from None
    table = raw.get("display", {})
    if not isinstance(table, dict):
        raise DisplayConfigError(
            f"{path}: invalid value for 'display': {table!r}. Allowed: a table ([display])."
        )
    return parse_display(table, str(path))


# --------------------------------------------------------------------------- #
# Messages (same wording as rtnf.config)
# --------------------------------------------------------------------------- #
