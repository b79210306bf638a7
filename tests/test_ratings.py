"""Issue 17, point 2: ratings on the participant's screen, tied to volumes.

- the ``[[display.ratings]]`` / ``[display.rating_input]`` tables: defaults, and bad values named with what
  is allowed (no display needed);
- :class:`stimulus.rating.RatingController` (no PsychoPy): when ratings are due, keys, clicks, time limits;
- a whole simulated run (scanner_sim, ``rtnf run``, the PsychoPy screen under Xvfb) with ratings after each
  regulation block and after the run, answered by real X key presses (xdotool): the BIDS ratings file, the
  ``rating`` messages, the console's state and page, and the report show every rating with its value, its
  volume index and an onset after its block's end; one rating left to time out is recorded as no answer.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtnf.wire.display import DisplayConfig, DisplayConfigError, load_display, parse_display
from rtnf.wire.messages import encode, schema_for
from stimulus.link import ScreenState
from stimulus.rating import RatingController
from stimulus.scene import Scene
from tests.helpers import make_config, pattern, requires_display

RUN = "run-1"


# --------------------------------------------------------------------------- #
# The config tables
# --------------------------------------------------------------------------- #
def test_rating_tables_from_toml_with_defaults(tmp_path):
    path = tmp_path / "session.toml"
    path.write_text(
        '[display]\n\n'
        '[[display.ratings]]\nid = "intensity"\nquestion = "How intense was your pain?"\n'
        'labels = ["no pain", "worst pain imaginable"]\nwhen = "after_block"\n\n'
        '[[display.ratings]]\nid = "check"\nquestion = "Still awake?"\nrange = [1, 7]\nticks = [1, 2, 3, 4, 5, 6, 7]\n'
        'granularity = 1\nstart = "none"\nvolumes = [10, 20]\ntime_limit_s = 5\n\n'
        '[display.rating_input]\nleft = ["1"]\nright = ["2"]\nconfirm = ["3", "space"]\nmouse = false\n',
        encoding="utf-8")
    cfg = load_display(path)
    a, b = cfg.ratings
    assert (a.id, a.when, a.volumes, a.range, a.tick_values, a.time_limit_s) == (
        "intensity", "after_block", None, [0.0, 100.0], [0.0, 100.0], 10.0)
    assert a.start_value == 50.0 and a.key_step == 5.0  # the middle; 1/20 of the range per key press
    assert b.when is None and b.volumes == [10, 20] and b.start_value is None and b.key_step == 1.0
    assert b.snap(3.4) == 3.0 and b.snap(9) == 7.0 and a.snap(0.1 + 0.2) == 0.3
    assert cfg.rating_input.confirm == ["3", "space"] and cfg.rating_input.mouse is False
    assert DisplayConfig().ratings == [] and DisplayConfig().rating_input.left == ["1", "left"]
    # rtnf's session config validates the same tables
    from rtnf.config import load_config

    cfg_path = make_config(tmp_path, {"display.ratings": [{"id": "intensity", "question": "Pain?",
                                                            "when": "after_block"}]}, name="full.toml")
    assert load_config(cfg_path).display.ratings[0].id == "intensity"


def _rating(**fields):
    return {"id": "pain", "question": "Pain?", "when": "after_block", **fields}


@pytest.mark.parametrize("table, message", [
    ({"ratings": [{"id": "pain", "question": "Pain?"}]},
     "'display.ratings[0]': a table. Allowed: either 'when' ('before_run' / 'after_block' / 'after_run') or "
     "'volumes' (a list of volume numbers, 1 = the first volume after the dummies) in rating 'pain', but it has "
     "neither"),
    ({"ratings": [_rating(volumes=[4])]}, "in rating 'pain', not both"),
    ({"ratings": [_rating(when="during")]},
     "'display.ratings[0].when': 'during' (str). Input should be 'before_run', 'after_block' or 'after_run'"),
    ({"ratings": [_rating(range=[100, 0])]},
     "'display.ratings[0].range': [100, 0] (list). Allowed: [low, high] with low < high"),
    ({"ratings": [_rating(start=150)]},
     "'display.ratings[0].start': 150 (int). Allowed: a number within 'range' [0, 100], 'middle' or 'none'"),
    ({"ratings": [_rating(start="left")]}, "'display.ratings[0].start': 'left' (str). Allowed: a number"),
    ({"ratings": [_rating(ticks=[0, 60, 50, 100])]}, "'display.ratings[0].ticks': [0, 60, 50, 100] (list). "
                                                     "Allowed: ascending values"),
    ({"ratings": [_rating(ticks=[0, 50])]}, "Allowed: values from the low end of 'range' (0) to its high end (100)"),
    ({"ratings": [_rating(step=500)]}, "'display.ratings[0].step': 500 (int). Allowed: a step no larger than"),
    ({"ratings": [_rating(time_limit_s=0)]}, "'display.ratings[0].time_limit_s': 0 (int). Input should be greater"),
    ({"ratings": [_rating(volumes=[0], when=None)]}, "'display.ratings[0].volumes[0]': 0 (int)"),
    ({"ratings": [_rating(when="after_run", conditions=["up"])]},
     "Allowed: 'conditions' only with when = 'after_block' (rating 'pain')"),
    ({"ratings": [_rating(), _rating()]}, "Allowed: a different 'id' for every rating, but 'pain' is used twice"),
    ({"ratings": [_rating(id="pain level")]}, "'display.ratings[0].id': 'pain level' (str)"),
    ({"ratings": [_rating(colour="red")]},
     "unknown key 'display.ratings[0].colour'. Allowed keys here: id, question, labels, range, ticks"),
    ({"ratings": [_rating()], "rating_input": {"confirm": ["5"]}},
     "'display.rating_input.confirm': '5' is also the trigger or quit key"),
    ({"rating_input": {"left": ["1"], "right": ["1"]}},
     "'display.rating_input': a table. Allowed: different keys for left, right and confirm, but '1' is in 'left' "
     "and 'right'"),
    ({"rating_input": {"left": ["Left"]}}, "'display.rating_input.left[0]': 'Left' (str)"),
])
def test_invalid_rating_tables_name_key_value_and_allowed(table, message):
    table = {k: [{f: v for f, v in r.items() if v is not None} for r in t] if k == "ratings" else t
             for k, t in table.items()}
    with pytest.raises(DisplayConfigError) as exc:
        parse_display(table, "s.toml")
    assert str(exc.value).startswith("s.toml: invalid value") or str(exc.value).startswith("s.toml: unknown key")
    assert message in str(exc.value), str(exc.value)


# --------------------------------------------------------------------------- #
# RatingController (no window)
# --------------------------------------------------------------------------- #
BLOCKS = [{"condition": "rest", "start": 0, "stop": 3}, {"condition": "up", "start": 3, "stop": 6},
          {"condition": "rest", "start": 6, "stop": 9}, {"condition": "up", "start": 9, "stop": 12}]


def body(topic: str, **fields) -> dict:
    return {"schema": schema_for(topic), "run_id": RUN, **fields}


class Screen:
    """A screen without a window: the state, the controller, a clock; frames and keys by hand."""

    def __init__(self, ratings: list[dict], **input_fields) -> None:
        self.cfg = parse_display({"ratings": ratings, "rating_input": {"left": ["1"], "right": ["2"],
                                                                        "confirm": ["3"], **input_fields}})
        self.state = ScreenState()
        self.sent: list[dict] = []
        self.ratings = RatingController(self.cfg, lambda **fields: self.sent.append(fields))
        self.t = 100.0

    def start(self, n_volumes: int = 12, tr_s: float = 1.0) -> None:
        self.state.handle("run", body("run", event="start", baseline="rest", conditions=["rest", "up"],
                                      blocks=BLOCKS, n_volumes=n_volumes, tr_s=tr_s), self.t)

    def volume(self, index: int) -> None:
        cond = next(b["condition"] for b in BLOCKS if b["start"] <= index < b["stop"])
        self.state.handle("feedback", body("feedback", index=index, condition=cond, value=0.5), self.t)

    def frame(self, dt: float = 0.02) -> Scene:
        self.t += dt
        scene = self.ratings.overlay(self.state, Scene("bar", bar_level=0.5), self.t)
        self.ratings.flipped(self.t + 0.001)
        return scene

    def keys(self, *names: str) -> None:
        for name in names:
            self.t += 0.05
            self.ratings.key(name, self.t)


def test_controller_rates_each_regulation_block_when_the_next_block_begins():
    s = Screen([{"id": "intensity", "question": "Pain?", "when": "after_block"},
                {"id": "unpl", "question": "Unpleasant?", "when": "after_block", "time_limit_s": 2}])
    s.start()
    for i in range(6):
        s.volume(i)
        assert s.frame().view == "bar"  # no rating after the rest block, nor during the up block
    s.volume(6)  # the first volume after block 1 (up): its ratings are due
    scene = s.frame()
    assert scene.view == "rating" and scene.rating.spec.id == "intensity" and scene.rating.marker == 50.0
    assert scene.bar_level is None and scene.title == ""  # the feedback pauses under the scale
    assert s.ratings.heartbeat_fields(s.t)["ratings_pending"] == 2 and s.ratings.changed()
    s.keys("2", "2")
    assert s.frame().rating.marker == 60.0
    s.volume(7)  # the run goes on under the rating
    s.keys("3")
    scene = s.frame()  # the next frame shows the next question; the first is published with its offset
    assert scene.rating.spec.id == "unpl" and len(s.sent) == 1
    sent = s.sent[0]
    assert (sent["question"], sent["value"], sent["block"], sent["condition"], sent["when"], sent["index"]) == (
        "intensity", 60.0, 1, "up", "after_block", 6)
    assert sent["response"] == "3" and sent["n_moves"] == 2 and not sent["timed_out"]
    assert sent["t_onset"] < sent["t_response"] < sent["t_offset"]
    assert sent["response_time_s"] == pytest.approx(sent["t_response"] - sent["t_onset"])
    assert sent["ratings_pending"] == 1
    # the second question times out: no answer, and the feedback comes back
    while s.frame(0.25).view == "rating":
        pass
    unpl = s.sent[1]
    assert unpl["value"] is None and unpl["timed_out"] and unpl["t_response"] is None and unpl["index"] == 7
    assert unpl["t_offset"] - unpl["t_onset"] == pytest.approx(2.0, abs=0.3) and unpl["ratings_pending"] == 0
    assert not s.ratings.busy() and s.ratings.heartbeat_fields(s.t)["rating"] is None


def test_controller_keys_before_the_onset_and_without_a_marker_do_nothing():
    s = Screen([{"id": "q", "question": "?", "when": "after_block", "start": "none", "range": [0, 10],
                 "granularity": 1}])
    s.start()
    for i in range(7):
        s.volume(i)
        s.frame()
    onset = s.ratings.active.t_onset
    assert not s.ratings.key("2", onset - 0.01)  # pressed before the scale appeared
    s.keys("3")  # nothing chosen: no answer yet
    assert s.ratings.active is not None and s.ratings.active.marker is None
    s.keys("1")  # the first press puts the marker in the middle
    assert s.ratings.active.marker == 5.0
    s.keys(*["2"] * 9)  # stops at the high end
    assert s.ratings.active.marker == 10.0
    assert not s.ratings.key("4", s.t)  # not a rating key
    assert s.ratings.click(3.0, s.t)  # a click on the scale chooses and confirms
    s.frame()
    assert s.sent and s.sent[0]["value"] == 3.0 and s.sent[0]["response"] == "mouse"


def test_controller_end_of_run_volumes_and_before_run():
    s = Screen([{"id": "before", "question": "Now?", "when": "before_run", "time_limit_s": 1},
                {"id": "block", "question": "Block?", "when": "after_block"},
                {"id": "at5", "question": "Vol 5?", "volumes": [5, 6]},
                {"id": "after", "question": "Run?", "when": "after_run", "time_limit_s": 3}], mouse=False)
    s.start(tr_s=2.0)
    assert s.frame().rating.spec.id == "before"  # the run started, no volume yet
    s.volume(0)
    assert s.frame().view == "rating"  # the run goes on under it
    s.keys("3")
    assert s.frame().view == "bar" and s.sent[-1]["question"] == "before"
    assert s.sent[-1]["index"] is None and s.sent[-1]["when"] == "before_run"  # shown before the first volume
    for i in range(1, 6):
        s.volume(i)  # index 4 is volume 5: "at5" is due; index 5 (volume 6) again, after it
        s.frame()
    assert [d.spec.id for d in s.ratings.queue] == ["at5"] and s.ratings.active.due.spec.id == "at5"
    s.keys("3")
    s.frame()
    s.keys("3")
    s.frame()
    assert [m["question"] for m in s.sent[1:]] == ["at5", "at5"] and s.sent[1]["index"] == 4
    for i in range(6, 12):
        s.volume(i)
        s.frame()
        if s.ratings.active is not None:
            s.keys("3")
    assert [m["question"] for m in s.sent[3:]] == ["block"] and s.sent[3]["block"] == 1
    # The last block ends with the run: its rating and the run's come one TR (2 s) after the last volume.
    t_last = s.t
    n, until = s.ratings.pending(s.t)
    assert n == 2 and until == pytest.approx(t_last + 2.0 + 10.0 + 3.0, abs=0.1)
    assert s.frame().view == "bar"
    s.t = t_last + 2.0
    scene = s.frame()
    assert scene.rating.spec.id == "block" and s.ratings.active.due.block == 3
    s.keys("2", "3")
    assert s.frame().rating.spec.id == "after"
    s.keys("1", "3")
    s.frame()
    assert [(m["question"], m["value"], m["when"]) for m in s.sent[4:]] == [("block", 55.0, "after_block"),
                                                                              ("after", 45.0, "after_run")]
    assert not s.ratings.click(10.0, s.t)  # the mouse is off


def test_controller_forgets_the_waiting_ratings_of_a_run_that_is_gone():
    s = Screen([{"id": "a", "question": "A?", "when": "after_block"}, {"id": "b", "question": "B?",
                                                                       "when": "after_block"}])
    s.start()
    for i in range(7):
        s.volume(i)
        s.frame()
    assert s.ratings.active.due.spec.id == "a" and len(s.ratings.queue) == 1
    s.state.handle("run", {**body("run", event="start"), "run_id": "run-2"}, s.t)  # rtnf moved on
    s.frame()
    assert s.ratings.queue == [] and s.ratings.active is not None  # the one on screen is answered ...
    s.keys("3")
    s.frame()
    assert s.sent[0]["question"] == "a"  # ... and published for its own run
    assert s.ratings.n_shown == 0


# --------------------------------------------------------------------------- #
# The scale on the real screen (Xvfb), driven by a stand-in for rtnf
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("mirror", [False, True])
def test_scale_pauses_the_bar_marker_follows_keys_and_a_click_answers(tmp_path, xdisplay, mirror):
    """A click on the scale answers; the next scale's marker sits where the keys put it; no bar under a scale."""
    pytest.importorskip("psychopy")
    import numpy as np

    from stimulus.geometry import BAR_BG
    from tests.test_stimulus_screen import SIZE, Rtnf, free_address, read_png, start_screen, stop

    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[display]\nmirror = {"true" if mirror else "false"}\n\n'
                   '[[display.ratings]]\nid = "clicked"\nquestion = "Click"\nwhen = "after_block"\n\n'
                   '[[display.ratings]]\nid = "keyed"\nquestion = "Keys"\nlabels = ["low", "high"]\n'
                   'ticks = [0, 25, 50, 75, 100]\nstart = 20\nwhen = "after_block"\n', encoding="utf-8")
    env = {**os.environ, "DISPLAY": xdisplay}
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, "--config", str(cfg), display=xdisplay)
    start = {"event": "start", "tr_s": 1.0, "n_volumes": 6, "baseline": "rest", "conditions": ["rest", "up"],
             "blocks": [{"condition": "up", "start": 0, "stop": 1}, {"condition": "rest", "start": 1, "stop": 6}]}

    def send(topic: str, **fields) -> None:
        rtnf.pub.send_multipart(encode(topic, RUN, fields))

    try:
        rtnf.wait_up(proc)
        rtnf.wait_for(lambda t, b: t == "displayed" and b.get("index") == 0, meanwhile=lambda: (
            send("run", **start), send("feedback", index=0, condition="up", value=0.5, kind="continuous")))
        send("feedback", index=1, condition="rest", value=0.6, kind="continuous")  # block 0 is over
        rtnf.wait_for(lambda t, b: t == "heartbeat" and b.get("rating") == "clicked")
        window = subprocess.run(["xdotool", "search", "--name", "^PsychoPy$"], env=env, capture_output=True,
                                text=True, check=True).stdout.split()[0]
        # 75 on the scale: 60 % of the width wide, centred, at SCALE_Y_FRAC of the height below the centre
        x = SIZE[0] / 2 + (0.75 - 0.5) * 0.6 * SIZE[0] * (-1 if mirror else 1)
        y = SIZE[1] / 2 + round(0.05 * SIZE[1])
        subprocess.run(["xdotool", "mousemove", "--window", window, str(round(x)), str(round(y)),
                        "mousedown", "1", "sleep", "0.15", "mouseup", "1"], env=env, check=True)
        clicked = rtnf.wait_for(lambda t, b: t == "rating" and b["question"] == "clicked")
        rtnf.wait_for(lambda t, b: t == "heartbeat" and b.get("rating") == "keyed")
        subprocess.run(["xdotool", "key", "--window", window, "2"], env=env, check=True)  # 20 -> 25
        send("feedback", index=2, condition="rest", value=0.9, kind="continuous")  # the run goes on under it
        shown = rtnf.wait_for(lambda t, b: t == "displayed" and b.get("index") == 2)
        time.sleep(0.3)
        stop(proc, paths)  # the final screenshot: the "keyed" scale, still on screen
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    assert clicked["response"] == "mouse" and clicked["value"] == pytest.approx(75.0, abs=1.0)
    assert clicked["index"] == 1 and clicked["block"] == 0 and clicked["condition"] == "up"
    assert shown["view"] == "rating" and shown["bar_shown"] is None
    img = read_png(paths["screenshot"])
    assert np.all(img == BAR_BG, axis=2).sum() == 0  # no bar under the scale
    marker = np.argwhere(np.all(img == (255, 140, 0), axis=2))  # the marker, in the bar's fill colour
    assert marker.size
    col = marker[:, 1].mean()
    expected = SIZE[0] / 2 + (0.25 - 0.5) * 0.6 * SIZE[0] * (-1 if mirror else 1)  # 25 on the scale
    assert col == pytest.approx(expected, abs=2.0)
    assert marker[:, 0].mean() == pytest.approx(SIZE[1] / 2 + round(0.05 * SIZE[1]), abs=2.0)


