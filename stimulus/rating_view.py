"""Drawing a rating: the question and PsychoPy's ``visual.Slider`` (imports PsychoPy: needs a display).

One slider per ``[[display.ratings]]`` entry is built when the window opens
(building one takes tens of milliseconds: never during the run), and reset
each time its rating is shown. The marker is where
:class:`stimulus.rating.RatingController` says (keys move it); with
``rating_input.mouse`` a press on the scale moves it and the release answers
(PsychoPy's own mouse handling), read back with :meth:`RatingView.take_click`.

Layout in pixels: the question at a quarter of the height above the centre,
the scale 60 % of the window wide just below the centre, its anchors under
it. With ``display.mirror`` the scale is drawn reversed (its low end on the
window's right, the anchors in reverse order and their texts flipped), so
that the participant sees it the right way round through the mirror.
"""

from __future__ import annotations

import time
from typing import Any

from psychopy import event, visual

from rtnf.wire.display import DisplayConfig, RatingDisplay
from stimulus.rating import RatingFrame

SCALE_WIDTH_FRAC = 0.6
"""Width of the scale, fraction of the window's width."""
SCALE_HEIGHT_FRAC = 0.04
"""Height of the scale (its ticks and marker), fraction of the window's height."""
SCALE_Y_FRAC = -0.05
"""Vertical position of the scale's line from the centre, fraction of the height."""
QUESTION_Y_FRAC = 0.22
"""Vertical position of the question from the centre, fraction of the height."""
DEFAULT_FONT = "Noto Sans"
"""Font of the anchors when ``display.font`` is empty (shipped with PsychoPy: nothing is downloaded)."""


class RatingView:
    """The scales of every configured rating, drawn one at a time.

    Parameters
    ----------
    win : psychopy.visual.Window
        The feedback screen's window (units "pix", colours rgb255).
    cfg : DisplayConfig
    size : (int, int)
        The window's size in pixels.
    """

    def __init__(self, win: visual.Window, cfg: DisplayConfig, size: tuple[int, int]) -> None:
        self.win = win
        self.cfg = cfg
        self.size = size
        self.mirror = cfg.mirror
        w, h = size
        text_h = max(12, round(h * cfg.text_height_frac))
        self.geometry = {"width": round(w * SCALE_WIDTH_FRAC), "height": max(10, round(h * SCALE_HEIGHT_FRAC)),
                         "y": round(h * SCALE_Y_FRAC)}
        kw = {"font": cfg.font} if cfg.font else {}
        # One question text per rating, rendered now: showing a rating re-renders no glyphs.
        self.questions: dict[str, Any] = {
            spec.id: visual.TextStim(win, text=spec.question, pos=(0, round(h * QUESTION_Y_FRAC)), height=text_h,
                                     color=cfg.texts.colour, colorSpace="rgb255", units="pix",
                                     wrapWidth=w * 0.9, flipHoriz=cfg.mirror, **kw)
            for spec in cfg.ratings
        }
        self.sliders: dict[str, Any] = {spec.id: self._slider(spec, text_h) for spec in cfg.ratings}
        self._serial: int | None = None
        self._answered = False
        self._click: tuple[float, float] | None = None
        self._mouse_visible: bool | None = None

    def _slider(self, spec: RatingDisplay, text_h: int) -> Any:
        g = self.geometry
        ticks = [self._shown_value(spec, t) for t in spec.tick_values][:: -1 if self.mirror else 1]
        labels = list(spec.labels)[:: -1 if self.mirror else 1] or None
        slider = visual.Slider(
            self.win, ticks=ticks, labels=labels, startValue=None, pos=(0, g["y"]), size=(g["width"], g["height"]),
            units="pix", style="rating", granularity=spec.granularity, readOnly=not self.cfg.rating_input.mouse,
            labelColor=self.cfg.texts.colour, markerColor=self.cfg.bar.fill, lineColor=self.cfg.texts.colour,
            colorSpace="rgb255", font=self.cfg.font or DEFAULT_FONT, labelHeight=round(text_h * 0.75),
            labelWrapWidth=max(g["width"] / 2.0, 100), autoLog=False, name=f"rating_{spec.id}",
        )
        if self.mirror:
            for label in slider.labelObjs:
                label.flipHoriz = True
                x, y = label.pos
                label.pos = (x, y)  # re-laid out with the flip
        return slider

    def _shown_value(self, spec: RatingDisplay, value: float | None) -> float | None:
        """The slider's value for a rating value (reversed when mirrored), and back."""
        if value is None or not self.mirror:
            return value
        return spec.low + spec.high - value

    # ------------------------------------------------------------------ frames
    def draw(self, frame: RatingFrame) -> None:
        """Draw the question and the scale of ``frame`` into the back buffer."""
        spec = frame.spec
        slider = self.sliders[spec.id]
        if frame.serial != self._serial:
            self._serial = frame.serial
            slider.reset()
            self._answered = False
            self._click = None
        self.show_mouse(frame.mouse)
        if not getattr(slider, "_dragging", False):
            slider.markerPos = self._shown_value(spec, frame.marker)
        self.questions[spec.id].draw()
        slider.draw()  # with the mouse: a press moves the marker, the release records a rating
        if frame.mouse and not self._answered and slider.getRating() is not None:
            self._answered = True
            self._click = (float(self._shown_value(spec, float(slider.getRating()))), time.time())

    def take_click(self) -> tuple[float, float] | None:
        """(value, time) of the click that answered the scale on screen, once; None if there was none."""
        out, self._click = self._click, None
        return out

    def show_mouse(self, visible: bool) -> None:
        """Show the mouse pointer while a scale answered by the mouse is on screen, hide it otherwise."""
        if visible != self._mouse_visible:
            self._mouse_visible = visible
            self.win.mouseVisible = visible
            if not visible:
                event.clearEvents("mouse")
