"""Ratings on the participant's screen: the ``[[display.ratings]]`` and ``[display.rating_input]`` tables.

Visual analogue scales (PsychoPy's ``visual.Slider``) that the feedback
screen shows at configured moments of a run, answered with a button box or
the keyboard (keys move the marker, one key confirms) or a mouse (a click on
the scale chooses and confirms), within a time limit ("no answer" recorded
when it runs out). Part of :class:`rtnf.wire.display.DisplayConfig`, so both
rtnf (with the session config) and the screen (``rtnf-screen --config``)
validate them; imports only pydantic.

Example
-------
.. code-block:: toml

    [[display.ratings]]
    id = "intensity"
    question = "How intense was your pain?"
    labels = ["no pain", "worst pain imaginable"]
    range = [0, 100]
    when = "after_block"          # or "before_run", "after_run"; or volumes = [20, 40]
    time_limit_s = 8

    [[display.ratings]]
    id = "unpleasantness"
    question = "How unpleasant was your pain?"
    labels = ["not unpleasant", "most unpleasant imaginable"]
    when = "after_block"

    [display.rating_input]
    left = ["1"]                  # button box: 1 moves the marker left, 2 right, 3 confirms
    right = ["2"]
    confirm = ["3"]
    mouse = true

When several ratings fall on the same moment they are shown one after the
other, in the order of the file. The moments:

``before_run``
    when the screen learns that a run started (rtnf's run message or its
    first heartbeat of the run), before its first volume.
``after_block``
    after each regulation block (a block of a condition other than the
    baseline, or of one of ``conditions``): when the first volume after the
    block arrives, or one TR after the run's last volume for a block that
    ends the run.
``after_run``
    one TR after the run's last volume arrived (or at the run's end message,
    if that comes first).
``volumes``
    when the feedback of each of these volumes arrives (volume numbers as
    people count them: 1 is the first volume after the dummies).

While a rating is on screen the feedback display pauses (no bar, score or
fixation under the scale) and the run goes on; see :mod:`stimulus.rating`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator
from pydantic import model_validator
from pydantic_core import PydanticCustomError

__all__ = ["MOMENTS", "MAX_RATINGS", "RatingDisplay", "RatingInput", "rating_keys"]

MOMENTS: tuple[str, ...] = ("before_run", "after_block", "after_run")
"""Values of ``when``; ``volumes = [...]`` is the fourth kind of moment."""
MAX_RATINGS = 32
"""Most ``[[display.ratings]]`` entries."""
MAX_LABELS = 11
"""Most anchor labels of one scale."""
MAX_TICKS = 101
"""Most ticks of one scale."""
MAX_LABEL_TEXT = 100
"""Longest anchor label."""
MAX_TIME_LIMIT_S = 600.0
"""Longest time limit of one rating, in seconds."""

_ID = r"^[A-Za-z0-9_.-]+$"
_KEY_NAME = r"^[a-z0-9_]+$"  # as rtnf.wire.display: PsychoPy/pyglet key names


def _allowed(what: str) -> PydanticCustomError:
    return PydanticCustomError("display_value", "Allowed: {what}", {"what": what})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _start(value: Any) -> float | str:
    if isinstance(value, str) and value in ("middle", "none"):
        return value
    if _number(value):
        return float(value)
    raise _allowed("a number within 'range', 'middle' or 'none'")


KeyName = Annotated[str, Field(pattern=_KEY_NAME, min_length=1, max_length=20)]
KeyList = Annotated[list[KeyName], Field(min_length=1, max_length=8)]
Finite = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RatingDisplay(_Model):
    """One visual analogue scale: its question, anchors, range, ticks and when it is shown."""

    id: Annotated[str, Field(pattern=_ID, min_length=1, max_length=64)]
    """Name of the question in the records (``intensity``, ``unpleasantness``); unique."""
    question: Annotated[str, Field(min_length=1, max_length=200)]
    """Text above the scale."""
    labels: Annotated[list[Annotated[str, Field(max_length=MAX_LABEL_TEXT)]], Field(max_length=MAX_LABELS)] = []
    """Anchors under the scale, spread evenly from its left end to its right end,
    each at the nearest tick (two labels: one at each end)."""
    range: Annotated[list[Finite], Field(min_length=2, max_length=2)] = [0.0, 100.0]
    """[low, high]: the values of the left and right ends."""
    ticks: Optional[Annotated[list[Finite], Field(min_length=2, max_length=MAX_TICKS)]] = None
    """Values marked on the scale, ascending, from ``range``'s low to its high
    end (default: the two ends)."""
    granularity: Annotated[float, Field(ge=0.0, le=1e9)] = 0.0
    """Values are rounded to multiples of this (0: continuous)."""
    step: Optional[Annotated[float, Field(gt=0.0, le=1e9)]] = None
    """How far one key press moves the marker (default: ``granularity`` if set, else 1/20 of the range)."""
    start: Annotated[Union[float, str], PlainValidator(_start)] = "middle"
    """Where the marker starts: a value, "middle", or "none" (no marker until
    the first key press, which puts it in the middle, or a click)."""
    when: Optional[Literal["before_run", "after_block", "after_run"]] = None
    """The moment (see the module's description); give ``when`` or ``volumes``."""
    volumes: Optional[Annotated[list[Annotated[int, Field(ge=1, le=10_000_000)]],
                                Field(min_length=1, max_length=10_000)]] = None
    """Show the rating when each of these volumes arrives (1 = first volume after the dummies)."""
    conditions: Optional[Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=64)]] = None
    """``when = "after_block"`` only: the blocks of these conditions (default: every condition but the baseline)."""
    time_limit_s: Annotated[float, Field(gt=0.0, le=MAX_TIME_LIMIT_S)] = 10.0
    """Seconds to answer; then the rating closes and is recorded as no answer."""

    @field_validator("range")
    @classmethod
    def _range_ascending(cls, value: list[float]) -> list[float]:
        if not value[0] < value[1]:
            raise _allowed("[low, high] with low < high")
        return value

    @field_validator("ticks")
    @classmethod
    def _ticks_in_range(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        scale = info.data.get("range")
        if value is None or scale is None:
            return value
        if any(b <= a for a, b in zip(value, value[1:])):
            raise _allowed("ascending values")
        if value[0] != scale[0] or value[-1] != scale[1]:
            raise _allowed(f"values from the low end of 'range' ({scale[0]:g}) to its high end ({scale[1]:g})")
        return value

    @field_validator("step")
    @classmethod
    def _step_within_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        scale = info.data.get("range")
        if value is not None and scale is not None and value > scale[1] - scale[0]:
            raise _allowed(f"a step no larger than the range ({scale[1] - scale[0]:g})")
        return value

    @field_validator("start")
    @classmethod
    def _start_in_range(cls, value: float | str, info: ValidationInfo) -> float | str:
        scale = info.data.get("range")
        if isinstance(value, float) and scale is not None and not scale[0] <= value <= scale[1]:
            raise _allowed(f"a number within 'range' [{scale[0]:g}, {scale[1]:g}], 'middle' or 'none'")
        return value

    @model_validator(mode="after")
    def _one_moment(self) -> "RatingDisplay":
        if (self.when is None) == (self.volumes is None):
            raise _allowed(
                f"either 'when' ({' / '.join(repr(m) for m in MOMENTS)}) or 'volumes' (a list of volume numbers, "
                f"1 = the first volume after the dummies) in rating {self.id!r}, "
                + ("not both" if self.when is not None else "but it has neither")
            )
        if self.conditions is not None and self.when != "after_block":
            raise _allowed(f"'conditions' only with when = 'after_block' (rating {self.id!r})")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def low(self) -> float:
        return float(self.range[0])

    @property
    def high(self) -> float:
        return float(self.range[1])

    @property
    def tick_values(self) -> list[float]:
        """The ticks, defaulting to the two ends."""
        return [float(t) for t in self.ticks] if self.ticks is not None else [self.low, self.high]

    @property
    def key_step(self) -> float:
        """How far one key press moves the marker."""
        if self.step is not None:
            return float(self.step)
        if self.granularity > 0:
            return float(self.granularity)
        return (self.high - self.low) / 20.0

    @property
    def start_value(self) -> float | None:
        """Where the marker starts (None: no marker)."""
        if self.start == "none":
            return None
        if self.start == "middle":
            return self.snap((self.low + self.high) / 2.0)
        return self.snap(float(self.start))

    def snap(self, value: float) -> float:
        """``value`` clipped to the range and rounded to the granularity (and to 9 decimals: no 60.00000000001)."""
        if self.granularity > 0:
            value = round(value / self.granularity) * self.granularity
        return round(min(max(value, self.low), self.high), 9)


def _unique_ids(ratings: list[RatingDisplay]) -> list[RatingDisplay]:
    seen: set[str] = set()
    for r in ratings:
        if r.id in seen:
            raise _allowed(f"a different 'id' for every rating, but {r.id!r} is used twice")
        seen.add(r.id)
    return ratings


Ratings = Annotated[list[RatingDisplay], Field(max_length=MAX_RATINGS), AfterValidator(_unique_ids)]
"""The ``[[display.ratings]]`` array of tables."""


class RatingInput(_Model):
    """How the participant answers: keys (a button box sends key presses) and the mouse."""

    left: KeyList = ["1", "left"]
    """Keys that move the marker towards the low end (left)."""
    right: KeyList = ["2", "right"]
    """Keys that move the marker towards the high end (right)."""
    confirm: KeyList = ["3", "return"]
    """Keys that confirm the value under the marker."""
    mouse: bool = True
    """A click (press and release) on the scale chooses and confirms a value."""

    @model_validator(mode="after")
    def _distinct(self) -> "RatingInput":
        roles = {"left": self.left, "right": self.right, "confirm": self.confirm}
        seen: dict[str, str] = {}
        for role, keys in roles.items():
            for key in keys:
                if key in seen and seen[key] != role:
                    raise _allowed(f"different keys for left, right and confirm, but {key!r} is in "
                                   f"'{seen[key]}' and '{role}'")
                seen[key] = role
        return self


def rating_keys(rating_input: RatingInput) -> dict[str, str]:
    """Key name -> "left", "right" or "confirm"."""
    out: dict[str, str] = {}
    for role in ("left", "right", "confirm"):
        for key in getattr(rating_input, role):
            out[key] = role
    return out