# --------------------------------------------------------------------------- #
# A whole run with the real screen and X key presses
# --------------------------------------------------------------------------- #
REST, REGULATE = 6, 6
N = 2 * (REST + REGULATE)
RATINGS = [
    {"id": "intensity", "question": "How intense was your pain?", "labels": ["no pain", "worst pain"],
     "when": "after_block", "time_limit_s": 8.0},
    {"id": "unpleasantness", "question": "How unpleasant was it?", "labels": ["not at all", "very"],
     "when": "after_block", "time_limit_s": 3.0},
    {"id": "overall", "question": "How did the run go?", "labels": ["badly", "well"], "when": "after_run",
     "time_limit_s": 8.0},
]
# What the participant presses for each rating as it appears (2 moves right, 1 left, 3 confirms; 5 per move).
SCRIPT = {("intensity", 1): ["2", "2", "3"], ("unpleasantness", 1): ["1", "1", "1", "3"],
          ("intensity", 2): ["2", "3"], ("unpleasantness", 2): [],  # left to time out: no answer
          ("overall", 1): ["1", "3"]}
EXPECTED = [("intensity", 60.0, 1), ("unpleasantness", 35.0, 1), ("intensity", 55.0, 3),
            ("unpleasantness", None, 3), ("overall", 45.0, None)]
