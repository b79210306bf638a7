"""Pixel geometry and value mappings of the gauge, the picture, the number and the mark labels.

No PsychoPy here, so that tests compute where the needle must point and how
large the picture must be without a display. Coordinates are PsychoPy
``units='pix'``: origin at the window centre, y up; angles are PsychoPy's
``ori``: degrees clockwise from straight up.

Mirroring (``display.mirror``) negates every x and every angle here; texts
are mirrored by PsychoPy itself (``flipHoriz``, about their own position), so
their anchors are those of the plain screen.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from rtnf.wire.display import DisplayConfig, GaugeDisplay, PictureDisplay, ScoreDisplay
from stimulus.geometry import (
    BASELINE_TICK_LENGTH_PX,
    FRAME_GAP_PX,
    FRAME_LINE_PX,
    TICK_GAP_PX,
    TICK_LENGTH_PX,
    TICK_THICKNESS_PX,
    BarGeometry,
)

LABEL_GAP_PX = 6
"""Space between a mark's tick and its label."""
GAUGE_TICK_GAP_PX = 4
"""Space between the arc's outer edge and a mark's tick."""
NEEDLE_GAP_PX = 4
"""Space between the needle's tip and the arc's inner edge."""
ARC_STEP_DEG = 2.0
"""Angle between two vertices of the arc's outline."""


