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
)


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
