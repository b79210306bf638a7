"""Every screen and state, drawn in-process on a private Xvfb and checked pixel by pixel.

The shots are :data:`stimulus.docs.SHOTS` (the same that make ``docs/screens``)
plus variations; scenes are composed at explicit times, so glides are checked
without any frame counting or sleeping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest

from rtnf.wire.display import parse_display
from stimulus.docs import DOC_DISPLAY, SHOTS, T0, Shot, fb, message
from stimulus.geometry import (
    BAR_BG,
    BAR_FILL,
    BASELINE_COLOR,
    FIXATION_COLOR,
    LOST_COLOR,
    NULL_COLOR,
    TARGET_COLOR,
    TEXT_COLOR,
    bar_geometry,
    to_image_col,
    to_image_row,
)

pytestmark = [
    pytest.mark.display,
    pytest.mark.skipif(importlib.util.find_spec("psychopy") is None,
                       reason="PsychoPy is not installed (pip install rtnf[display])"),
    pytest.mark.skipif(shutil.which("Xvfb") is None,
                       reason="Xvfb not found: install the Debian package xvfb"),
]

SIZE = tuple(DOC_DISPLAY["size"])
SHOT = {s.name: s for s in SHOTS}
START = SHOTS[1].messages[0]
REGULATE = parse_display(DOC_DISPLAY).conditions["regulate"].colour
REST = parse_display(DOC_DISPLAY).conditions["rest"].colour
COUNT = parse_display(DOC_DISPLAY).conditions["count"].colour


@pytest.fixture(scope="module")
def renderer():
    """A Renderer on a private Xvfb (DISPLAY set for this module only)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    mp = pytest.MonkeyPatch()
    mp.setenv("DISPLAY", f":{number}")
    from stimulus.docs import Renderer

    r = Renderer()
    yield r
    r.close()
    mp.undo()
    proc.terminate()
    proc.wait(10)


def shot(name: str, messages=None, now=None, **display) -> Shot:
    base = SHOT.get(name, SHOT["bar"])
    return replace(base, messages=base.messages if messages is None else tuple(messages),
                   now=base.now if now is None else now, display=display or base.display)


def count(img: np.ndarray, colour, rows=slice(None)) -> int:
    return int(np.all(img[rows] == colour, axis=2).sum())


def level(img: np.ndarray, fill=BAR_FILL, bar=None) -> int:
    """Fill height in pixels along the bar's central column; only fill and background inside."""
    g = bar_geometry(SIZE, bar)
    col = to_image_col(g.left + g.width / 2, SIZE)
    column = img[to_image_row(g.top, SIZE):to_image_row(g.bottom, SIZE), col]
    is_fill = np.all(column == fill, axis=1)
    is_bg = np.all(column == BAR_BG, axis=1)
    assert np.all(is_fill | is_bg), "unexpected colours in the bar's column"
    n_bg = int(is_bg.sum())
    assert not is_fill[:n_bg].any() and not is_bg[n_bg:].any(), "fill is not at the bottom"
    return int(is_fill.sum())