CONFIG = {"session.subject": "rate", "session.task": "pain", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "protocol.pattern": pattern(rest=REST, regulate=REGULATE), "feedback.min_baseline_volumes": 2,
          "publish.preview": False, "output.dir": "outputs",
          "display.ratings": RATINGS,
          "display.rating_input": {"left": ["1"], "right": ["2"], "confirm": ["3"], "mouse": True}}


@pytest.fixture(scope="module")
def xdisplay():
    """A private Xvfb (xdotool sends its key presses there)."""
    if shutil.which("Xvfb") is None or shutil.which("xdotool") is None:
        pytest.skip("Xvfb or xdotool not found: apt-get install xvfb xdotool")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def rated_run(tmp_path_factory, xdisplay):
    """scanner_sim, rtnf run and the screen (on ``xdisplay``) as real processes; the ratings answered with xdotool.

    Returns (cfg, messages as (topic, body), presses as (question, occurrence, t_sent)).
    """
    from rtnf.apps.demo import Listener, Processes, free_address, screen_command, sim_spec, wait_ready, write_toml
    from rtnf.config import load_config

    tmp_path = tmp_path_factory.mktemp("ratings")
    address, ack = free_address(), free_address()
    cfg_path = make_config(tmp_path, CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    write_toml(sim_spec(cfg, amplitude_pct=1.5, noise_pct=1.0, seed=3), tmp_path / "spec.toml")
    env = {**os.environ, "DISPLAY": xdisplay}
    listener = Listener([address, ack])
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    old_display = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = xdisplay  # the screen opens its window there (no xvfb-run)
    presses: list[tuple[str, int, float]] = []
    try:
        procs.start("screen", screen_command(address, ack, tmp_path, exit_after_end_s=1.0, config=cfg_path), logs)
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir",
                             "--publish-address", address, "--set", f'publish.screen_address="{ack}"'], logs)
        wait_ready(listener, procs, no_screen=False)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(tmp_path / "spec.toml"),
                                    "--export-dir", str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "4"], logs)
        seen: dict[str, int] = {}
        handled = 0
        deadline = time.time() + 240
        while procs.procs["rtnf"].poll() is None or procs.procs["screen"].poll() is None:
            assert time.time() < deadline, (logs / "rtnf.log").read_text()[-3000:]
            for topic, b in listener.poll(0.1):
                # The screen sends a heartbeat as soon as a new rating is on screen: answer it.
                if topic == "heartbeat" and b.get("source") == "stimulus" and b.get("rating") \
                        and b.get("n_ratings", 0) > handled:
                    handled = b["n_ratings"]
                    question = b["rating"]
                    seen[question] = seen.get(question, 0) + 1
                    keys = SCRIPT[(question, seen[question])]
                    presses.append((question, seen[question], time.time()))
                    if keys:
                        subprocess.run(["xdotool", "mousemove", "20", "20"], env=env, check=True)
                        subprocess.run(["xdotool", "key", "--delay", "60", *keys], env=env, check=True)
        listener.poll(0.5)
        assert procs.procs["rtnf"].returncode == 0, (logs / "rtnf.log").read_text()[-3000:]
        assert procs.procs["screen"].returncode == 0, (logs / "screen.log").read_text()[-3000:]
    finally:
        if old_display is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old_display
        listener.close()
        procs.stop_all()
    return cfg, listener.messages, presses, logs


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _acks(messages, run_id):
    """First ``displayed`` acknowledgement of each feedback index of the run."""
    out = {}
    for topic, b in messages:
        if topic == "displayed" and b.get("run_id") == run_id and b.get("index") is not None:
            out.setdefault(b["index"], b)
    return out


