"""PsychoPy stimuli of the gauge, the picture, the number and the mark labels.

Imported by :mod:`stimulus.screen` (needs a display). Everything is built
once when the screen opens; a frame only moves, turns or fades what exists,
and only when the shown level changed (during a glide, or at a new value):
no texture, text or outline is rebuilt in the frame loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from psychopy import visual

from rtnf.wire.display import RGB, DisplayConfig
from stimulus.displays import NEW_VIEWS
from stimulus.displays.geometry import (
    FRAME_GAP_PX,
    Label,
    PictureGeometry,
    bar_label,
    gauge_geometry,
    label_height,
    number_y,
    picture_geometry,
    picture_look,
    score_height,
    text_height,
)
from stimulus.displays.picture import picture_image, tinted
from stimulus.geometry import BarGeometry
from stimulus.scene import Scene


class _Kit:
    """Shared makers of stimuli in ``units='pix'`` and ``colorSpace='rgb255'``."""

    def __init__(self, win: Any, cfg: DisplayConfig, size: tuple[int, int]) -> None:
        self.win = win
        self.cfg = cfg
        self.size = size

    def text(self, text: str, colour: RGB, height: float, x: float = 0.0, y: float = 0.0,
             anchor_horiz: str = "center", anchor_vert: str = "center") -> visual.TextStim:
        kw = {"font": self.cfg.font} if self.cfg.font else {}
        return visual.TextStim(
            self.win, text=text, pos=(x, y), height=height, color=colour, colorSpace="rgb255",
            units="pix", wrapWidth=self.size[0] * 0.9, flipHoriz=self.cfg.mirror,
            anchorHoriz=anchor_horiz, alignText=anchor_horiz, anchorVert=anchor_vert, **kw,
        )

    def label(self, text: str, colour: RGB, at: Label) -> visual.TextStim:
        return self.text(text, colour, label_height(self.size, self.cfg), at.x, at.y,
                         at.anchor_horiz, at.anchor_vert)

    def null(self, y: float) -> visual.TextStim:
        """The bar's quiet "no value" indicator, centred at ``y``."""
        bar = self.cfg.bar
        return self.text(bar.null_text, bar.null_colour, text_height(self.size, self.cfg), 0.0, y)

    def polygon(self, vertices: list[tuple[float, float]], colour: RGB,
                pos: tuple[float, float]) -> visual.ShapeStim:
        return visual.ShapeStim(self.win, vertices=vertices, pos=pos, units="pix",
                                fillColor=colour, lineColor=None, colorSpace="rgb255",
                                closeShape=True)


class BarLabels:
    """Labels beside the bar's target line and baseline marker (``bar.target_label``, ``bar.baseline_label``)."""

    def __init__(self, kit: _Kit, geometry: BarGeometry) -> None:
        bar = kit.cfg.bar
        self.g = geometry
        self.mirror = kit.cfg.mirror
        self.target = None
        if bar.target_label and bar.target != "none":
            at = bar_label(geometry, float(bar.target), "target", self.mirror)
            self.target = kit.label(bar.target_label, bar.target_colour, at)
        self.baseline = None
        self._baseline_at: float | None = None
        if bar.baseline_label and bar.baseline != "none":
            self.baseline = kit.label(bar.baseline_label, bar.baseline_colour,
                                      bar_label(geometry, 0.0, "baseline", self.mirror))

    def draw(self, scene: Scene) -> None:
        if self.target is not None:
            self.target.draw()
        if self.baseline is not None and scene.baseline_level is not None:
            if scene.baseline_level != self._baseline_at:
                at = bar_label(self.g, scene.baseline_level, "baseline", self.mirror)
                self.baseline.pos = (at.x, at.y)
                self._baseline_at = scene.baseline_level
            self.baseline.draw()


class Gauge:
    """The dial: an arc, target and baseline ticks with their labels, the needle and its hub."""

    def __init__(self, kit: _Kit) -> None:
        cfg = kit.cfg
        self.g = g = gauge_geometry(kit.size, cfg.gauge, cfg.mirror)
        self.arc = kit.polygon(g.arc_vertices(), cfg.gauge.arc_colour, g.pivot)
        bar = cfg.bar
        self.target: list[Any] = []
        if bar.target != "none":
            level = float(bar.target)
            tick = kit.polygon(g.tick_vertices("target"), bar.target_colour, g.pivot)
            tick.ori = g.angle(level)
            self.target.append(tick)
            if bar.target_label:
                self.target.append(kit.label(bar.target_label, bar.target_colour, g.label(level, "target")))
        self.baseline_tick = kit.polygon(g.tick_vertices("baseline"), bar.baseline_colour, g.pivot)
        self.baseline_label = (kit.label(bar.baseline_label, bar.baseline_colour, g.label(0.0, "baseline"))
                               if bar.baseline_label else None)
        self._baseline_at: float | None = None
        self.needle = kit.polygon(g.needle_vertices(), bar.fill, g.pivot)
        self._needle_colour: RGB = bar.fill
        self._needle_at: float | None = None
        self.hub = visual.Circle(kit.win, radius=g.hub_radius, pos=g.pivot, units="pix",
                                 fillColor=cfg.gauge.hub_colour, lineColor=None, colorSpace="rgb255",
                                 edges=32)
        self.null = kit.null(g.lowest_y - FRAME_GAP_PX - text_height(kit.size, cfg))

    def draw(self, scene: Scene) -> None:
        g = self.g
        self.arc.draw()
        for stim in self.target:
            stim.draw()
        if scene.baseline_level is not None:
            if scene.baseline_level != self._baseline_at:
                self.baseline_tick.ori = g.angle(scene.baseline_level)
                if self.baseline_label is not None:
                    at = g.label(scene.baseline_level, "baseline")
                    self.baseline_label.pos = (at.x, at.y)
                    self.baseline_label.anchorHoriz = self.baseline_label.alignText = at.anchor_horiz
                    self.baseline_label.anchorVert = at.anchor_vert
                self._baseline_at = scene.baseline_level
            self.baseline_tick.draw()
            if self.baseline_label is not None:
                self.baseline_label.draw()
        if scene.bar_level is not None:
            if scene.bar_fill != self._needle_colour:
                self.needle.fillColor = scene.bar_fill
                self._needle_colour = scene.bar_fill
            if scene.bar_level != self._needle_at:
                self.needle.ori = g.angle(scene.bar_level)
                self._needle_at = scene.bar_level
            self.needle.draw()
        self.hub.draw()
        if scene.show_null:
            self.null.draw()