def clip01(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def lerp(a: float, b: float, u: float) -> float:
    """``a`` at ``u`` = 0, ``b`` at ``u`` = 1."""
    return a + (b - a) * u


def text_height(size: tuple[int, int], cfg: DisplayConfig) -> int:
    """Height of the screen's texts (instructions, the null indicator), as the screen computes it."""
    return max(12, round(size[1] * cfg.text_height_frac))


def label_height(size: tuple[int, int], cfg: DisplayConfig) -> int:
    """Height of the mark labels: a little smaller than the instruction."""
    return max(12, round(text_height(size, cfg) * 0.8))


class Label(NamedTuple):
    """Where a mark's label goes: its anchor point and how the text hangs from it."""

    x: float
    y: float
    anchor_horiz: str  # "left", "center", "right" (of the plain, unmirrored screen)
    anchor_vert: str  # "center", "bottom", "top"


# --------------------------------------------------------------------------- #
# Labels of the bar's marks
# --------------------------------------------------------------------------- #
def bar_label(g: BarGeometry, level: float, mark: str, mirror: bool = False) -> Label:
    """The label of the bar's ``mark`` ("target" or "baseline") at ``level``.

    Right of the right-hand tick, vertically centred on it (left of the
    left-hand tick when mirrored).
    """
    length = TICK_LENGTH_PX if mark == "target" else BASELINE_TICK_LENGTH_PX
    outside = g.width / 2.0 + FRAME_GAP_PX + FRAME_LINE_PX + TICK_GAP_PX
    x = g.left + g.width / 2.0 + outside + length + LABEL_GAP_PX
    return Label(-x if mirror else x, g.level_y(level), "left", "center")


# --------------------------------------------------------------------------- #
# Gauge
# --------------------------------------------------------------------------- #
class GaugeGeometry(NamedTuple):
    """The dial in pixels.

    Attributes
    ----------
    pivot : (float, float)
        The needle's pivot, also the arc's centre.
    radius : float
        Radius of the arc's middle line.
    arc_width : int
    sweep_deg : float
        Angle covered by the arc, centred on straight up.
    needle_width : int
    mirror : bool
    """

    pivot: tuple[float, float]
    radius: float
    arc_width: int
    sweep_deg: float
    needle_width: int
    mirror: bool = False

    @property
    def needle_length(self) -> float:
        """From the pivot to just inside the arc."""
        return self.radius - self.arc_width / 2.0 - NEEDLE_GAP_PX

    @property
    def hub_radius(self) -> float:
        return max(4.0, float(self.needle_width))

    def angle(self, value: float) -> float:
        """Direction of ``value`` (clipped to [0, 1]) in degrees clockwise from straight up.

        Value 0 is the arc's left end (-sweep/2), 1 its right end (+sweep/2);
        mirrored, the other way round.
        """
        a = (clip01(value) - 0.5) * self.sweep_deg
        return -a if self.mirror else a

    def point(self, angle: float, r: float) -> tuple[float, float]:
        """The point at distance ``r`` from the pivot in direction ``angle``."""
        t = math.radians(angle)
        return self.pivot[0] + r * math.sin(t), self.pivot[1] + r * math.cos(t)

    def needle_tip(self, value: float) -> tuple[float, float]:
        return self.point(self.angle(value), self.needle_length)

    def arc_vertices(self) -> list[tuple[float, float]]:
        """Outline of the arc band relative to the pivot: outer edge left to right, inner edge back."""
        n = max(2, int(math.ceil(self.sweep_deg / ARC_STEP_DEG)) + 1)
        half = self.sweep_deg / 2.0
        angles = [-half + self.sweep_deg * i / (n - 1) for i in range(n)]
        outer, inner = self.radius + self.arc_width / 2.0, self.radius - self.arc_width / 2.0

        def at(a: float, r: float) -> tuple[float, float]:
            t = math.radians(a)
            return r * math.sin(t), r * math.cos(t)

        return [at(a, outer) for a in angles] + [at(a, inner) for a in reversed(angles)]

    def tick_span(self, mark: str) -> tuple[float, float]:
        """Distances from the pivot of a mark's tick (outside the arc)."""
        length = TICK_LENGTH_PX if mark == "target" else BASELINE_TICK_LENGTH_PX
        r0 = self.radius + self.arc_width / 2.0 + GAUGE_TICK_GAP_PX
        return r0, r0 + length

    def tick_vertices(self, mark: str) -> list[tuple[float, float]]:
        """A tick pointing straight up relative to the pivot (rotate it by :meth:`angle`)."""
        r0, r1 = self.tick_span(mark)
        w = TICK_THICKNESS_PX / 2.0
        return [(-w, r0), (w, r0), (w, r1), (-w, r1)]

    def needle_vertices(self) -> list[tuple[float, float]]:
        """The needle pointing straight up relative to the pivot (rotate it by :meth:`angle`)."""
        w = self.needle_width / 2.0
        return [(-w, 0.0), (w, 0.0), (w, self.needle_length), (-w, self.needle_length)]

    def label(self, level: float, mark: str) -> Label:
        """The label of ``mark`` at ``level``: beyond the tick, hanging away from the dial."""
        plain = self._replace(mirror=False)
        a = plain.angle(level)
        r = self.tick_span(mark)[1] + LABEL_GAP_PX
        x, y = plain.point(a, r)
        s, c = math.sin(math.radians(a)), math.cos(math.radians(a))
        if s > 0.3:
            horiz, vert = "left", "center"
        elif s < -0.3:
            horiz, vert = "right", "center"
        else:
            horiz, vert = "center", "bottom" if c >= 0 else "top"
        if self.mirror:
            x = 2 * self.pivot[0] - x
        return Label(x, y, horiz, vert)

    @property
    def lowest_y(self) -> float:
        """y of the lowest pixel of the dial (the hub, or the arc's ends when it sweeps past 180°)."""
        half = math.radians(self.sweep_deg / 2.0)
        arc_low = self.pivot[1] + (self.radius + self.arc_width / 2.0) * math.cos(half)
        return min(self.pivot[1] - self.hub_radius, arc_low)


def gauge_geometry(size: tuple[int, int], gauge: GaugeDisplay | None = None,
                   mirror: bool = False) -> GaugeGeometry:
    """The dial of ``[display.gauge]`` in a window of ``size`` pixels.

    The pivot sits on a pixel corner (whole pixels from the window's
    bottom-left edge), so that the figure is symmetric about x = 0 on even
    widths.
    """
    gauge = GaugeDisplay() if gauge is None else gauge
    w, h = int(size[0]), int(size[1])
    px = int(round(w / 2.0)) - w / 2.0
    py = int(round(gauge.offset_y_frac * h + h / 2.0)) - h / 2.0
    return GaugeGeometry(pivot=(px, py), radius=float(round(gauge.radius_frac * h)),
                         arc_width=gauge.arc_width_px, sweep_deg=float(gauge.sweep_deg),
                         needle_width=gauge.needle_width_px, mirror=mirror)


# --------------------------------------------------------------------------- #
# Picture
# --------------------------------------------------------------------------- #
class PictureLook(NamedTuple):
    """How the picture looks at one value."""

    scale: float
    opacity: float
    colour: tuple[float, float, float]
    """The colour multiplied into the image (0-255 per channel)."""
    mix: float
    """Weight of the value-1 colour (the value, clipped): the screen cross-fades
    the image tinted with ``picture.colour[0]`` into the one tinted with ``[1]``."""


def picture_look(picture: PictureDisplay, value: float) -> PictureLook:
    """Scale, opacity and colour of the picture at ``value`` (linear between the value-0 and value-1 ends)."""
    u = clip01(value)
    c0, c1 = picture.colour
    colour = tuple(lerp(a, b, u) for a, b in zip(c0, c1))
    return PictureLook(scale=lerp(picture.scale[0], picture.scale[1], u),
                       opacity=lerp(picture.opacity[0], picture.opacity[1], u),
                       colour=(colour[0], colour[1], colour[2]), mix=u)


class PictureGeometry(NamedTuple):
    """Where the picture goes.

    Attributes
    ----------
    width, height : float
        Size at scale 1 in pixels (``height_frac`` of the window; the width
        keeps the image's proportions).
    centre_y : float
        Centre of the scale-1 picture.
    anchor : str
        "bottom" (the bottom edge stays at ``centre_y - height / 2``) or "centre".
    """

    width: float
    height: float
    centre_y: float
    anchor: str

    @property
    def bottom(self) -> float:
        return self.centre_y - self.height / 2.0

    def size(self, scale: float) -> tuple[int, int]:
        """Drawn size in whole pixels at ``scale``."""
        return int(round(self.width * scale)), int(round(self.height * scale))

    def pos(self, scale: float) -> tuple[float, float]:
        """Centre of the picture drawn at ``scale``."""
        _, h = self.size(scale)
        if self.anchor == "bottom":
            return 0.0, self.bottom + h / 2.0
        return 0.0, self.centre_y

    def lowest_y(self, scales: list[float]) -> float:
        """Lowest y the picture reaches over ``scales`` (for the null indicator below it)."""
        if self.anchor == "bottom":
            return self.bottom
        return self.centre_y - self.height * max(max(scales), 1.0) / 2.0


def picture_geometry(size: tuple[int, int], picture: PictureDisplay | None = None,
                     image_shape: tuple[int, int] = (1, 1)) -> PictureGeometry:
    """The scale-1 box of the picture for an image of ``image_shape`` (rows, columns).

    The box's bottom edge falls on a whole pixel from the window's bottom.
    """
    picture = PictureDisplay() if picture is None else picture
    w, h = int(size[0]), int(size[1])
    box_h = float(round(picture.height_frac * h))
    rows, cols = image_shape
    box_w = box_h * cols / max(rows, 1)
    bottom = int(round(picture.offset_y_frac * h - box_h / 2.0 + h / 2.0)) - h / 2.0
    return PictureGeometry(width=box_w, height=box_h, centre_y=bottom + box_h / 2.0,
                           anchor=picture.anchor)


# --------------------------------------------------------------------------- #
# Number
# --------------------------------------------------------------------------- #
def score_text(score: ScoreDisplay, value: float) -> str:
    """``value`` written with ``[display.score]``'s text and scale (the number view and the score screen)."""
    points = int(round(value * score.scale))
    try:
        return score.text.format(score=points, value=value)
    except (KeyError, IndexError, ValueError):
        return f"{points}"


def number_y(size: tuple[int, int]) -> float:
    """Centre of the number (where the score screen writes the score)."""
    return size[1] * 0.05


def score_height(size: tuple[int, int], cfg: DisplayConfig) -> int:
    return max(12, round(size[1] * cfg.score.height_frac))