@requires_display()
def test_ratings_of_a_run_reach_its_bids_outputs_with_values_indices_and_onsets(rated_run):
    cfg, messages, presses, logs = rated_run
    from rtnf.run.outputs import RATINGS_EVENTS, RATINGS_EVENTS_SIDECAR, SCREEN_EVENTS_SIDECAR, output_path

    run_id = next(b["run_id"] for t, b in messages if t == "feedback")
    assert [(q, k) for q, k, _ in presses] == list(SCRIPT), presses
    rows = _rows(output_path(cfg, RATINGS_EVENTS))
    sidecar = json.loads(output_path(cfg, RATINGS_EVENTS_SIDECAR).read_text())
    screen_sidecar = json.loads(output_path(cfg, SCREEN_EVENTS_SIDECAR).read_text())
    assert sidecar["RunId"] == run_id and sidecar["StartTime"] == screen_sidecar["StartTime"]
    assert {"onset", "duration", "trial_type", "value", "volume_index", "block"} <= set(sidecar)
    # The keys set the values: 50 at the start, 5 per press; the unanswered one is no answer.
    got = [(r["trial_type"], None if r["value"] == "n/a" else float(r["value"]),
            None if r["block"] == "n/a" else int(r["block"])) for r in rows]
    assert got == EXPECTED, rows
    assert [r["timed_out"] for r in rows] == ["0", "0", "0", "1", "0"]
    assert [r["moment"] for r in rows] == ["after_block"] * 4 + ["after_run"]
    assert [r["response"] for r in rows] == ["3", "3", "3", "n/a", "3"]
    assert [r["condition"] for r in rows[:4]] == ["regulate"] * 4 and rows[3]["response_time"] == "n/a"
    # the time limit: the scale goes at the first frame at least 3 s after its onset, and its duration ends at
    # the next flip (two frame periods at 60 Hz; a loaded machine's frames may come far later, never earlier)
    assert 3.0 - 1e-3 <= float(rows[3]["duration"]) < 3.0 + 1.0
    # Tied to the volumes: the feedback index on screen at the onset, after the block's end.
    blocks = next(b for t, b in messages if t == "run")["blocks"]
    acks = _acks(messages, run_id)
    assert sorted(acks) == list(range(N))
    for r in rows:
        t_onset, index = float(r["t_onset"]), int(r["volume_index"])
        shown = max(i for i, a in acks.items() if a["t_displayed"] <= t_onset)
        assert index == shown, (r, shown)
        assert float(r["onset"]) == pytest.approx(t_onset - sidecar["StartTime"], abs=1e-3)
        if r["block"] != "n/a":
            block = blocks[int(r["block"])]
            assert block["condition"] == "regulate"
            last = acks[block["stop"] - 1]  # the block's last volume was on screen before the scale
            assert t_onset > last["t_displayed"]
            if block["stop"] < N:
                assert index >= block["stop"] and t_onset >= acks[block["stop"]]["t_received"]
            else:
                assert index == N - 1 and t_onset >= last["t_received"] + cfg.scanner.tr_s - 0.05
    first = rows[0]
    assert int(first["volume_index"]) == blocks[1]["stop"]  # shown with the next block's first volume
    for r in rows:
        if r["value"] != "n/a":
            assert float(r["t_response"]) - float(r["t_onset"]) == pytest.approx(float(r["response_time"]), abs=1e-3)
    # While a rating is on screen the feedback pauses: volumes acknowledged then show no bar.
    during = [a for a in acks.values() if a["view"] == "rating"]
    assert during and all(a["bar_shown"] is None for a in during)