class Picture:
    """The picture: scaled, faded and tinted by the level shown.

    A colour that follows the value is a cross-fade: the image tinted with
    ``picture.colour[0]`` drawn first, the one tinted with ``picture.colour[1]``
    over it. With opacity ``o`` and weight ``u`` (the value) of the second,
    their opacities ``o (1 - u) / (1 - o u)`` and ``o u`` give exactly
    ``o (u c1 + (1 - u) c0) + (1 - o) background`` on the image's opaque
    pixels (its soft edges come close).
    """

    def __init__(self, kit: _Kit) -> None:
        cfg = kit.cfg
        self.cfg = cfg.picture
        image = picture_image(self.cfg.file)
        self.g: PictureGeometry = picture_geometry(kit.size, self.cfg, image.shape[:2])
        c0, c1 = (tuple(c) for c in self.cfg.colour)
        colours = [c0] if c0 == c1 else [c0, c1]
        self.layers = [
            visual.ImageStim(kit.win, image=Image.fromarray(np.ascontiguousarray(
                image if c == (255, 255, 255) else tinted(image, c))),
                units="pix", colorSpace="rgb255", color=(255, 255, 255), interpolate=True,
                flipHoriz=cfg.mirror, size=self.g.size(1.0), pos=self.g.pos(1.0))
            for c in colours
        ]
        self._at: float | None = None
        self._visible = True
        self.null = kit.null(self.g.lowest_y(list(self.cfg.scale)) - FRAME_GAP_PX
                             - text_height(kit.size, cfg))

    def _update(self, level: float) -> None:
        look = picture_look(self.cfg, level)
        size, pos = self.g.size(look.scale), self.g.pos(look.scale)
        o, u = look.opacity, look.mix
        if len(self.layers) == 1:
            opacities = [o]
        else:
            opacities = [o * (1.0 - u) / (1.0 - o * u) if o * u < 1.0 else 0.0, o * u]
        for stim, opacity in zip(self.layers, opacities):
            stim.size = size
            stim.pos = pos
            stim.opacity = opacity
        self._visible = size[0] > 0 and size[1] > 0
        self._at = level

    def draw(self, scene: Scene) -> None:
        level = scene.bar_level
        if level is not None:
            if level != self._at:
                self._update(level)
            if self._visible:
                for stim in self.layers:
                    if stim.opacity > 0:
                        stim.draw()
        if scene.show_null:
            self.null.draw()


class Number:
    """The value as a number, written like the intermittent score."""

    def __init__(self, kit: _Kit) -> None:
        cfg = kit.cfg
        h = score_height(kit.size, cfg)
        y = number_y(kit.size)
        self.text = kit.text("", cfg.score.colour, h, 0.0, y)
        self.null = kit.null(y - h * 0.9 - text_height(kit.size, cfg) / 2.0)

    def draw(self, scene: Scene) -> None:
        if scene.number_text:
            if self.text.text != scene.number_text:
                self.text.text = scene.number_text  # re-renders glyphs: only at a new value
            self.text.draw()
        if scene.show_null:
            self.null.draw()


_MAKERS = {"gauge": Gauge, "picture": Picture, "number": Number}


class Displays:
    """The displays of :data:`~stimulus.displays.NEW_VIEWS` and the bar's mark labels, for one window.

    Parameters
    ----------
    win : psychopy.visual.Window
    cfg : DisplayConfig
    size : (int, int)
        The window's size in pixels.
    bar : BarGeometry
        The thermometer's geometry (for the labels beside its marks).
    """

    def __init__(self, win: Any, cfg: DisplayConfig, size: tuple[int, int], bar: BarGeometry) -> None:
        self.kit = _Kit(win, cfg, size)
        self.bar_labels = BarLabels(self.kit, bar)
        self._built: dict[str, Any] = {}
        # Build what the conditions use now, so that no frame pays for it.
        for cond in cfg.conditions.values():
            if cond.view in NEW_VIEWS:
                self.display(cond.view)

    def display(self, view: str) -> Any:
        if view not in self._built:
            self._built[view] = _MAKERS[view](self.kit)
        return self._built[view]

    @staticmethod
    def view_of(scene: Scene) -> str | None:
        """The display that ``scene`` shows, None for the bar or no display."""
        if scene.view in NEW_VIEWS:
            return scene.view
        if scene.view == "ended" and scene.title and scene.feedback_view in NEW_VIEWS:
            return scene.feedback_view
        return None

    def draws(self, scene: Scene) -> bool:
        """Does ``scene`` show one of these displays (instead of the bar)?"""
        return self.view_of(scene) is not None

    def draw(self, scene: Scene) -> None:
        view = self.view_of(scene)
        if view is not None:
            self.display(view).draw(scene)

    def draw_bar_labels(self, scene: Scene) -> None:
        self.bar_labels.draw(scene)
