"""``python -m stimulus.docs [FOLDER]``: a PNG of every screen and state, made by the code.

Each :class:`Shot` plays a few protocol messages into a
:class:`~stimulus.link.ScreenState`, composes the scene at a given time and
draws it with the real :class:`~stimulus.screen.FeedbackScreen`, so the
pictures in ``docs/screens/`` are exactly what the participant sees. The tests
use the same catalogue (:data:`SHOTS`) for their pixel assertions.

Without a display, the command re-runs itself under ``xvfb-run``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtnf.wire.display import DisplayConfig, parse_display
from rtnf.wire.messages import schema_for
from stimulus.link import ScreenState
from stimulus.scene import Scene, SceneMaker

DOC_SIZE = [640, 480]
RUN_ID = "docs"
T0 = 1000.0
"""Message times of the shots (``time.time()``-like seconds)."""

DOC_DISPLAY: dict[str, Any] = {
    "size": DOC_SIZE,
    "conditions": {
        "rest": {"view": "fixation", "instruction": "Relax and look at the cross",
                 "colour": "#8fb8ff"},
        "regulate": {"instruction": "Raise the bar", "colour": "#ffd27f"},
        "count": {"view": "text", "instruction": "Count backwards from 100",
                  "colour": "#b0ffb0"},
    },
    "score": {"text": "{score} points", "reward_text": "Well done!", "reward_threshold": 0.6},
}
"""The ``[display]`` table of the pictures (a study would put it in its session TOML)."""

START = {"event": "start", "tr_s": 1.0, "n_volumes": 100, "baseline": "rest",
         "conditions": ["rest", "regulate", "count"],
         "feedback": {"roi": "acc", "kind": "continuous", "scale_psc": [-1.0, 2.0]},
         "instructions": {}}


def conditions(**changes: dict[str, Any]) -> dict[str, Any]:
    """:data:`DOC_DISPLAY`'s conditions with keys of some changed (for a shot's ``display``)."""
    out = {name: dict(table) for name, table in DOC_DISPLAY["conditions"].items()}
    for name, table in changes.items():
        out[name] = {**out.get(name, {}), **table}
    return {"conditions": out}


LABELS = {"target_label": "Goal", "baseline_label": "Rest"}
"""Labels of the target and baseline marks in the shots that show them."""
GAUGE = {"view": "gauge", "instruction": "Turn the needle to the goal"}
PICTURE_COLOUR = {"scale": [1.0, 1.0], "opacity": [1.0, 0.4], "colour": ["#ffffff", "#6fa8ff"]}
"""A picture whose opacity and colour follow the value (its size stays)."""


def message(topic: str, t: float, **fields: Any) -> tuple[str, dict[str, Any], float]:
    return topic, {"schema": schema_for(topic), "run_id": RUN_ID, **fields}, t


def fb(index: int, value: float | None, condition: str = "regulate", t: float | None = None,
       **fields: Any) -> tuple[str, dict[str, Any], float]:
    fields.setdefault("reason", None if value is not None else "censored")
    fields.setdefault("kind", "continuous")
    return message("feedback", T0 + index if t is None else t, index=index, condition=condition,
                   value=value, **fields)


@dataclass(frozen=True)
class Shot:
    """One screen or state: messages played in order, then the scene at ``now``."""

    name: str
    caption: str
    messages: tuple[tuple[str, dict[str, Any], float], ...]
    now: float
    display: dict[str, Any] = field(default_factory=dict)
    """Changes to :data:`DOC_DISPLAY` for this shot."""

    def config(self) -> DisplayConfig:
        raw = {**DOC_DISPLAY, **self.display}
        return parse_display(raw, f"shot {self.name}")

    def play(self) -> tuple[ScreenState, Scene]:
        """The state after the messages and the scene at :attr:`now`."""
        cfg = self.config()
        state = ScreenState(cfg.heartbeat_timeout_s)
        maker = SceneMaker(cfg)
        for topic, body, t in self.messages:
            state.handle(topic, body, t)
            maker.scene(state, t)  # the screen composes a frame after each message
        return state, maker.scene(state, self.now)


_start = message("run", T0, **START)
SHOTS: tuple[Shot, ...] = (
    Shot("waiting", "Before the run: waiting for the scanner.", (), T0),
    Shot("get_ready", "The run started (rtnf's run message), its first volume has not come: "
         "texts.get_ready, no empty thermometer.", (_start,), T0 + 1.5),
    Shot("bar", "Regulation: the thermometer at 0.60, target line (white) at 0.75, baseline "
         "marker (blue, 0 % signal change on the run's scale) at 0.33.",
         (_start, fb(1, 0.6)), T0 + 1.5),
    Shot("bar_glide", "Mid-glide: 0.20 -> 0.80, 100 ms into the 300 ms ease-out (the bar moves "
         "to a new value instead of jumping).",
         (_start, fb(1, 0.2), fb(2, 0.8)), T0 + 2.1),
    Shot("bar_null", "A volume without a value (censored or missing): the bar holds its level "
         "and a quiet grey indicator shows under it.",
         (_start, fb(1, 0.6), fb(2, None)), T0 + 2.5),
    Shot("fixation", "The baseline condition: its instruction and a fixation cross.",
         (_start, fb(1, None, condition="rest", reason="baseline")), T0 + 1.5),
    Shot("instruction_only", "A condition configured with view = \"text\": only its "
         "instruction, in its own colour.", (_start, fb(1, 0.5, condition="count")), T0 + 1.5),
    Shot("score", "Intermittent feedback: the block's score with the reward text (value "
         ">= reward_threshold), shown for score.duration_s.",
         (_start, fb(1, 0.5), fb(9, 0.82, kind="intermittent")), T0 + 9.5),
    Shot("score_null", "Intermittent feedback for a block without a value.",
         (_start, fb(9, None, kind="intermittent", display_s=4.0)), T0 + 9.5),
    Shot("ended", "After the run: the thermometer at its final level under the end text.",
         (_start, fb(1, 0.45), message("run", T0 + 2, event="end")), T0 + 2.5),
    Shot("ended_text", "After a run without continuous values (the bar never had a level).",
         (_start, fb(1, None, condition="rest"), message("run", T0 + 2, event="end")),
         T0 + 2.5),
    Shot("connection_lost", "Nothing from rtnf for longer than heartbeat_timeout_s during the "
         "run: the held screen with a red notice (never after the run ended).",
         (_start, fb(1, 0.6)), T0 + 1 + 3.5),
    Shot("mirrored", "display.mirror = true: the whole image read right to left (projection "
         "through a mirror).", (_start, fb(1, 0.6)), T0 + 1.5, {"mirror": True}),
    # Feedback displays (stimulus.displays), chosen per condition.
    Shot("bar_labels", "bar.target_label = \"Goal\" and bar.baseline_label = \"Rest\": labels "
         "beside the target line and the baseline marker, in their colours.",
         (_start, fb(1, 0.6)), T0 + 1.5, {"bar": LABELS}),
    Shot("gauge", "view = \"gauge\": the needle at 0.60 over a 180° arc (value 0 left, 1 right), "
         "target and baseline ticks outside the arc with their labels.",
         (_start, fb(1, 0.6)), T0 + 1.5, {**conditions(regulate=GAUGE), "bar": LABELS}),
    Shot("gauge_null", "The gauge for a volume without a value: the needle holds, the bar's grey "
         "indicator shows under the dial.", (_start, fb(1, 0.6), fb(2, None)), T0 + 2.5,
         conditions(regulate=GAUGE)),
    Shot("picture", "view = \"picture\": the built-in flame at value 0.20 (picture.scale = "
         "[1.0, 0.3]: large while success is low).", (_start, fb(1, 0.2)), T0 + 1.5,
         conditions(regulate={"view": "picture", "instruction": "Make the flame smaller"})),
    Shot("picture_success", "The same flame at value 0.90: it shrinks as the value (success) "
         "rises, for example as pain-related activity falls.", (_start, fb(1, 0.9)), T0 + 1.5,
         conditions(regulate={"view": "picture", "instruction": "Make the flame smaller"})),
    Shot("picture_colour", "picture.opacity = [1.0, 0.4] and picture.colour = [\"#ffffff\", "
         "\"#6fa8ff\"]: at value 0.80 the flame is fainter and bluer (its size fixed).",
         (_start, fb(1, 0.8)), T0 + 1.5,
         {**conditions(regulate={"view": "picture", "instruction": "Cool the flame"}),
          "picture": PICTURE_COLOUR}),
    Shot("picture_null", "The picture for a volume without a value: it holds, the grey indicator "
         "shows under it.", (_start, fb(1, 0.2), fb(2, None)), T0 + 2.5,
         conditions(regulate={"view": "picture", "instruction": "Make the flame smaller"})),
    Shot("number", "view = \"number\": the value written with score.text and score.scale "
         "(\"{score} points\"), under the instruction.", (_start, fb(1, 0.6)), T0 + 1.5,
         conditions(regulate={"view": "number"})),
    Shot("number_null", "The number for a volume without a value: it holds, the grey indicator "
         "shows under it.", (_start, fb(1, 0.6), fb(2, None)), T0 + 2.5,
         conditions(regulate={"view": "number"})),
    Shot("tone", "tone = true with view = \"text\" (eyes closed): the screen shows the "
         "instruction only; each new value plays a tone whose pitch (and volume) follows it "
         "([display.tone]).", (_start, fb(1, 0.6)), T0 + 1.5,
         conditions(regulate={"view": "text", "tone": True,
                              "instruction": "Close your eyes and raise the tone"})),
)


FEEDBACK_DISPLAYS_DOC: list[str] = [
    "",
    "## Feedback that fits the design",
    "",
    "Each condition picks its display with `view` (`\"bar\"` by default; `\"gauge\"`, `\"picture\"`, "
    "`\"number\"`) and may add a tone (`tone = true`, for eyes-closed designs; with any view). "
    "Every display glides like the bar (`bar.glide_s`), shows the value the screen receives (success, "
    "whatever the block's direction) and, for a volume without a value, holds the last value with the "
    "bar's grey indicator under it (the tone stays silent). The settings of the shots above "
    "(`stimulus/docs.py`), with every key of the new tables at its default:",
    "",
    "```toml",
    "[display.conditions.regulate]",
    'view = "gauge"          # or "bar", "picture", "number", "fixation", "text"',
    "tone = false            # true: a tone at each new value of this condition",
    "",
    "[display.bar]",
    'target_label = "Goal"   # beside the target line and the gauge\'s target tick ("": none)',
    'baseline_label = "Rest" # beside the baseline marker and the gauge\'s baseline tick',
    "",
    "[display.gauge]",
    "radius_frac = 0.3       # of the window height",
    "offset_y_frac = -0.15   # the needle's pivot below the centre",
    "sweep_deg = 180         # value 0 at the arc's left end, 1 at its right end",
    "arc_width_px = 12",
    'arc_colour = "#3c3c3c"',
    "needle_width_px = 6     # the needle has the bar's fill colour (bar.fill, or the condition's bar_fill)",
    'hub_colour = "#c8c8c8"',
    "",
    "[display.picture]",
    'file = ""               # empty: the built-in flame, drawn by code',
    "height_frac = 0.5       # height at scale 1, fraction of the window",
    "offset_y_frac = -0.05",
    'anchor = "bottom"       # or "centre": what stays in place as it scales',
    "scale = [1.0, 0.3]      # at value 0, at value 1: the flame shrinks as success rises",
    "opacity = [1.0, 1.0]",
    'colour = ["#ffffff", "#ffffff"]  # multiplied into the image',
    "",
    "[display.tone]",
    "pitch_hz = [220.0, 880.0]  # at value 0, at value 1 (geometric: 0.5 is 440 Hz)",
    "volume = [0.5, 0.5]",
    "duration_s = 0.4           # each new value cuts the previous tone",
    "",
    "[display.score]          # also the number view: text and scale",
    'text = "{score} points"',
    "```",
    "",
    "`picture.file` is relative to the session TOML's folder and is checked when the screen starts. The "
    "built-in flame is computed by `stimulus.displays.picture.flame()` (three nested flame outlines, no "
    "image file in the repository); `python -m stimulus.displays.picture flame.png` writes it out as a "
    "starting point for a study's own picture.",
    "",
    "The tone uses PsychoPy's sound (`psychopy.sound.Sound`, the audio library of PsychoPy's "
    "preferences). It is opened when the screen starts: on a machine where PsychoPy cannot play sound, a "
    "config with `tone = true` stops the screen there with one message (exit status 2). It has no "
    "picture here (`tone.png` is the eyes-closed screen); `tests/test_stimulus_displays.py` checks its "
    "value -> pitch and volume mapping and that the sound object is re-tuned and played once per value.",
]
"""The part of ``docs/screens/README.md`` about the feedback displays (:mod:`stimulus.displays`)."""


class Renderer:
    """Draws shots with one window per display configuration (PsychoPy imported lazily)."""

    def __init__(self) -> None:
        self._screens: dict[str, Any] = {}

    def screen(self, cfg: DisplayConfig) -> Any:
        from stimulus.screen import FeedbackScreen

        key = cfg.model_dump_json()
        if key not in self._screens:
            self._screens[key] = FeedbackScreen(cfg)
        return self._screens[key]

    def render(self, cfg: DisplayConfig, scene: Scene) -> Any:
        """The frame of ``scene`` as an RGB array (rows from the top)."""
        screen = self.screen(cfg)
        screen.draw(scene)
        image = screen.grab()
        screen.flip()
        return image

    def shot(self, shot: Shot) -> Any:
        return self.render(shot.config(), shot.play()[1])

    def close(self) -> None:
        for screen in self._screens.values():
            screen.close()
        self._screens.clear()


def write_readme(folder: Path) -> None:
    lines = [
        "# The feedback screen, screen by screen",
        "",
        "Made by the code, not drawn by hand: `python -m stimulus.docs docs/screens` plays "
        "protocol messages into the real screen (`stimulus/docs.py`, catalogue `SHOTS`) and "
        "saves each frame. The tests check the same shots pixel by pixel "
        "(`tests/test_stimulus_render.py`).",
        "",
        "Display settings of these pictures (a `[display]` table of a session TOML):",
        "",
        "```toml",
        "[display]",
        "size = [640, 480]",
        "",
        "[display.conditions.rest]",
        'view = "fixation"',
        'instruction = "Relax and look at the cross"',
        'colour = "#8fb8ff"',
        "",
        "[display.conditions.regulate]",
        'instruction = "Raise the bar"',
        'colour = "#ffd27f"',
        "",
        "[display.conditions.count]",
        'view = "text"',
        'instruction = "Count backwards from 100"',
        'colour = "#b0ffb0"',
        "",
        "[display.score]",
        'text = "{score} points"',
        'reward_text = "Well done!"',
        "reward_threshold = 0.6",
        "```",
        "",
        "| file | screen |",
        "|---|---|",
    ]
    lines += [f"| [`{s.name}.png`]({s.name}.png) | {s.caption} |" for s in SHOTS]
    lines += FEEDBACK_DISPLAYS_DOC
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stimulus.docs", description=__doc__.split("\n")[0])
    p.add_argument("folder", nargs="?", type=Path, default=Path("docs/screens"))
    args = p.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        from stimulus.xvfb import display_prefix

        cmd = display_prefix() + [sys.executable, "-m", "stimulus.docs", str(args.folder)]
        return subprocess.call(cmd)
    from PIL import Image

    args.folder.mkdir(parents=True, exist_ok=True)
    renderer = Renderer()
    try:
        for shot in SHOTS:
            Image.fromarray(renderer.shot(shot)).save(args.folder / f"{shot.name}.png")
    finally:
        renderer.close()
    write_readme(args.folder)
    print(f"{len(SHOTS)} screens written to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
