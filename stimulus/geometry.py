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

RGB = tuple[int, int, int]

BACKGROUND: RGB = (0, 0, 0)
BAR_BG: RGB = (60, 60, 60)
BAR_FILL: RGB = (255, 140, 0)
BAR_FRAME: RGB = (200, 200, 200)
TARGET_COLOR: RGB = (255, 255, 255)
TEXT_COLOR: RGB = (255, 255, 255)
NULL_COLOR: RGB = (130, 130, 130)
LOST_COLOR: RGB = (235, 70, 70)

BAR_HEIGHT_FRAC = 0.6
"""Height of the bar background as a fraction of the window height."""
BAR_WIDTH_PX = 80
BAR_OFFSET_Y_FRAC = -0.05
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
DEFAULT_TARGET = 0.75

WAITING_TEXT = "Waiting for the scanner…"
ENDED_TEXT = "Run finished. Thank you!"
LOST_TEXT = "Connection to rtnf lost"
NULL_TEXT = "…"


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


def bar_geometry(size: tuple[int, int]) -> BarGeometry:
    """Compute the bar's geometry for a window of ``size`` pixels.

    Parameters
    ----------
    size : (int, int)
        Window width and height in pixels.

    Returns
    -------
    BarGeometry
    """
    width_px, height_px = int(size[0]), int(size[1])
    bar_h = int(round(BAR_HEIGHT_FRAC * height_px))
    centre_y = BAR_OFFSET_Y_FRAC * height_px
    # Window-centre coordinates of an odd-sized window sit on half pixels;
    # rounding relative to the window's bottom edge keeps every edge on a
    # pixel boundary whatever the parity.
    half_h = height_px / 2.0
    bottom = int(round(centre_y - bar_h / 2.0 + half_h)) - half_h
    half_w = width_px / 2.0
    left = int(round(-BAR_WIDTH_PX / 2.0 + half_w)) - half_w
    return BarGeometry(left=left, bottom=bottom, width=BAR_WIDTH_PX, height=bar_h)


def to_image_row(y: float, size: tuple[int, int]) -> int:
    """Convert a pixel y (origin at the centre, y up) to an image row (0 at the top).

    The returned row is the first row below the edge ``y``.
    """
    return int(round(size[1] / 2.0 - y))


def to_image_col(x: float, size: tuple[int, int]) -> int:
    """Convert a pixel x (origin at the centre) to an image column."""
    return int(round(size[0] / 2.0 + x))
