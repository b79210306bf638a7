"""Colours and pixel geometry of the feedback screen.

No PsychoPy here, so that tests can compute the expected pixel positions of
the thermometer without a display. :mod:`stimulus.screen` re-exports
everything.

Coordinates are PsychoPy ``units='pix'``: origin at the window centre, y up.
All edges of the bar fall on whole pixels so that screenshots can be checked
pixel-exactly.
"""

from __future__ import annotations

from typing import NamedTuple

from rtnf.wire.display import BarDisplay, DisplayConfig

RGB = tuple[int, int, int]

# Defaults of the [display] table (rtnf.wire.display), named for the tests.
_DEFAULT = DisplayConfig()
BACKGROUND: RGB = _DEFAULT.background
BAR_BG: RGB = _DEFAULT.bar.background
BAR_FILL: RGB = _DEFAULT.bar.fill
BAR_FRAME: RGB = _DEFAULT.bar.frame
TARGET_COLOR: RGB = _DEFAULT.bar.target_colour
BASELINE_COLOR: RGB = _DEFAULT.bar.baseline_colour
TEXT_COLOR: RGB = _DEFAULT.texts.colour
NULL_COLOR: RGB = _DEFAULT.bar.null_colour
LOST_COLOR: RGB = _DEFAULT.texts.lost_colour
FIXATION_COLOR: RGB = _DEFAULT.fixation.colour

BAR_HEIGHT_FRAC = _DEFAULT.bar.height_frac
"""Height of the bar background as a fraction of the window height."""
BAR_WIDTH_PX = _DEFAULT.bar.width_px
BAR_OFFSET_Y_FRAC = _DEFAULT.bar.offset_y_frac
"""Vertical offset of the bar centre (fraction of the window height); a little
low so that the instruction text fits above it."""
FRAME_GAP_PX = 4
"""Black gap between the bar and its outline, so that the outline never
touches the bar's pixels."""
FRAME_LINE_PX = 2
TICK_GAP_PX = 8
"""Distance between the bar's side and a target tick; the ticks sit outside
the outline so that the bar's own columns show only fill and background."""
TICK_LENGTH_PX = 24
TICK_THICKNESS_PX = 4
BASELINE_TICK_LENGTH_PX = 12
"""The baseline marker: shorter ticks than the target's, in their own colour."""
DEFAULT_TARGET = 0.75

WAITING_TEXT = _DEFAULT.texts.waiting
ENDED_TEXT = _DEFAULT.texts.ended
LOST_TEXT = _DEFAULT.texts.lost
NULL_TEXT = _DEFAULT.bar.null_text


class BarGeometry(NamedTuple):
    """Position of the thermometer in pixels (origin at the window centre, y up).

    Attributes
    ----------
    left, bottom : float
        Lower-left corner of the bar background (whole pixels from the window
        edge; half-integers from the centre when the window size is odd).
    width, height : int
        Size of the bar background; the fill rises from ``bottom``.
    """

    left: float
    bottom: float
    width: int
    height: int

    @property
    def top(self) -> float:
        """y of the bar's top edge."""
        return self.bottom + self.height

    def fill_height(self, value: float | None) -> int:
        """Height in whole pixels of the fill for ``value`` (clipped to [0, 1])."""
        if value is None:
            return 0
        return int(round(min(max(float(value), 0.0), 1.0) * self.height))

    def level_y(self, value: float) -> float:
        """y of the level ``value`` (for the target ticks)."""
        return self.bottom + self.fill_height(value)


def bar_geometry(size: tuple[int, int], bar: BarDisplay | None = None) -> BarGeometry:
    """Compute the bar's geometry for a window of ``size`` pixels.

    Parameters
    ----------
    size : (int, int)
        Window width and height in pixels.
    bar : BarDisplay, optional
        The ``[display.bar]`` settings (width, height fraction, offset);
        defaults when omitted.

    Returns
    -------
    BarGeometry
    """
    bar = _DEFAULT.bar if bar is None else bar
    width_px, height_px = int(size[0]), int(size[1])
    bar_h = int(round(bar.height_frac * height_px))
    centre_y = bar.offset_y_frac * height_px
    # Window-centre coordinates of an odd-sized window sit on half pixels;
    # rounding relative to the window's bottom edge keeps every edge on a
    # pixel boundary whatever the parity.
    half_h = height_px / 2.0
    bottom = int(round(centre_y - bar_h / 2.0 + half_h)) - half_h
    half_w = width_px / 2.0
    left = int(round(-bar.width_px / 2.0 + half_w)) - half_w
    return BarGeometry(left=left, bottom=bottom, width=bar.width_px, height=bar_h)


def centre_on_pixels(size: tuple[int, int], extent: tuple[int, int]) -> tuple[float, float]:
    """Centre (origin at the window centre) of a ``extent``-sized box nearest the window centre
    whose edges fall on whole pixels (for the fixation cross)."""
    out = []
    for n, e in zip(size, extent):
        half = n / 2.0
        out.append(int(round(-e / 2.0 + half)) - half + e / 2.0)
    return out[0], out[1]


def to_image_row(y: float, size: tuple[int, int]) -> int:
    """Convert a pixel y (origin at the centre, y up) to an image row (0 at the top).

    The returned row is the first row below the edge ``y``.
    """
    return int(round(size[1] / 2.0 - y))


def to_image_col(x: float, size: tuple[int, int]) -> int:
    """Convert a pixel x (origin at the centre) to an image column."""
    return int(round(size[0] / 2.0 + x))