TOP = slice(0, SIZE[1] // 6)
BOTTOM = slice(SIZE[1] * 9 // 10, SIZE[1])


# --------------------------------------------------------------------------- #
# Thermometer
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("value", [0.0, 0.3, 0.75, 1.0])
def test_bar_height_for_values(renderer, value):
    img = renderer.shot(shot("bar", [START, fb(1, value)]))
    assert level(img) == round(value * bar_geometry(SIZE).height)
    assert count(img, REGULATE, TOP) > 20  # the condition's instruction, in its colour


def test_target_line_and_baseline_marker(renderer):
    g = bar_geometry(SIZE)
    img = renderer.shot(SHOT["bar"])
    beside = [to_image_col(g.left - 20, SIZE), to_image_col(g.left + g.width + 20, SIZE)]
    target_row = to_image_row(g.level_y(0.75), SIZE) - 1
    baseline_row = to_image_row(g.level_y(1 / 3), SIZE) - 1  # scale_psc [-1, 2]: 0 % at 1/3
    for col in beside:
        assert tuple(img[target_row, col]) == TARGET_COLOR
        assert tuple(img[baseline_row, col]) == BASELINE_COLOR
    off = renderer.shot(shot("bar", bar={"target": "none", "baseline": "none"}))
    assert count(off, TARGET_COLOR, slice(target_row - 3, target_row + 3)) == 0
    assert count(off, BASELINE_COLOR) == 0
    fixed = renderer.shot(shot("bar", bar={"baseline": 0.5}))
    assert tuple(fixed[to_image_row(g.level_y(0.5), SIZE) - 1, beside[0]]) == BASELINE_COLOR


def test_bar_geometry_and_fill_colour_follow_the_config(renderer):
    bar = {"width_px": 40, "height_frac": 0.5, "fill": "#00c000"}
    cfg = parse_display({**DOC_DISPLAY, "bar": bar})
    img = renderer.shot(shot("bar", [START, fb(1, 0.5)], bar=bar))
    assert level(img, fill=(0, 192, 0), bar=cfg.bar) == round(0.5 * round(0.5 * SIZE[1]))
    # Per-condition fill colour overrides the bar's.
    conditions = {**DOC_DISPLAY["conditions"],
                  "regulate": {"instruction": "Up", "bar_fill": [200, 0, 200]}}
    img = renderer.shot(shot("bar", [START, fb(1, 0.5)], conditions=conditions))
    assert level(img, fill=(200, 0, 200)) == round(0.5 * bar_geometry(SIZE).height)


def test_glide_shows_intermediate_frames(renderer):
    g = bar_geometry(SIZE)
    messages = [START, fb(1, 0.2), fb(2, 0.8)]  # 0.8 received at T0 + 2, glide 0.3 s
    heights = [level(renderer.shot(shot("bar", messages, T0 + 2 + dt))) for dt in
               (0.0, 0.05, 0.1, 0.2, 0.3, 1.0)]
    old, new = round(0.2 * g.height), round(0.8 * g.height)
    assert heights[0] == old and heights[-2] == heights[-1] == new
    assert all(old < h < new for h in heights[1:4])  # in between, not a jump
    assert heights == sorted(heights)
    # ease-out: more than half way at a third of the time.
    assert heights[2] - old > (new - old) / 2
    linear = renderer.shot(shot("bar", messages, T0 + 2.15, bar={"easing": "linear"}))
    assert abs(level(linear) - (old + new) / 2) <= 1
    jump = renderer.shot(shot("bar", messages, T0 + 2.0001, bar={"glide_s": 0}))
    assert level(jump) == new


def test_null_value_holds_bar_with_quiet_indicator(renderer):
    img = renderer.shot(SHOT["bar_null"])
    g = bar_geometry(SIZE)
    assert level(img) == round(0.6 * g.height)
    below = slice(to_image_row(g.bottom, SIZE) + 4, to_image_row(g.bottom, SIZE) + 40)
    assert count(img, NULL_COLOR, below) > 0
    assert count(renderer.shot(SHOT["bar"]), NULL_COLOR, below) == 0


def test_older_feedback_is_never_drawn(renderer):
    img = renderer.shot(shot("bar", [START, fb(5, 0.7), fb(4, 0.1, t=T0 + 6)], T0 + 7))
    assert level(img) == round(0.7 * bar_geometry(SIZE).height)


# --------------------------------------------------------------------------- #
# Other views
# --------------------------------------------------------------------------- #
def test_fixation_cross_for_the_baseline_condition(renderer):
    img = renderer.shot(SHOT["fixation"])
    assert count(img, BAR_BG) < 50  # no thermometer (a few anti-aliased text pixels)
    cy, cx = SIZE[1] // 2, SIZE[0] // 2
    centre = img[cy - 25:cy + 25, cx - 25:cx + 25]
    assert count(centre, FIXATION_COLOR) == 40 * 4 * 2 - 4 * 4
    assert count(img, REST, TOP) > 20
    # The default for the run's baseline (no view configured) is the cross too.
    conditions = {"regulate": DOC_DISPLAY["conditions"]["regulate"]}
    img = renderer.shot(shot("fixation", conditions=conditions))
    assert count(img[cy - 25:cy + 25, cx - 25:cx + 25], FIXATION_COLOR) == 40 * 4 * 2 - 4 * 4
    # ... and a condition can show the bar instead.
    conditions = {"rest": {"view": "bar"}}
    assert count(renderer.shot(shot("fixation", conditions=conditions)), BAR_BG) > 1000


def test_instruction_only_view(renderer):
    img = renderer.shot(SHOT["instruction_only"])
    assert count(img, BAR_BG) < 50 and count(img, FIXATION_COLOR, slice(SIZE[1] // 4, None)) == 0
    assert count(img, COUNT, TOP) > 20


def test_intermittent_score_screen(renderer):
    s = SHOT["score"]
    cfg = s.config()
    img = renderer.shot(s)
    middle = slice(SIZE[1] // 4, SIZE[1] * 3 // 4)
    assert count(img, BAR_BG) < 50
    assert count(img, cfg.score.colour, middle) > 200  # "82 points", large
    assert count(img, cfg.score.reward_colour, middle) > 20  # "Well done!"
    state, scene = s.play()
    assert scene.view == "score" and scene.score_text == "82 points"
    assert scene.reward_text == "Well done!"
    # Below the threshold: no reward text.
    low = shot("score", [START, fb(9, 0.3, kind="intermittent")])
    assert count(renderer.shot(low), cfg.score.reward_colour) == 0
    # After score.duration_s the condition's view is back.
    after = shot("score", now=T0 + 9 + cfg.score.duration_s + 0.01)
    assert count(renderer.shot(after), BAR_BG) > 1000
    # A reward text in the message wins; its display_s too.
    custom = shot("score", [START, fb(9, 0.1, kind="intermittent", reward="Bonus!",
                                      display_s=5.0)], T0 + 9 + 4)
    assert custom.play()[1].reward_text == "Bonus!"
    assert count(renderer.shot(custom), cfg.score.reward_colour) > 20
    null = renderer.shot(SHOT["score_null"])
    assert count(null, cfg.score.colour, middle) > 50 and count(null, BAR_BG) < 50


@pytest.mark.parametrize("name, bar", [("waiting", False), ("ended", True), ("ended_text", False)])
def test_waiting_and_ended(renderer, name, bar):
    img = renderer.shot(SHOT[name])
    assert count(img, TEXT_COLOR) > 50
    assert (count(img, BAR_BG) > 1000) == bar
    if bar:
        assert level(img) == round(0.45 * bar_geometry(SIZE).height)


def test_connection_lost_notice(renderer):
    img = renderer.shot(SHOT["connection_lost"])
    assert count(img, LOST_COLOR, BOTTOM) > 50
    assert level(img) == round(0.6 * bar_geometry(SIZE).height)  # the held screen
    assert count(renderer.shot(SHOT["bar"]), LOST_COLOR) == 0


def test_mirrored_layout(renderer):
    plain = renderer.shot(SHOT["bar"])
    mirrored = renderer.shot(SHOT["mirrored"])
    g = bar_geometry(SIZE)
    flipped = plain[:, ::-1]
    # Shapes: exactly mirrored (the bar is centred, its edges on whole pixels).
    rows = slice(to_image_row(g.top, SIZE) - 10, to_image_row(g.bottom, SIZE) + 10)
    assert np.array_equal(mirrored[rows], flipped[rows])
    # Text: reads right to left (up to a one-pixel shift of the glyphs).
    text_plain, text_mirror = plain[TOP], mirrored[TOP]
    assert not np.array_equal(text_mirror, text_plain)
    best = min(np.mean(np.any(np.roll(text_mirror, s, axis=1) != text_plain[:, ::-1], axis=2))
               for s in (-1, 0, 1))
    assert best < 0.1 * np.mean(np.any(text_mirror != text_plain, axis=2))


def test_docs_screens_are_written(renderer, tmp_path):
    from stimulus import docs

    assert docs.main([str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text()
    for s in SHOTS:
        assert (tmp_path / f"{s.name}.png").stat().st_size > 1000
        assert f"({s.name}.png)" in readme


def test_run_start_after_end_message(renderer):
    """A message from a new run after the end shows the new run (fresh bar)."""
    messages = [START, fb(1, 0.9), message("run", T0 + 2, event="end"),
                ("run", {**START[1], "run_id": "next"}, T0 + 3),
                ("feedback", {**fb(0, 0.1)[1], "run_id": "next"}, T0 + 4)]
    img = renderer.shot(shot("bar", messages, T0 + 5))
    assert level(img) == round(0.1 * bar_geometry(SIZE).height)


# --------------------------------------------------------------------------- #
# The run's start and end: what the participant sees when nothing is wrong
# --------------------------------------------------------------------------- #
MIDDLE = slice(SIZE[1] // 3, SIZE[1] * 2 // 3)


def heartbeat(t: float, state: str, last_index: int | None = None):
    return message("heartbeat", t, source="rtnf", state=state, last_index=last_index,
                   n_volumes=100)


# What rtnf publishes when a run ends (rtnf/run/session.py, _RunLoop.finish): the
# run message "end" (last volume) or "abort" with the reason "stopped by the
# operator" (Ctrl-C), then a heartbeat with state "ended"; then it is quiet.
ENDS = {
    "end": [message("run", T0 + 2, event="end", reason=None),
            heartbeat(T0 + 2, "ended", 1)],
    "ctrl-c": [message("run", T0 + 2, event="abort", reason="stopped by the operator"),
               heartbeat(T0 + 2, "ended", 1)],
    "end message only": [message("run", T0 + 2, event="end")],
    "heartbeat ended only": [heartbeat(T0 + 2, "ended", 1)],
}


@pytest.mark.parametrize("end", list(ENDS))
@pytest.mark.parametrize("name", ["ended", "ended_text"])
def test_normal_end_shows_only_the_closing_text(renderer, name, end):
    """Silence after the end is the normal end: no "connection lost", however long it lasts."""
    cfg = SHOT[name].config()
    messages = [*SHOT[name].messages[:-1], *ENDS[end]]
    closing = renderer.shot(shot(name, messages, T0 + 2.5))
    assert count(closing, TEXT_COLOR, TOP if name == "ended" else MIDDLE) > 50  # the end text
    assert count(closing, LOST_COLOR) == 0
    for after in (cfg.heartbeat_timeout_s + 0.5, 10 * cfg.heartbeat_timeout_s, 3600.0):
        s = shot(name, messages, T0 + 2 + after)
        img = renderer.shot(s)
        assert count(img, LOST_COLOR) == 0
        assert np.array_equal(img, closing)  # the closing screen, unchanged
        state, scene = s.play()
        assert state.phase == "ended" and scene.view == "ended" and not scene.lost


@pytest.mark.parametrize("case", ["running", "get ready"])
def test_connection_lost_when_heartbeats_stop_during_the_run(renderer, case):
    """rtnf silent before the run ended (killed, machine down): the red notice shows."""
    timeout = SHOT["bar"].config().heartbeat_timeout_s
    if case == "running":
        messages = [START, fb(1, 0.6), heartbeat(T0 + 1.5, "running", 1), heartbeat(T0 + 2.5, "running", 1)]
    else:  # rtnf died after the run's start, before the first volume
        messages = [START, heartbeat(T0 + 0.5, "waiting"), heartbeat(T0 + 2.5, "waiting")]
    quiet = renderer.shot(shot("bar", messages, T0 + 2.5 + timeout - 0.1))
    assert count(quiet, LOST_COLOR) == 0
    img = renderer.shot(shot("bar", messages, T0 + 2.5 + timeout + 0.1))
    assert count(img, LOST_COLOR, BOTTOM) > 50
    if case == "running":
        assert level(img) == round(0.6 * bar_geometry(SIZE).height)  # over the held bar
    else:
        assert count(img, BAR_BG) < 50 and count(img, TEXT_COLOR, MIDDLE) > 50  # over "Get ready"


# The run started, its first volume has not come: rtnf's run message, or (a
# screen started late, before the start message is repeated) its heartbeat
# "waiting" of the run, or both.
STARTS = {
    "run start": [START],
    "heartbeat waiting": [heartbeat(T0, "waiting")],
    "run start and heartbeats": [START, heartbeat(T0 + 0.1, "waiting"), heartbeat(T0 + 1.1, "waiting")],
    "heartbeat running": [heartbeat(T0, "running", 3)],  # joined mid-run, between two volumes
}


@pytest.mark.parametrize("start", list(STARTS))
def test_get_ready_between_the_run_start_and_its_first_volume(renderer, start):
    s = shot("get_ready", STARTS[start], T0 + 1.5)
    assert s.play()[1].view == "get_ready"
    img = renderer.shot(s)
    assert count(img, BAR_BG) < 50 and count(img, BAR_FILL) == 0  # no empty thermometer
    assert count(img, TEXT_COLOR, MIDDLE) > 50  # text in the middle ...
    # ... which is texts.get_ready: drawn like the waiting text, its own words.
    same_words = renderer.shot(shot("waiting", texts={"waiting": "Get ready"}))
    assert np.array_equal(img, same_words)
    assert not np.array_equal(img, renderer.shot(SHOT["waiting"]))
    assert count(renderer.shot(shot("get_ready", STARTS[start], T0 + 1.5,
                                    texts={"get_ready": ""})), TEXT_COLOR) == 0


def test_get_ready_text_is_configurable_and_gives_way_to_the_first_volume(renderer):
    default = renderer.shot(SHOT["get_ready"])
    custom = renderer.shot(shot("get_ready", texts={"get_ready": "Keep still, the run begins"}))
    assert count(custom, TEXT_COLOR, MIDDLE) > count(default, TEXT_COLOR, MIDDLE)  # longer text
    assert count(custom, BAR_BG) < 50
    # The first volume shows its condition's view: the bar, or the baseline's cross.
    first = renderer.shot(shot("get_ready", [START, fb(1, 0.6)], T0 + 1.5))
    assert level(first) == round(0.6 * bar_geometry(SIZE).height)
    assert count(first, REGULATE, TOP) > 20
    rest = renderer.shot(shot("get_ready", [START, fb(1, None, condition="rest", reason="baseline")],
                              T0 + 1.5))
    assert count(rest, BAR_BG) < 50 and count(rest, REST, TOP) > 20