@requires_display()
def test_rating_messages_follow_their_schema_and_the_flip_log_shows_no_bar_under_a_scale(rated_run, tmp_path):
    cfg, messages, _, logs = rated_run
    jsonschema = pytest.importorskip("jsonschema")
    root = Path(__file__).resolve().parent.parent
    schema = json.loads((root / "docs" / "wire" / "rating.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    ratings = [b for t, b in messages if t == "rating"]
    assert [b["question"] for b in ratings] == [q for q, _, _ in EXPECTED]
    for b in ratings:
        assert list(validator.iter_errors(b)) == []
    assert ratings[-1]["ratings_pending"] == 0 and ratings[0]["ratings_pending"] >= 1
    with open(logs.parent / "flips.csv", newline="") as fh:
        flips = list(csv.DictReader(fh))
    rating_frames = [f for f in flips if f["view"] == "rating"]
    assert rating_frames and all(f["bar_shown"] == "" for f in rating_frames)
    # every frame keeps its row: frames at most a few frame periods apart while a scale is shown
    t = [float(f["t_flip"]) for f in rating_frames]
    gaps = [b - a for a, b in zip(t, t[1:]) if b - a < 1.0]
    assert gaps and sorted(gaps)[len(gaps) // 2] < 0.1


@requires_display()
def test_console_shows_the_ratings_as_they_arrive(rated_run):
    cfg, messages, _, _ = rated_run
    pytest.importorskip("bokeh")
    from bokeh.document import Document

    from rtnf.apps.console.app import ConsolePage
    from rtnf.apps.console.state import RunState

    state = RunState(t_start=0.0)
    page = ConsolePage(Document(), state, clock=time.time)
    shown_while_running = []
    for k, (topic, b) in enumerate(messages):
        screen = topic in ("displayed", "keys", "rating") or (topic == "heartbeat" and b.get("source") == "stimulus")
        state.handle("screen" if screen else "rtnf", topic, b, float(k))
        if topic == "rating":
            page.tick()
            shown_while_running.append((state.phase, page.ratings.text.count("<tr class=")))
    assert [r["question"] for r in state.ratings] == [q for q, _, _ in EXPECTED]
    assert [r["value"] for r in state.ratings] == [v for _, v, _ in EXPECTED]
    assert [r["block"] for r in state.ratings] == [b for _, _, b in EXPECTED]
    assert state.ratings[3]["timed_out"] and state.n_ratings == 5
    # each appeared on the page as it came, before the run's end message
    assert [n for _, n in shown_while_running] == [1, 2, 3, 4, 5]
    assert all(phase == "running" for phase, _ in shown_while_running[:4])  # during the run
    rows = json.loads(page.ratings.tags[0])
    assert [r["question"] for r in rows] == [q for q, _, _ in EXPECTED][::-1]  # newest first
    assert 'data-question="intensity" data-value="60.0"' in page.ratings.text
    assert "no answer (time limit)" in page.ratings.text


@requires_display()
def test_report_sets_each_rating_against_its_blocks_regulation_success(rated_run, tmp_path):
    cfg, _, _, _ = rated_run
    from rtnf.apps.report import read_run, summarise, write_report
    from rtnf.apps.report.ratings import ratings_summary
    from rtnf.run.outputs import TIMESERIES, output_path

    table = output_path(cfg, TIMESERIES)
    out = write_report(table, tmp_path / "report")
    run = read_run(table)
    summary = summarise(run)
    rs = ratings_summary(run, summary)
    by_block = {b["block"]: b for b in rs["blocks"]}
    assert set(by_block) == {1, 3}  # the regulation blocks
    assert by_block[1]["ratings"] == {"intensity": {"value": 60.0, "timed_out": False},
                                      "unpleasantness": {"value": 35.0, "timed_out": False}}
    assert by_block[3]["ratings"] == {"intensity": {"value": 55.0, "timed_out": False},
                                      "unpleasantness": {"value": None, "timed_out": True}}
    blocks = {b["block"]: b for b in summary["blocks"]}
    for number in (1, 3):
        assert math.isfinite(blocks[number]["delta_feedback_signal"])
        assert by_block[number]["delta_feedback_signal"] == blocks[number]["delta_feedback_signal"]
        assert by_block[number]["success"] == blocks[number]["success"]
    assert [r["question"] for r in rs["other"]] == ["overall"] and rs["other"][0]["value"] == 45.0
    unpl = rs["per_question"]["unpleasantness"]
    assert (unpl["n"], unpl["answered"], unpl["timed_out"], unpl["mean"]) == (2, 1, 1, 35.0)
    page = out.read_text()
    assert "<h2>Ratings</h2>" in page and 'id="ratings-by-block"' in page
    assert '<tr data-block="2">' in page and '<tr data-block="4">' in page
    assert '<td data-question="intensity">60.0</td>' in page and '<td data-question="intensity">55.0</td>' in page
    assert '<td data-question="unpleasantness"><span class="warn">no answer</span></td>' in page
    figure = tmp_path / "report" / f"{run.prefix}_desc-ratings_report.png"
    assert figure.is_file() and figure.stat().st_size > 10_000 and figure.name in page
    # a run without ratings: no section, no figure
    assert "<h2>Ratings</h2>" not in _report_without_ratings(table, tmp_path)


def _report_without_ratings(table: Path, tmp_path: Path) -> str:
    from rtnf.apps.report import write_report
    from rtnf.run import outputs

    copy = tmp_path / "plain" / table.name
    copy.parent.mkdir()
    for name in (outputs.TIMESERIES, outputs.EVENTS, outputs.CONFIG, outputs.PROVENANCE):
        src = outputs.sibling(table, name)
        if src.exists():
            shutil.copy(src, outputs.sibling(copy, name))
    out = write_report(copy, tmp_path / "plain_report")
    assert not any(p.name.endswith("desc-ratings_report.png") for p in out.parent.iterdir())
    return out.read_text()

