"""Feedback that fits the design (issue 17, point 3): gauge, picture, number, tone, mark labels.

Rendering tests draw the shots of :data:`stimulus.docs.SHOTS` (the same that
make ``docs/screens``) and variations on a private Xvfb, and measure the frame
against :mod:`stimulus.displays.geometry`: the needle's angle, the picture's
size, opacity and colour, the labels' pixels. Each would fail if the display
ignored the value. The tone has no audio device here: its value -> pitch and
volume mapping and the driving of the sound object are tested with a
recording stand-in for PsychoPy's ``sound.Sound``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rtnf.wire.display import DisplayConfig, DisplayConfigError, parse_display
from stimulus.displays.geometry import (
    PictureGeometry,
    bar_label,
    gauge_geometry,
    number_y,
    picture_geometry,
    picture_look,
    score_height,
    text_height,
)
from stimulus.displays.picture import flame, resolve_picture
from stimulus.displays.tone import ToneFollower, TonePlayer, Tones, ToneUnavailable, tone_for
from stimulus.docs import DOC_DISPLAY, SHOTS, T0, Shot, conditions, fb, message
from stimulus.geometry import (
    BASELINE_COLOR,
    NULL_COLOR,
    TARGET_COLOR,
    bar_geometry,
    to_image_col,
    to_image_row,
)
from stimulus.link import ScreenState

SIZE = tuple(DOC_DISPLAY["size"])
SHOT = {s.name: s for s in SHOTS}
START = SHOT["bar"].messages[0]
FILL = DisplayConfig().bar.fill
BG = DisplayConfig().background
GAUGE = {"view": "gauge"}
PICTURE = {"view": "picture"}
NUMBER = {"view": "number"}

def display_test(fn):
    """Marks of the tests that draw on Xvfb."""
    for mark in (
        pytest.mark.display,
        pytest.mark.skipif(importlib.util.find_spec("psychopy") is None,
                           reason="PsychoPy is not installed (pip install rtnf[display])"),
        pytest.mark.skipif(shutil.which("Xvfb") is None,
                           reason="Xvfb not found: install the Debian package xvfb"),
    ):
        fn = mark(fn)
    return fn


RENDER_CHILD = """
import os, pickle, sys
out = os.fdopen(os.dup(1), "wb")  # the frames go here; anything PsychoPy prints goes to stderr
os.dup2(2, 1)
from stimulus.docs import Renderer
renderer = Renderer()
while True:
    try:
        shot = pickle.load(sys.stdin.buffer)
    except EOFError:
        break
    try:
        result = renderer.shot(shot)
    except Exception as exc:
        result = RuntimeError(f"{type(exc).__name__}: {exc}")
    pickle.dump(result, out)
    out.flush()
