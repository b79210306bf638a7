"""What to draw, decided from a :class:`~stimulus.link.ScreenState` and the ``[display]`` config.

No PsychoPy here: :class:`SceneMaker` turns the state into a :class:`Scene`
(which view, which texts and colours, the bar's level on this frame), and
:class:`~stimulus.screen.FeedbackScreen` only draws scenes. The glide of the
bar lives here too, as a function of time (never of frame counts: Xvfb has no
vsync, and real displays drop frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rtnf.wire.display import RGB, DisplayConfig
from stimulus.displays import FEEDBACK_VIEWS
from stimulus.displays.geometry import score_text
from stimulus.link import ScreenState

VIEWS = ("waiting", "get_ready", "ended", "score", "bar", "fixation", "text", "rating",
         "gauge", "picture", "number")  # the last three: stimulus.displays
"""The screens: before a run, from its start to its first volume, after it, an
intermittent score, the three per-condition views, and a rating scale (which
pauses the others: :mod:`stimulus.rating`)."""


def ease(u: float, easing: str) -> float:
    """Fraction of the way covered at fraction ``u`` of the glide time.

    ``"ease-out"`` is cubic: fast start (the new value shows at once), calm
    arrival; ``"linear"`` moves at constant speed.
    """
    u = min(max(u, 0.0), 1.0)
    if easing == "linear":
        return u
    return 1.0 - (1.0 - u) ** 3


class Glide:
    """The bar's level over time: from the level shown when a new value arrived to that value.

    Parameters
    ----------
    duration_s : float
        Time to reach a new value (0: jump).
    easing : str
        See :func:`ease`.
    """

    def __init__(self, duration_s: float, easing: str = "ease-out") -> None:
        self.duration_s = float(duration_s)
        self.easing = easing
        self.start: float | None = None
        self.target: float | None = None
        self.t0 = 0.0

    def set(self, target: float | None, t0: float) -> None:
        """Head for ``target`` from time ``t0`` (None: empty bar, no glide)."""
        if target is None:
            self.start = self.target = None
            return
        start = self.level(t0)
        self.start = target if start is None else start
        self.target = target
        self.t0 = t0

    def level(self, now: float) -> float | None:
        """Level shown at ``now`` (None when there is no value yet)."""
        if self.target is None or self.start is None:
            return None
        if self.duration_s <= 0.0:
            return self.target
        u = (now - self.t0) / self.duration_s
        return self.start + (self.target - self.start) * ease(u, self.easing)

    @property
    def t_end(self) -> float:
        """When the current glide is over."""
        return self.t0 + self.duration_s

    def moving(self, now: float) -> bool:
        return self.target is not None and self.start != self.target and now < self.t_end


@dataclass(frozen=True)
class Scene:
    """Everything one frame shows.

    Attributes
    ----------
    view : str
        One of :data:`VIEWS`.
    title : str
        Text at the top (instruction, or the end text above the final bar);
        empty for none.
    title_colour : (int, int, int)
    message : str
        Text at the centre (waiting, get-ready, ended, score views).
    bar_level : float or None
        Level of the bar on this frame (gliding), None for an empty bar.
    bar_target : float or None
        Level the bar is heading to (the latest value).
    bar_fill : (int, int, int)
    show_null : bool
        The latest volume had no value: the bar holds, a quiet indicator shows.
    baseline_level : float or None
        Level of the baseline marker, None for none.
    score_text, reward_text : str
        The intermittent score and its reward text (score view).
    lost : bool
        Nothing heard from rtnf for too long while the run was going on (never
        after its end): the notice shows.
    rating : stimulus.rating.RatingFrame or None
        View "rating": the scale to draw (question, marker), else None.
    number_text : str
        The latest value written with ``[display.score]``'s text (view
        "number"; empty before the first value).
    feedback_view : str
        The feedback display the run showed last ("bar", or "gauge",
        "picture", "number": :mod:`stimulus.displays`): the ended view shows
        the final level on it.
    """

    view: str
    title: str = ""
    title_colour: RGB = (255, 255, 255)
    message: str = ""
    bar_level: float | None = None
    bar_target: float | None = None
    bar_fill: RGB = (255, 140, 0)
    show_null: bool = False
    baseline_level: float | None = None
    score_text: str = ""
    reward_text: str = ""
    lost: bool = False
    rating: Any = None
    number_text: str = ""
    feedback_view: str = "bar"


class SceneMaker:
    """Turns screen states into scenes, keeping the bar's glide between frames.

    Parameters
    ----------
    cfg : DisplayConfig
    """

    def __init__(self, cfg: DisplayConfig) -> None:
        self.cfg = cfg
        self.glide = Glide(cfg.bar.glide_s, cfg.bar.easing)
        self._seen: tuple[str | None, float | None, float | None] = (None, None, None)
        self._shown: tuple[str | None, str] = (None, "bar")  # (run, feedback view shown last)

    def condition_view(self, state: ScreenState) -> str:
        """"bar", "fixation" or "text" for the condition on screen.

        The condition's ``view`` if configured; else a fixation cross for the
        run's baseline, the instruction alone in intermittent runs, the bar
        otherwise.
        """
        cond = state.condition
        view = self.cfg.condition(cond).view
        if view is not None:
            return view
        run = state.run
        if run is not None and run.baseline is not None and cond == run.baseline:
            return "fixation"
        if run is not None and run.feedback_kind == "intermittent":
            return "text"  # scores come on their own screen; no bar in between
        return "bar"

    def instruction(self, state: ScreenState) -> str:
        cond = state.condition
        text = self.cfg.condition(cond).instruction
        if text is not None:
            return text
        return state.instruction() or ""

    def baseline_level(self, state: ScreenState) -> float | None:
        setting = self.cfg.bar.baseline
        if setting == "none":
            return None
        if setting == "auto":
            return None if state.run is None else state.run.baseline_level()
        return float(setting)

    def _follow(self, state: ScreenState) -> None:
        key = (state.run_id, state.bar_value, state.t_bar)
        if key != self._seen:
            self._seen = key
            if state.bar_value is None:
                self.glide.set(None, 0.0)
            else:
                self.glide.set(state.bar_value, state.t_bar if state.t_bar is not None else 0.0)

    def settled_at(self) -> float:
        """When the bar's current glide ends (``time.time()``)."""
        return self.glide.t_end if self.glide.target is not None else 0.0

    def score_until(self, state: ScreenState) -> float | None:
        """End of the intermittent score screen, None when there is no score."""
        if state.score is None:
            return None
        duration = state.score.display_s or self.cfg.score.duration_s
        return state.score.t_received + duration

    def scene(self, state: ScreenState, now: float) -> Scene:
        """The scene to draw at ``now`` (``time.time()``)."""
        self._follow(state)
        cfg = self.cfg
        lost = state.connection_lost(now)
        texts = cfg.texts
        if not state.started:
            return Scene("waiting", message=texts.waiting, title_colour=texts.colour, lost=lost)
        if state.phase == "waiting" or (state.phase == "running" and state.feedback is None):
            # The run started, its first volume has not come: no condition to
            # show yet, so no empty thermometer either.
            return Scene("get_ready", message=texts.get_ready, title_colour=texts.colour,
                         lost=lost)

        score_until = self.score_until(state)
        if score_until is not None and now < score_until:
            return self._score_scene(state, lost)

        cond = cfg.condition(state.condition)
        level = self.glide.level(now)
        bar = dict(
            bar_level=level,
            bar_target=state.bar_value,
            bar_fill=cond.bar_fill or cfg.bar.fill,
            baseline_level=self.baseline_level(state),
            number_text="" if state.bar_value is None else score_text(cfg.score, state.bar_value),
            feedback_view=self._shown[1] if self._shown[0] == state.run_id else "bar",
        )
        if state.phase == "ended":
            # The thermometer stays at its final level under the end text
            # whenever the run had a value to show (whatever the last
            # condition): the participant sees where the run finished.
            if state.bar_value is not None:
                return Scene("ended", title=texts.ended, title_colour=texts.colour, lost=lost,
                             **bar)
            return Scene("ended", message=texts.ended, title_colour=texts.colour, lost=lost)

        view = self.condition_view(state)
        title = self.instruction(state)
        colour = cond.colour or texts.colour
        if view in FEEDBACK_VIEWS:  # the bar, or a display of stimulus.displays
            null = state.feedback is not None and state.feedback.kind == "continuous" and (
                state.feedback.value is None)
            self._shown = (state.run_id, view)
            bar["feedback_view"] = view
            return Scene(view, title=title, title_colour=colour, show_null=null, lost=lost,
                         **bar)
        return Scene(view, title=title, title_colour=colour, lost=lost)

    def _score_scene(self, state: ScreenState, lost: bool) -> Scene:
        sc = self.cfg.score
        fb = state.score
        assert fb is not None
        if fb.value is None:
            return Scene("score", message=sc.null_text, lost=lost, title_colour=sc.colour)
        text = score_text(sc, fb.value)
        reward = fb.reward
        if reward is None and sc.reward_text and fb.value >= sc.reward_threshold:
            reward = sc.reward_text
        return Scene("score", score_text=text, reward_text=reward or "", lost=lost,
                     title_colour=sc.colour)
