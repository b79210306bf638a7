"""The PsychoPy window that draws a :class:`~stimulus.scene.Scene`.

Importing this module imports ``psychopy.visual``, which needs a display: the
CLI imports it lazily, tests run it under Xvfb.

Everything is drawn in ``units='pix'`` and ``colorSpace='rgb255'`` so that
screenshots can be checked pixel by pixel against :mod:`stimulus.geometry`
(re-exported here). Everything but the texts is symmetric about x = 0, so
mirroring flips the texts (``flipHoriz``; PsychoPy's text ignores the
window's ``viewScale``) and a mirrored frame is the plain frame read right to
left.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from psychopy import core, event, visual

from rtnf.wire.display import RGB, DisplayConfig
from stimulus.geometry import (  # noqa: F401  (re-exported for users of the screen)
    BACKGROUND,
    BAR_BG,
    BAR_FILL,
    BAR_FRAME,
    BAR_HEIGHT_FRAC,
    BAR_OFFSET_Y_FRAC,
    BAR_WIDTH_PX,
    BASELINE_COLOR,
    BASELINE_TICK_LENGTH_PX,
    DEFAULT_TARGET,
    ENDED_TEXT,
    FIXATION_COLOR,
    FRAME_GAP_PX,
    FRAME_LINE_PX,
    LOST_COLOR,
    LOST_TEXT,
    NULL_COLOR,
    NULL_TEXT,
    TARGET_COLOR,
    TEXT_COLOR,
    TICK_GAP_PX,
    TICK_LENGTH_PX,
    TICK_THICKNESS_PX,
    WAITING_TEXT,
    BarGeometry,
    bar_geometry,
    centre_on_pixels,
)
from stimulus.displays.draw import Displays
from stimulus.scene import Scene


class FeedbackScreen:
    """The participant's window: instructions, thermometer, fixation, score, status texts.

    Parameters
    ----------
    cfg : DisplayConfig
        The ``[display]`` settings (window, colours, texts, keys).
    """

    def __init__(self, cfg: DisplayConfig | None = None) -> None:
        self.cfg = cfg = DisplayConfig() if cfg is None else cfg
        self.win = visual.Window(
            size=list(cfg.size),
            fullscr=cfg.fullscreen,
            screen=cfg.screen,
            units="pix",
            color=cfg.background,
            colorSpace="rgb255",
            allowGUI=False,
            # Timing checks count frames, which is meaningless without vsync
            # (Xvfb) and costs a second at start-up.
            checkTiming=False,
        )
        self.size: tuple[int, int] = (int(self.win.size[0]), int(self.win.size[1]))
        self.geometry: BarGeometry = bar_geometry(self.size, cfg.bar)
        self._fill_colour: RGB = cfg.bar.fill
        self._build()
        self._ratings: Any = None  # the rating scales ([[display.ratings]]), built now: never during a run
        if cfg.ratings:
            from stimulus.rating_view import RatingView

            self._ratings = RatingView(self.win, cfg, self.size)

    # ------------------------------------------------------------------ #
    def _rect(self, width: float, height: float, x: float, y: float, **kw: Any) -> visual.Rect:
        return visual.Rect(self.win, width=width, height=height, pos=(x, y), units="pix",
                           colorSpace="rgb255", **kw)

    def _text(self, colour: RGB, y: float, height: float) -> visual.TextStim:
        kw = {"font": self.cfg.font} if self.cfg.font else {}
        return visual.TextStim(
            self.win, text="", pos=(0, y), height=height, color=colour, colorSpace="rgb255",
            units="pix", wrapWidth=self.size[0] * 0.9, flipHoriz=self.cfg.mirror, **kw,
        )

    def _build(self) -> None:
        cfg = self.cfg
        w, h = self.size
        g = self.geometry
        cx = g.left + g.width / 2.0
        cy = g.bottom + g.height / 2.0
        text_h = max(12, round(h * cfg.text_height_frac))

        self._bar_bg = self._rect(g.width, g.height, cx, cy, fillColor=cfg.bar.background,
                                  lineColor=None)
        self._fill = self._rect(g.width, 1, cx, g.bottom, fillColor=cfg.bar.fill, lineColor=None)
        pad = FRAME_GAP_PX + FRAME_LINE_PX / 2.0
        self._frame = self._rect(g.width + 2 * pad, g.height + 2 * pad, cx, cy, fillColor=None,
                                 lineColor=cfg.bar.frame, lineWidth=FRAME_LINE_PX)
        # Ticks sit outside the outline so a pixel column through the bar
        # shows only fill and background.
        outside = g.width / 2.0 + FRAME_GAP_PX + FRAME_LINE_PX + TICK_GAP_PX
        self._ticks = []
        if cfg.bar.target != "none":
            y = g.level_y(float(cfg.bar.target))
            self._ticks = [
                self._rect(TICK_LENGTH_PX, TICK_THICKNESS_PX, cx + s * (outside + TICK_LENGTH_PX / 2.0),
                           y, fillColor=cfg.bar.target_colour, lineColor=None)
                for s in (-1, 1)
            ]
        self._baseline_ticks = [
            self._rect(BASELINE_TICK_LENGTH_PX, TICK_THICKNESS_PX,
                       cx + s * (outside + BASELINE_TICK_LENGTH_PX / 2.0), 0,
                       fillColor=cfg.bar.baseline_colour, lineColor=None)
            for s in (-1, 1)
        ]
        self._baseline_at: float | None = None

        fx = cfg.fixation
        fcx, fcy = centre_on_pixels(self.size, (fx.size_px, fx.thickness_px))
        fcx2, fcy2 = centre_on_pixels(self.size, (fx.thickness_px, fx.size_px))
        self._cross = [
            self._rect(fx.size_px, fx.thickness_px, fcx, fcy, fillColor=fx.colour, lineColor=None),
            self._rect(fx.thickness_px, fx.size_px, fcx2, fcy2, fillColor=fx.colour,
                       lineColor=None),
        ]

        self._title = self._text(cfg.texts.colour, h / 2.0 - h * 0.09, text_h)
        self._message = self._text(cfg.texts.colour, 0, text_h)
        self._null = self._text(cfg.bar.null_colour, g.bottom - FRAME_GAP_PX - text_h, text_h)
        self._null.text = cfg.bar.null_text
        self._lost = self._text(cfg.texts.lost_colour, -h / 2.0 + h * 0.05, text_h * 0.8)
        self._lost.text = cfg.texts.lost
        score_h = max(12, round(h * cfg.score.height_frac))
        self._score = self._text(cfg.score.colour, h * 0.05, score_h)
        self._reward = self._text(cfg.score.reward_colour, h * 0.05 - score_h * 1.2, text_h)
        # Gauge, picture, number and the marks' labels (stimulus.displays).
        self._displays = Displays(self.win, cfg, self.size, g)

    @staticmethod
    def _set(stim: visual.TextStim, text: str, colour: RGB | None = None) -> None:
        # Setting text re-renders the glyphs; only touch what changed.
        if colour is not None and tuple(getattr(stim, "_rtnf_colour", ())) != tuple(colour):
            stim.color = colour
            stim._rtnf_colour = tuple(colour)
        if stim.text != text:
            stim.text = text

    # ------------------------------------------------------------------ #
    def draw(self, scene: Scene) -> None:
        """Draw ``scene`` into the back buffer (call :meth:`flip` to show it)."""
        if scene.title:
            self._set(self._title, scene.title, scene.title_colour)
            self._title.draw()
        if scene.message:
            self._set(self._message, scene.message, scene.title_colour)
            self._message.draw()
        if self._displays.draws(scene):
            self._displays.draw(scene)
        elif scene.view == "bar" or (scene.view == "ended" and scene.title):
            self._draw_bar(scene)
        elif scene.view == "fixation":
            for r in self._cross:
                r.draw()
        elif scene.view == "score":
            self._set(self._score, scene.score_text)
            self._score.draw()
            if scene.reward_text:
                self._set(self._reward, scene.reward_text)
                self._reward.draw()
        if self._ratings is not None:
            if scene.view == "rating" and scene.rating is not None:
                self._ratings.draw(scene.rating)
            else:
                self._ratings.show_mouse(False)
        if scene.lost:
            self._lost.draw()

    def _draw_bar(self, scene: Scene) -> None:
        g = self.geometry
        self._frame.draw()
        self._bar_bg.draw()
        fill_h = g.fill_height(scene.bar_level)
        if fill_h > 0:
            if scene.bar_fill != self._fill_colour:
                self._fill.fillColor = scene.bar_fill
                self._fill_colour = scene.bar_fill
            self._fill.height = fill_h
            self._fill.pos = (self._fill.pos[0], g.bottom + fill_h / 2.0)
            self._fill.draw()
        for tick in self._ticks:
            tick.draw()
        if scene.baseline_level is not None:
            y = g.level_y(scene.baseline_level)
            if y != self._baseline_at:
                for tick in self._baseline_ticks:
                    tick.pos = (tick.pos[0], y)
                self._baseline_at = y
            for tick in self._baseline_ticks:
                tick.draw()
        self._displays.draw_bar_labels(scene)
        if scene.show_null:
            self._null.draw()

    # ------------------------------------------------------------------ #
    def grab(self) -> np.ndarray:
        """The back buffer as an RGB array (rows from the top), without keeping it."""
        image = self.win.getMovieFrame(buffer="back")
        self.win.movieFrames.pop()
        return np.asarray(image.convert("RGB"))

    def capture(self) -> None:
        """Keep a copy of the back buffer (the frame about to be flipped)."""
        self.win.getMovieFrame(buffer="back")

    def save_capture(self, path: str | Path) -> None:
        """Write the captured frame(s) to ``path`` (PNG) and forget them."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.win.saveMovieFrames(str(path))

    def flip(self) -> float:
        """Show the back buffer; return ``time.time()`` just after the flip."""
        self.win.flip()
        return time.time()

    def keys(self, names: list[str]) -> list[tuple[str, float]]:
        """Presses of the keys ``names`` since the last call, with their ``time.time()``.

        The window's event handler stamps each press when it dispatches the
        event (at the latest at the next flip or call of this method), so a
        press is known to within a frame.
        """
        pressed = event.getKeys(keyList=names, timeStamped=True)
        if not pressed:
            return []
        offset = time.time() - core.getTime()
        return [(str(k[0]), float(k[-1]) + offset) for k in pressed]

    def rating_click(self) -> tuple[float, float] | None:
        """(value, time) of a click that answered the rating on screen since the last call, else None."""
        return None if self._ratings is None else self._ratings.take_click()

    def escape_pressed(self) -> bool:
        """True when the quit key was pressed since the last call."""
        return bool(event.getKeys(keyList=[self.cfg.keys.quit]))

    def close(self) -> None:
        """Close the window."""
        self.win.close()