renderer.close()
"""


class ChildRenderer:
    """:class:`stimulus.docs.Renderer` in a child process on its own Xvfb.

    pyglet keeps one X connection per process: a second Xvfb in the test
    process (tests/test_stimulus_render.py starts one) would leave it without
    a GL context. A child process keeps every module independent, in any order.
    """

    def __init__(self, display: str, log) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RENDER_CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log,
                                     env={**os.environ, "DISPLAY": display},
                                     cwd=Path(__file__).resolve().parent.parent)

    def shot(self, shot: Shot) -> np.ndarray:
        pickle.dump(shot, self.proc.stdin)
        self.proc.stdin.flush()
        try:
            result = pickle.load(self.proc.stdout)
        except EOFError:
            raise RuntimeError("the rendering process died (see its log)") from None
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    """A renderer in a child process on a private Xvfb."""
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
    log_path = tmp_path_factory.mktemp("render") / "child.log"
    with open(log_path, "wb") as log:
        r = ChildRenderer(f":{number}", log)
        try:
            yield r
        finally:
            r.close()
            proc.terminate()
            proc.wait(10)


def shot(messages, now: float = T0 + 1.5, view: dict | None = None, **display) -> Shot:
    """A shot of the condition "regulate" shown with ``view`` (its keys) after ``messages``."""
    if view is not None:
        display = {**conditions(regulate=view), **display}
    return replace(SHOT["bar"], name="test", messages=tuple(messages), now=now, display=display)


def pixels(img: np.ndarray, colour, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """x and y (origin at the window centre, y up) of the pixel centres of exactly ``colour``."""
    r, c = np.nonzero(np.all(img[rows] == colour, axis=2))
    r = r + (rows.start or 0)
    return c + 0.5 - SIZE[0] / 2.0, SIZE[1] / 2.0 - (r + 0.5)


def count_in(img: np.ndarray, colour, x0: float, x1: float, y0: float, y1: float) -> int:
    """Pixels of ``colour`` in the box x0..x1, y0..y1 (window-centre coordinates)."""
    rows = slice(to_image_row(max(y0, y1), SIZE), to_image_row(min(y0, y1), SIZE))
    cols = slice(to_image_col(min(x0, x1), SIZE), to_image_col(max(x0, x1), SIZE))
    return int(np.all(img[rows, cols] == colour, axis=2).sum())


def text_in(img: np.ndarray, colour, x0: float, x1: float, y0: float, y1: float) -> int:
    """Pixels of text in ``colour`` in the box: ``colour`` at 60-100 % coverage over the black
    background (small glyphs are mostly anti-aliased edges)."""
    rows = slice(to_image_row(max(y0, y1), SIZE), to_image_row(min(y0, y1), SIZE))
    cols = slice(to_image_col(min(x0, x1), SIZE), to_image_col(max(x0, x1), SIZE))
    box = img[rows, cols].astype(float)
    c = np.asarray(colour, dtype=float)
    k = box @ c / (c @ c)  # coverage of each pixel if it is colour over black
    fits = np.all(np.abs(box - k[..., None] * c) <= 6, axis=2)
    return int((fits & (k >= 0.6)).sum())


def needle_angle(img: np.ndarray, mirror: bool = False, colour=FILL) -> float:
    """Direction of the needle (degrees clockwise from up), from its pixels beyond the hub."""
    g = gauge_geometry(SIZE, None, mirror)
    x, y = pixels(img, colour)
    x, y = x - g.pivot[0], y - g.pivot[1]
    far = np.hypot(x, y) > g.hub_radius + 3
    assert far.sum() > 100, "no needle on the frame"
    assert np.hypot(x, y)[far].max() <= g.needle_length + 2  # nothing of that colour beyond the needle
    return float(np.degrees(np.arctan2(np.median(x[far]), np.median(y[far]))))


def bbox(img: np.ndarray, rows: slice) -> tuple[float, float, float, float]:
    """Extent (left, right, bottom, top edges) of the non-background pixels within ``rows``."""
    mask = np.any(img[rows] != BG, axis=2)
    r, c = np.nonzero(mask)
    r = r + rows.start
    return (c.min() - SIZE[0] / 2.0, c.max() + 1 - SIZE[0] / 2.0,
            SIZE[1] / 2.0 - (r.max() + 1), SIZE[1] / 2.0 - r.min())


BELOW_TITLE = slice(SIZE[1] // 6, None)


# --------------------------------------------------------------------------- #
# [display]: the new keys, validated like the rest
# --------------------------------------------------------------------------- #
def test_new_keys_parse_per_condition():
    cfg = parse_display({
        "conditions": {"up": {"view": "gauge"}, "down": {"view": "picture", "tone": True},
                       "count": {"view": "number"}},
        "bar": {"target_label": "Goal", "baseline_label": "Rest"},
        "gauge": {"sweep_deg": 240, "arc_colour": "#101010"},
        "picture": {"file": "flame.png", "scale": [1, 0.25], "opacity": [1, 0.5],
                    "colour": ["#ffffff", [0, 128, 255]], "anchor": "centre"},
        "tone": {"pitch_hz": [300, 600], "volume": [0.2, 0.9], "duration_s": 1},
    })
    assert [cfg.condition(c).view for c in ("up", "down", "count", "other")] == [
        "gauge", "picture", "number", None]
    assert cfg.condition("down").tone and not cfg.condition("up").tone
    assert cfg.picture.colour == [(255, 255, 255), (0, 128, 255)] and cfg.picture.scale == [1.0, 0.25]
    assert cfg.tone.pitch_hz == [300.0, 600.0] and cfg.gauge.sweep_deg == 240.0
    # Defaults: no labels, no tone, the flame shrinking as the value rises.
    d = DisplayConfig()
    assert d.bar.target_label == d.bar.baseline_label == "" and not d.condition("x").tone
    assert d.picture.file == "" and d.picture.scale[0] > d.picture.scale[1]


@pytest.mark.parametrize("table, message", [
    ({"conditions": {"up": {"view": "dial"}}},
     "'display.conditions.up.view': 'dial' (str). Input should be 'bar', 'gauge', 'picture', 'number'"),
    ({"conditions": {"up": {"tone": "yes"}}}, "'display.conditions.up.tone': 'yes' (str)"),
    ({"picture": {"scale": 0.5}}, "'display.picture.scale': 0.5 (float). Allowed: a list of two: "
                                  "[at value 0, at value 1]"),
    ({"picture": {"scale": [1, 0.5, 0.2]}}, "'display.picture.scale': [1, 0.5, 0.2] (list). Allowed: a list of two"),
    ({"picture": {"opacity": [1, 1.5]}}, "'display.picture.opacity[1]': 1.5 (float)"),
    ({"picture": {"colour": ["#ffffff", "blue"]}}, "'display.picture.colour[1]': 'blue' (str). Allowed: '#rrggbb'"),
    ({"picture": {"anchor": "top"}}, "'display.picture.anchor': 'top' (str). Input should be 'bottom' or 'centre'"),
    ({"tone": {"pitch_hz": [20, 880]}}, "'display.tone.pitch_hz[0]': 20 (int). Input should be greater than "
                                        "or equal to 50"),
    ({"tone": {"volume": [0, 2]}}, "'display.tone.volume[1]': 2 (int)"),
    ({"gauge": {"sweep_deg": 360}}, "'display.gauge.sweep_deg': 360 (int)"),
    ({"bar": {"target_label": "x" * 41}}, "'display.bar.target_label'"),
    ({"gauge": {"needle": 3}}, "unknown key 'display.gauge.needle'. Allowed keys here: radius_frac"),
])
def test_bad_values_give_one_clear_message(table, message):
    with pytest.raises(DisplayConfigError) as exc:
        parse_display(table, "s.toml")
    text = str(exc.value)
    assert text.startswith("s.toml: invalid value") or text.startswith("s.toml: unknown key")
    assert message in text and "\n" not in text


def test_picture_file_is_resolved_beside_the_config_and_checked(tmp_path):
    from PIL import Image

    from stimulus.cli import build_parser, display_config

    (tmp_path / "pics").mkdir()
    Image.new("RGBA", (8, 12), (200, 0, 0, 255)).save(tmp_path / "pics" / "flame.png")
    toml = tmp_path / "session.toml"
    toml.write_text('[display.picture]\nfile = "pics/flame.png"\n'
                    '[display.conditions.down]\nview = "picture"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)  # relative to the TOML's folder, not to where the screen starts
    try:
        cfg = display_config(build_parser().parse_args(["--config", str(toml)]))
    finally:
        os.chdir(cwd)
    assert Path(cfg.picture.file) == (tmp_path / "pics" / "flame.png").resolve()
    toml.write_text('[display.picture]\nfile = "missing.png"\n')
    with pytest.raises(DisplayConfigError) as exc:
        display_config(build_parser().parse_args(["--config", str(toml)]))
    assert "invalid value for 'display.picture.file': 'missing.png'" in str(exc.value)
    assert "Allowed: an image file" in str(exc.value)
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(DisplayConfigError, match="cannot read .* as an image"):
        resolve_picture(parse_display({"picture": {"file": "not_an_image.png"}}), toml)
    assert resolve_picture(DisplayConfig(), toml) == DisplayConfig()  # the built-in flame: nothing to check


def test_builtin_flame_is_made_by_code():
    img = flame()
    assert img.dtype == np.uint8 and img.shape == (256, 176, 4)
    alpha = img[..., 3]
    assert alpha[0].max() == 0 and alpha[:, 0].max() == 0  # transparent around it
    assert alpha[200, 88] == 255 and tuple(img[200, 88, :3]) == (255, 226, 128)  # the pale core
    assert np.array_equal(flame(), img)  # the same every time


# --------------------------------------------------------------------------- #
# Tone: value -> pitch and volume, and the sound object driven once per value
# --------------------------------------------------------------------------- #
class RecordingSound:
    """Stands in for psychopy.sound.Sound: records what the screen asks of it."""

    def __init__(self, hz: float, secs: float, volume: float) -> None:
        self.calls: list[tuple] = [("init", hz, secs, volume)]

    def stop(self):
        self.calls.append(("stop",))

    def setSound(self, value, secs=0.5):  # noqa: N802
        self.calls.append(("setSound", value, secs))

    def setVolume(self, newVol):  # noqa: N802
        self.calls.append(("setVolume", newVol))

    def play(self):
        self.calls.append(("play",))


def test_tone_pitch_and_volume_follow_the_value():
    tone = parse_display({"tone": {"pitch_hz": [220, 880], "volume": [0.2, 1.0]}}).tone
    assert tone_for(tone, 0.0) == pytest.approx((220.0, 0.2))
    assert tone_for(tone, 0.5) == pytest.approx((440.0, 0.6))  # one octave up: geometric
    assert tone_for(tone, 1.0) == pytest.approx((880.0, 1.0))
    assert tone_for(tone, 0.25)[0] == pytest.approx(220 * 2 ** 0.5)
    assert tone_for(tone, 0.75)[0] == pytest.approx(220 * 2 ** 1.5)
    assert tone_for(tone, 1.7) == tone_for(tone, 1.0) and tone_for(tone, -1) == tone_for(tone, 0)
    falling = parse_display({"tone": {"pitch_hz": [880, 220]}}).tone  # pitch falls as success rises
    assert tone_for(falling, 0.75)[0] < tone_for(falling, 0.25)[0]


def tone_state_and_tones(**tone):
    cfg = parse_display({**DOC_DISPLAY, **conditions(regulate={"view": "text", "tone": True}),
                         "tone": {"pitch_hz": [220, 880], "volume": [0.2, 1.0], **tone}})
    sounds: list[RecordingSound] = []

    def make(hz, secs, volume):
        sounds.append(RecordingSound(hz, secs, volume))
        return sounds[-1]

    tones = Tones.open(cfg, make)
    assert tones is not None and len(sounds) == 1  # opened once, when the screen starts
    return ScreenState(cfg.heartbeat_timeout_s), tones, sounds[0]


def test_tone_is_played_for_each_new_value_of_a_tone_condition():
    state, tones, sound = tone_state_and_tones(duration_s=0.5)
    sound.calls.clear()

    def feed(*msg):
        state.handle(*msg)
        return tones.update(state)

    assert feed(*START) is None  # no value yet
    cue = feed(*fb(1, 0.25))
    assert cue is not None and cue.hz == pytest.approx(220 * 2 ** 0.5) and cue.volume == pytest.approx(0.4)
    assert sound.calls == [("stop",), ("setSound", pytest.approx(311.127, abs=1e-3), 0.5),
                           ("setVolume", pytest.approx(0.4)), ("play",)]
    assert tones.update(state) is None  # the same message: once only (the frame loop calls every frame)
    feed(*fb(2, 0.75))
    assert sound.calls[-3:] == [("setSound", pytest.approx(622.254, abs=1e-3), 0.5),
                                ("setVolume", pytest.approx(0.8)), ("play",)]
    n = len(sound.calls)
    assert feed(*fb(3, None)) is None and len(sound.calls) == n  # no value: silence
    assert feed(*fb(4, 0.6, condition="rest")) is None and len(sound.calls) == n  # not a tone condition
    assert feed(*fb(5, 0.5, condition="count")) is None
    assert [c.index for c in tones.player.played] == [1, 2]
    cue = feed(*fb(6, 0.5))  # back in the tone condition
    assert cue is not None and cue.hz == pytest.approx(440.0)
    feed(*message("run", T0 + 7, event="end"))
    assert feed(*fb(7, 0.9, t=T0 + 8)) is None  # after the run: nothing


def test_intermittent_scores_sound_too():
    state, tones, sound = tone_state_and_tones()
    state.handle(*START)
    state.handle(*fb(9, 1.0, kind="intermittent", display_s=2.0))
    cue = tones.update(state)
    assert cue is not None and cue.hz == pytest.approx(880.0) and ("play",) in sound.calls


def test_no_tone_condition_opens_no_sound():
    opened = []
    assert Tones.open(parse_display(DOC_DISPLAY), lambda *a: opened.append(a)) is None and opened == []
    assert not ToneFollower.wanted(parse_display(DOC_DISPLAY))


def test_a_failing_sound_is_logged_and_the_screen_goes_on(caplog):
    class Broken(RecordingSound):
        def play(self):
            raise RuntimeError("device unplugged")

    player = TonePlayer(DisplayConfig().tone, Broken)
    state, tones, _ = tone_state_and_tones()
    tones.player = player
    state.handle(*START)
    state.handle(*fb(1, 0.5))
    with caplog.at_level(logging.ERROR):
        tones.update(state)
        state.handle(*fb(2, 0.6))
        tones.update(state)
    assert player.n_failed == 2 and player.played == []
    assert sum("device unplugged" in r.getMessage() for r in caplog.records) == 1  # said once


def test_screen_without_sound_exits_with_one_message(monkeypatch, tmp_path, caplog):
    """tone = true on a machine where PsychoPy cannot play sound: exit 2 before any window or socket."""
    from stimulus import cli
    from stimulus.displays import tone as tone_module

    def no_sound(hz, secs, volume):
        raise ToneUnavailable("a condition of [display] has tone = true, but PsychoPy cannot play sound "
                              "on this machine (DependencyError: no audio library)")

    monkeypatch.setattr(tone_module, "psychopy_sound", no_sound)
    monkeypatch.setenv("DISPLAY", ":12345")  # never opened: the tone fails first
    toml = tmp_path / "s.toml"
    toml.write_text('[display.conditions.listen]\nview = "text"\ntone = true\n')
    with caplog.at_level(logging.ERROR, logger="stimulus"):
        code = cli.run(cli.build_parser().parse_args(["--config", str(toml)]))
    assert code == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "a condition of [display] has tone = true, but PsychoPy cannot play sound on this machine "
        "(DependencyError: no audio library)"]


def test_psychopy_sound_failure_is_one_clear_error():
    """What this machine says (no audio device in the test container): ToneUnavailable, never another error."""
    if importlib.util.find_spec("psychopy") is None:
        pytest.skip("PsychoPy is not installed")
    from stimulus.displays.tone import psychopy_sound

    try:
        sound = psychopy_sound(440.0, 0.05, 0.0)
    except ToneUnavailable as exc:
        assert "tone = true" in str(exc) and "set tone = false" in str(exc)
    else:  # a machine with working audio: the object has what TonePlayer drives
        for name in ("stop", "setSound", "setVolume", "play"):
            assert callable(getattr(sound, name))


# --------------------------------------------------------------------------- #
# Gauge
# --------------------------------------------------------------------------- #
@display_test
@pytest.mark.parametrize("value", [0.0, 0.25, 0.75, 1.0])
def test_needle_angle_follows_the_value(renderer, value):
    img = renderer.shot(shot([START, fb(1, value)], view=GAUGE))
    expected = gauge_geometry(SIZE).angle(value)
    assert expected == pytest.approx((value - 0.5) * 180.0)
    assert needle_angle(img) == pytest.approx(expected, abs=1.0)


@display_test
def test_needle_quarter_and_three_quarters_differ_by_the_geometry(renderer):
    a = needle_angle(renderer.shot(shot([START, fb(1, 0.25)], view=GAUGE)))
    b = needle_angle(renderer.shot(shot([START, fb(1, 0.75)], view=GAUGE)))
    assert a == pytest.approx(-45.0, abs=1.0) and b == pytest.approx(45.0, abs=1.0)
    # A wider arc: the same values, wider apart.
    wide = {"sweep_deg": 270}
    g = gauge_geometry(SIZE, parse_display({"gauge": wide}).gauge)
    c = needle_angle(renderer.shot(shot([START, fb(1, 0.25)], view=GAUGE, gauge=wide)))
    assert c == pytest.approx(g.angle(0.25), abs=1.0) == pytest.approx(-67.5, abs=1.0)


@display_test
def test_needle_glides_like_the_bar(renderer):
    messages = [START, fb(1, 0.2), fb(2, 0.8)]  # 0.8 received at T0 + 2, glide 0.3 s
    angles = [needle_angle(renderer.shot(shot(messages, T0 + 2 + dt, view=GAUGE)))
              for dt in (0.0, 0.05, 0.1, 0.3)]
    g = gauge_geometry(SIZE)
    assert angles[0] == pytest.approx(g.angle(0.2), abs=1.0)
    assert angles[-1] == pytest.approx(g.angle(0.8), abs=1.0)
    assert angles[0] < angles[1] < angles[2] < angles[3]


@display_test
def test_needle_colour_per_condition_and_mirror(renderer):
    view = {**GAUGE, "bar_fill": [0, 200, 0]}
    img = renderer.shot(shot([START, fb(1, 0.25)], view=view))
    assert needle_angle(img, colour=(0, 200, 0)) == pytest.approx(-45.0, abs=1.0)
    assert len(pixels(img, FILL)[0]) == 0
    plain = renderer.shot(shot([START, fb(1, 0.25)], view=GAUGE))
    mirrored = renderer.shot(shot([START, fb(1, 0.25)], view=GAUGE, mirror=True))
    assert needle_angle(mirrored, mirror=True) == pytest.approx(45.0, abs=1.0)  # read right to left
    g = gauge_geometry(SIZE)
    rows = slice(to_image_row(g.pivot[1] + g.radius + 20, SIZE), to_image_row(g.pivot[1] - 10, SIZE))
    assert np.array_equal(mirrored[rows], plain[rows, ::-1])  # the dial: exactly mirrored


@display_test
def test_gauge_null_holds_the_needle_with_the_bars_indicator(renderer):
    img = renderer.shot(SHOT["gauge_null"])
    g = gauge_geometry(SIZE)
    assert needle_angle(img) == pytest.approx(g.angle(0.6), abs=1.0)  # held
    below = (-60, 60, g.lowest_y - 4, g.lowest_y - 4 - 2 * text_height(SIZE, DisplayConfig()))
    assert count_in(img, NULL_COLOR, *below) > 0
    assert count_in(renderer.shot(SHOT["gauge"]), NULL_COLOR, *below) == 0
    # The first volume without a value: no needle (like the empty bar), the indicator.
    first = renderer.shot(shot([START, fb(1, None)], view=GAUGE))
    assert len(pixels(first, FILL)[0]) == 0 and count_in(first, NULL_COLOR, *below) > 0


@display_test
def test_gauge_marks_and_labels(renderer):
    g = gauge_geometry(SIZE)
    img = renderer.shot(SHOT["gauge"])  # target 0.75 "Goal", baseline 1/3 "Rest" (scale_psc [-1, 2])
    for level, mark, colour in ((0.75, "target", TARGET_COLOR), (1 / 3, "baseline", BASELINE_COLOR)):
        r0, r1 = g.tick_span(mark)
        x, y = g.point(g.angle(level), (r0 + r1) / 2.0)
        assert tuple(img[to_image_row(y, SIZE), to_image_col(x, SIZE)]) == colour
        at = g.label(level, mark)
        x0, x1 = (at.x, at.x + 60) if at.anchor_horiz == "left" else (at.x - 60, at.x)
        assert text_in(img, colour, x0, x1, at.y - 12, at.y + 12) > 20, mark  # the label's text
    assert g.label(0.75, "target").anchor_horiz == "left" and g.label(1 / 3, "baseline").anchor_horiz == "right"
    bare = renderer.shot(SHOT["gauge_null"])  # no labels configured
    at = g.label(0.75, "target")
    assert text_in(bare, TARGET_COLOR, at.x, at.x + 60, at.y - 12, at.y + 12) == 0


@display_test
def test_ended_run_shows_the_last_display(renderer):
    ended = shot([START, fb(1, 0.25), message("run", T0 + 2, event="end")], T0 + 2.5, view=GAUGE)
    state, scene = ended.play()
    assert scene.view == "ended" and scene.feedback_view == "gauge"
    img = renderer.shot(ended)
    assert needle_angle(img) == pytest.approx(-45.0, abs=1.0)
    during = renderer.shot(shot([START, fb(1, 0.25)], view=GAUGE))
    assert np.array_equal(img[BELOW_TITLE], during[BELOW_TITLE])  # the dial as it was, no thermometer
    assert not np.array_equal(img[:SIZE[1] // 6], during[:SIZE[1] // 6])  # the end text on top


# --------------------------------------------------------------------------- #
# Picture
# --------------------------------------------------------------------------- #
def solid_image(path: Path, rgb=(200, 200, 200), size=(40, 60)) -> str:
    from PIL import Image

    Image.new("RGBA", size, (*rgb, 255)).save(path)
    return str(path)


@display_test
def test_flame_size_follows_the_value(renderer):
    cfg = SHOT["picture"].config()
    g = picture_geometry(SIZE, cfg.picture, flame().shape[:2])
    alpha_rows = np.nonzero(flame()[..., 3].max(axis=1) > 0)[0]
    drawn_frac = (alpha_rows.max() + 1 - alpha_rows.min()) / flame().shape[0]
    base_frac = (flame().shape[0] - alpha_rows.max() - 1) / flame().shape[0]  # transparent rows under it
    heights = {}
    for name, value in (("picture", 0.2), ("picture_success", 0.9)):
        img = renderer.shot(SHOT[name])
        left, right, bottom, top = bbox(img, slice(SIZE[1] // 6, to_image_row(g.bottom, SIZE) + 1))
        scale = picture_look(cfg.picture, value).scale
        assert scale == pytest.approx(1.0 + (0.3 - 1.0) * value)
        assert top - bottom == pytest.approx(drawn_frac * g.size(scale)[1], abs=3)
        assert bottom == pytest.approx(g.bottom + base_frac * g.size(scale)[1], abs=2)  # anchored at the bottom
        assert (left + right) / 2 == pytest.approx(0, abs=1.5)
        heights[value] = top - bottom
    assert heights[0.9] < 0.5 * heights[0.2]  # success: a much smaller flame


@display_test
def test_picture_scale_is_exact_for_a_given_image(renderer, tmp_path):
    picture = {"file": solid_image(tmp_path / "box.png"), "scale": [0.5, 1.5], "anchor": "centre"}
    cfg = parse_display({"picture": picture})
    g: PictureGeometry = picture_geometry(SIZE, cfg.picture, (60, 40))
    for value in (0.25, 0.75):
        img = renderer.shot(shot([START, fb(1, value)], view=PICTURE, picture=picture))
        w, h = g.size(picture_look(cfg.picture, value).scale)
        left, right, bottom, top = bbox(img, BELOW_TITLE)
        assert (right - left, top - bottom) == pytest.approx((w, h), abs=1)
        assert (bottom + top) / 2 == pytest.approx(g.centre_y, abs=1)  # anchor centre
    assert g.size(1.25)[1] == 300 and g.size(0.75)[1] == 180  # 0.5 + 0.25 and 0.5 + 0.75 of 240 px


@display_test
def test_picture_opacity_and_colour_follow_the_value(renderer, tmp_path):
    file = solid_image(tmp_path / "grey.png")
    centre = (to_image_row(-24, SIZE), to_image_col(0, SIZE))  # picture.offset_y_frac -0.05 of 480
    fade = {"file": file, "scale": [1, 1], "opacity": [1.0, 0.4], "anchor": "centre"}
    seen = [tuple(int(v) for v in renderer.shot(shot([START, fb(1, value)], view=PICTURE,
                                                      picture=fade))[centre]) for value in (0.0, 0.5, 1.0)]
    assert seen[0] == (200, 200, 200)
    assert seen[1] == pytest.approx((140,) * 3, abs=2)  # 200 * 0.7
    assert seen[2] == pytest.approx((80,) * 3, abs=2)  # 200 * 0.4
    tint = {"file": file, "scale": [1, 1], "colour": ["#ffffff", "#ff0000"], "anchor": "centre"}
    seen = [tuple(int(v) for v in renderer.shot(shot([START, fb(1, value)], view=PICTURE,
                                                      picture=tint))[centre]) for value in (0.0, 0.5, 1.0)]
    assert seen[0] == (200, 200, 200)
    assert seen[1] == pytest.approx((200, 100, 100), abs=2)
    assert seen[2] == pytest.approx((200, 0, 0), abs=2)
    # The documented shot: at 0.8 fainter and bluer than the plain flame (both at scale 1).
    plain = renderer.shot(shot([START, fb(1, 0.8)], view=PICTURE, picture={"scale": [1, 1]}))
    cool = renderer.shot(SHOT["picture_colour"])
    lit = np.any(plain[BELOW_TITLE] != BG, axis=2)
    lit_cool = np.any(cool[BELOW_TITLE] != BG, axis=2)
    assert not np.any(lit_cool & ~lit) and lit_cool.sum() > 0.98 * lit.sum()  # same size and place
    lit &= lit_cool
    p, c = plain[BELOW_TITLE][lit].mean(axis=0), cool[BELOW_TITLE][lit].mean(axis=0)
    look = picture_look(SHOT["picture_colour"].config().picture, 0.8)
    assert look.opacity == pytest.approx(0.52) and look.mix == 0.8
    # opacity x (the value-0.8 mix of white and #6fa8ff), over the black background:
    assert c == pytest.approx(p * look.opacity * np.asarray(look.colour) / 255, rel=0.03)
    # Opacity and colour both at once, exactly, on the grey box: 200 * 0.7 * (255, 127.5, 127.5) / 255.
    both = {"file": file, "scale": [1, 1], "opacity": [1.0, 0.4], "colour": ["#ffffff", "#ff0000"],
            "anchor": "centre"}
    img = renderer.shot(shot([START, fb(1, 0.5)], view=PICTURE, picture=both))
    assert tuple(int(v) for v in img[centre]) == pytest.approx((140, 70, 70), abs=2)


@display_test
def test_picture_null_holds_with_the_bars_indicator(renderer):
    cfg = SHOT["picture"].config()
    g = picture_geometry(SIZE, cfg.picture, flame().shape[:2])
    held, before = renderer.shot(SHOT["picture_null"]), renderer.shot(SHOT["picture"])
    rows = slice(0, to_image_row(g.bottom, SIZE))
    assert np.array_equal(held[rows], before[rows])  # the flame of the last value
    below = (-60, 60, g.bottom - 4, g.bottom - 4 - 2 * text_height(SIZE, cfg))
    assert count_in(held, NULL_COLOR, *below) > 0 and count_in(before, NULL_COLOR, *below) == 0
    first = renderer.shot(shot([START, fb(1, None)], view=PICTURE))
    assert np.all(first[to_image_row(g.bottom + g.height, SIZE):to_image_row(g.bottom, SIZE)] == BG)


# --------------------------------------------------------------------------- #
# Number
# --------------------------------------------------------------------------- #
@display_test
def test_number_is_the_score_of_the_value(renderer):
    cfg = SHOT["number"].config()
    h = score_height(SIZE, cfg)
    y = number_y(SIZE)
    band = slice(to_image_row(y + h * 0.6, SIZE), to_image_row(y - h * 0.6, SIZE))
    frames = {}
    for value in (0.25, 0.55):
        s = shot([START, fb(1, value)], view=NUMBER)
        assert s.play()[1].number_text == f"{round(value * 100)} points"
        frames[value] = renderer.shot(s)
        # Written exactly as the intermittent score screen writes the same value.
        score = renderer.shot(shot([START, fb(9, value, kind="intermittent")], T0 + 9.5))
        assert np.array_equal(frames[value][band], score[band])
        assert int(np.all(frames[value][band] == cfg.score.colour, axis=2).sum()) > 200
    assert not np.array_equal(frames[0.25][band], frames[0.55][band])


@display_test
def test_number_null_holds_with_the_bars_indicator(renderer):
    cfg = SHOT["number"].config()
    held, before = renderer.shot(SHOT["number_null"]), renderer.shot(SHOT["number"])
    y, h = number_y(SIZE), score_height(SIZE, cfg)
    band = slice(to_image_row(y + h * 0.6, SIZE), to_image_row(y - h * 0.6, SIZE))
    assert np.array_equal(held[band], before[band])  # "60 points" held
    under = (-60, 60, y - h * 0.6, y - h * 0.6 - 2 * text_height(SIZE, cfg))
    assert count_in(held, NULL_COLOR, *under) > 0 and count_in(before, NULL_COLOR, *under) == 0


# --------------------------------------------------------------------------- #
# Labels of the bar's marks
# --------------------------------------------------------------------------- #
@display_test
def test_bar_labels_beside_their_marks(renderer):
    g = bar_geometry(SIZE)
    img = renderer.shot(SHOT["bar_labels"])
    target, baseline = bar_label(g, 0.75, "target"), bar_label(g, 1 / 3, "baseline")
    assert text_in(img, TARGET_COLOR, target.x, target.x + 60, target.y - 12, target.y + 12) > 20
    assert text_in(img, BASELINE_COLOR, baseline.x, baseline.x + 60, baseline.y - 12, baseline.y + 12) > 20
    plain = renderer.shot(SHOT["bar"])
    assert text_in(plain, TARGET_COLOR, target.x, target.x + 60, target.y - 12, target.y + 12) == 0
    assert text_in(plain, BASELINE_COLOR, baseline.x, baseline.x + 60, baseline.y - 12, baseline.y + 12) == 0
    # The label follows the baseline marker (a fixed level) and the target line.
    moved = renderer.shot(shot([START, fb(1, 0.6)], bar={**SHOT["bar_labels"].display["bar"],
                                                        "baseline": 0.1, "target": 0.9}))
    b, t = bar_label(g, 0.1, "baseline"), bar_label(g, 0.9, "target")
    assert text_in(moved, BASELINE_COLOR, b.x, b.x + 60, b.y - 12, b.y + 12) > 20
    assert text_in(moved, TARGET_COLOR, t.x, t.x + 60, t.y - 12, t.y + 12) > 20
    # Mirrored: on the left, the shapes exactly mirrored.
    mirrored = renderer.shot(shot([START, fb(1, 0.6)], bar=SHOT["bar_labels"].display["bar"], mirror=True))
    m = bar_label(g, 0.75, "target", mirror=True)
    assert m.x == -target.x
    assert text_in(mirrored, TARGET_COLOR, m.x - 60, m.x, m.y - 12, m.y + 12) > 20
    assert text_in(mirrored, TARGET_COLOR, target.x, target.x + 60, target.y - 12, target.y + 12) == 0


# --------------------------------------------------------------------------- #
# The catalogue of docs/screens
# --------------------------------------------------------------------------- #
def test_each_display_has_a_documented_shot():
    for name in ("bar_labels", "gauge", "gauge_null", "picture", "picture_success", "picture_colour",
                 "picture_null", "number", "number_null", "tone"):
        assert name in SHOT, name
    views = {SHOT[n].config().condition("regulate").view for n in SHOT}
    assert {"gauge", "picture", "number"} <= views
    assert SHOT["tone"].config().condition("regulate").tone
    readme = (Path(__file__).resolve().parent.parent / "docs" / "screens" / "README.md").read_text()
    for name in ("gauge", "picture", "number", "bar_labels", "tone"):
        assert f"({name}.png)" in readme
    for key in ('view = "gauge"', "[display.picture]", "[display.tone]", "target_label"):
        assert key in readme


def test_documented_settings_are_valid_and_the_defaults():
    """The TOML of docs/screens/README.md parses, and its new tables are the defaults it claims."""
    import tomllib

    from stimulus.docs import FEEDBACK_DISPLAYS_DOC

    text = "\n".join(FEEDBACK_DISPLAYS_DOC).split("```toml")[1].split("```")[0]
    cfg = parse_display(tomllib.loads(text)["display"], "README")
    default = DisplayConfig()
    assert (cfg.gauge, cfg.picture, cfg.tone) == (default.gauge, default.picture, default.tone)
    assert cfg.condition("regulate").view == "gauge" and cfg.bar.target_label == "Goal"


def test_frame_loop_plays_the_tone_after_the_flip_once_per_value(tmp_path):
    """stimulus.cli.Loop.frame: the tone of a new value starts just after the flip that shows it."""
    from types import SimpleNamespace

    from stimulus.cli import FlipLog, KeyLog, Loop, _StopFlag, build_parser

    events: list[str] = []
    state, tones, sound = tone_state_and_tones()
    cfg = tones.follower.cfg

    class Screen:
        def draw(self, scene):
            events.append(f"draw {scene.view}")

        def flip(self):
            events.append("flip")
            return 0.0

        def capture(self):
            pass

        def rating_click(self):
            return None

    class Sound(RecordingSound):
        def play(self):
            events.append("play")

    tones.player.sound = Sound(0, 0, 0)
    link = SimpleNamespace(state=state, send_rating=lambda **kw: True, send_key=lambda **kw: True,
                           send_heartbeat=lambda *a, **kw: None, send_displayed=lambda **kw: True)
    loop = Loop(build_parser().parse_args([]), cfg, link, Screen(), FlipLog(None), KeyLog(None), _StopFlag())
    loop.tones = tones
    state.handle(*START)
    state.handle(*fb(1, 0.25))
    loop.frame()
    loop.frame()  # the same value on the next frame: no second tone
    state.handle(*fb(2, None))
    loop.frame()
    state.handle(*fb(3, 0.75))
    loop.frame()
    assert events == ["draw text", "flip", "play", "draw text", "flip", "draw text", "flip",
                      "draw text", "flip", "play"]
    assert [round(c.hz, 1) for c in tones.player.played] == [311.1, 622.3]


@display_test
def test_real_screen_shows_a_gauge_from_its_config(tmp_path):
    """``python -m stimulus --config``: views per condition, a picture beside the TOML, the needle's angle."""
    from PIL import Image

    from tests.test_stimulus_screen import Rtnf, free_address, read_png, start_screen, stop

    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run not found: install the Debian package xvfb")
    (tmp_path / "pictures").mkdir()
    Image.new("RGBA", (20, 30), (0, 200, 0, 255)).save(tmp_path / "pictures" / "leaf.png")
    toml = tmp_path / "session.toml"
    toml.write_text('[display.conditions.regulate]\nview = "gauge"\n\n'
                    '[display.conditions.rest]\nview = "picture"\n\n'
                    '[display.picture]\nfile = "pictures/leaf.png"\n', encoding="utf-8")
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, "--config", str(toml), "--exit-after-end", "0.3")
    try:
        rtnf.wait_up(proc)
        assert rtnf.start_run_and_show(0, 0.25)["view"] == "gauge"
        assert rtnf.show(1, 0.75, condition="rest")["view"] == "picture"
        assert rtnf.show(2, 0.25)["view"] == "gauge"
        rtnf.send("run", event="end")
        stop(proc, paths, sig=None)  # --exit-after-end: the last frame is the end screen
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    img = read_png(paths["screenshot"])
    assert img.shape[:2] == (SIZE[1], SIZE[0])
    assert needle_angle(img) == pytest.approx(-45.0, abs=1.0)  # the end text over the run's last gauge
