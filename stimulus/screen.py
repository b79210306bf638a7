"""The PsychoPy window that shows a :class:`~stimulus.link.ScreenState`.

Importing this module imports ``psychopy.visual``, which needs a display: the
CLI imports it lazily, tests run it under Xvfb.

Everything is drawn in ``units='pix'`` and ``colorSpace='rgb255'`` so that
screenshots can be checked pixel by pixel against :mod:`stimulus.geometry`
(re-exported here).
"""

from __future__ import annotations

import time
from pathlib import Path

from psychopy import event, visual

from stimulus.geometry import (  # noqa: F401  (re-exported for users of the screen)
    BACKGROUND,
    BAR_BG,
    BAR_FILL,
    BAR_FRAME,
    BAR_HEIGHT_FRAC,
    BAR_OFFSET_Y_FRAC,
    BAR_WIDTH_PX,
    DEFAULT_TARGET,
    ENDED_TEXT,
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
)
from stimulus.link import ScreenState


class FeedbackScreen:
    """The participant's window: instructions, thermometer, status texts.

    Parameters
    ----------
    size : (int, int)
        Window size in pixels (ignored in full screen, which uses the
        monitor's size).
    fullscreen : bool
    screen : int
        Index of the monitor (the projector is usually 1).
    target : float
        Level in [0, 1] marked by two ticks beside the bar.
    mirror : bool
        Mirror the image left-right, for set-ups that show the projection
        through a mirror without flipping it in hardware.
    """

    def __init__(
        self,
        size: tuple[int, int] = (1024, 768),
        fullscreen: bool = False,
        screen: int = 0,
        target: float = DEFAULT_TARGET,
        mirror: bool = False,
    ) -> None:
        if not 0.0 <= target <= 1.0:
            raise ValueError(
                "Invalid value for the 'target' parameter. Allowed values are numbers in "
                f"[0, 1], but got {target!r} instead."
            )
        self.target = float(target)
        self.mirror = bool(mirror)
        self.win = visual.Window(
            size=list(size),
            fullscr=fullscreen,
            screen=screen,
            units="pix",
            color=BACKGROUND,
            colorSpace="rgb255",
            allowGUI=False,
            # Timing checks count frames, which is meaningless without vsync
            # (Xvfb) and costs a second at start-up.
            checkTiming=False,
        )
        self.size: tuple[int, int] = (int(self.win.size[0]), int(self.win.size[1]))
        self.geometry: BarGeometry = bar_geometry(self.size)
        self._build()

    def _build(self) -> None:
        w, h = self.size
        g = self.geometry
        cx = g.left + g.width / 2.0
        cy = g.bottom + g.height / 2.0
        text_h = max(16, round(h * 0.045))

        def rect(width: float, height: float, x: float, y: float, **kw: object) -> visual.Rect:
            return visual.Rect(
                self.win, width=width, height=height, pos=(x, y), units="pix",
                colorSpace="rgb255", **kw,
            )

        def text(colour: tuple[int, int, int], y: float, height: float) -> visual.TextStim:
            return visual.TextStim(
                self.win, text="", pos=(0, y), height=height, color=colour,
                colorSpace="rgb255", units="pix", wrapWidth=w * 0.9,
                # Everything else is symmetric about x = 0, so mirroring the
                # texts mirrors the whole screen.
                flipHoriz=self.mirror,
            )

        self._bar_bg = rect(g.width, g.height, cx, cy, fillColor=BAR_BG, lineColor=None)
        self._fill = rect(g.width, 1, cx, g.bottom, fillColor=BAR_FILL, lineColor=None)
        pad = FRAME_GAP_PX + FRAME_LINE_PX / 2.0
        self._frame = rect(
            g.width + 2 * pad, g.height + 2 * pad, cx, cy,
            fillColor=None, lineColor=BAR_FRAME, lineWidth=FRAME_LINE_PX,
        )
        # The ticks sit outside the outline so a pixel column through the bar
        # shows only fill and background.
        tick_y = g.level_y(self.target)
        tick_dx = g.width / 2.0 + FRAME_GAP_PX + FRAME_LINE_PX + TICK_GAP_PX + TICK_LENGTH_PX / 2.0
        self._ticks = [
            rect(TICK_LENGTH_PX, TICK_THICKNESS_PX, cx + s * tick_dx, tick_y,
                 fillColor=TARGET_COLOR, lineColor=None)
            for s in (-1, 1)
        ]
        self._instruction = text(TEXT_COLOR, h / 2.0 - h * 0.09, text_h)
        self._message = text(TEXT_COLOR, 0, text_h)
        self._null = text(NULL_COLOR, g.bottom - FRAME_GAP_PX - text_h, text_h)
        self._null.text = NULL_TEXT
        self._lost = text(LOST_COLOR, -h / 2.0 + h * 0.05, text_h * 0.8)
        self._lost.text = LOST_TEXT

    @staticmethod
    def _set_text(stim: visual.TextStim, value: str) -> None:
        # Setting text re-renders the glyphs; skip it when nothing changed.
        if stim.text != value:
            stim.text = value

    # ------------------------------------------------------------------ #
    def draw(self, state: ScreenState, now: float | None = None) -> None:
        """Draw ``state`` into the back buffer (call :meth:`flip` to show it).

        Parameters
        ----------
        state : ScreenState
        now : float, optional
            ``time.time()`` for the connection check; defaults to now.
        """
        now = time.time() if now is None else now
        if state.phase == "waiting":
            self._set_text(self._message, WAITING_TEXT)
            self._message.draw()
        elif state.phase == "ended" and state.feedback is None:
            self._set_text(self._message, ENDED_TEXT)
            self._message.draw()
        else:
            # After the end, the thermometer stays at its final level under
            # the closing text: the participant sees where the run finished.
            top = state.instruction() if state.phase == "running" else ENDED_TEXT
            if top:
                self._set_text(self._instruction, top)
                self._instruction.draw()
            self._draw_bar(state)
        if state.connection_lost(now):
            self._lost.draw()

    def _draw_bar(self, state: ScreenState) -> None:
        self._frame.draw()
        self._bar_bg.draw()
        fill_h = self.geometry.fill_height(state.bar_value)
        if fill_h > 0:
            self._fill.height = fill_h
            self._fill.pos = (self._fill.pos[0], self.geometry.bottom + fill_h / 2.0)
            self._fill.draw()
        for tick in self._ticks:
            tick.draw()
        if state.phase == "running" and state.feedback is not None and state.feedback.value is None:
            self._null.draw()

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

    def escape_pressed(self) -> bool:
        """True when Esc was pressed since the last call."""
        return bool(event.getKeys(keyList=["escape"]))

    def close(self) -> None:
        """Close the window."""
        self.win.close()
