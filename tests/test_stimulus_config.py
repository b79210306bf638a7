"""The [display] table (rtnf.wire.display), scenes and glide, latency summary, key publishing: no display needed."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import zmq

import rtnf.wire.messages
from rtnf.wire.display import DisplayConfig, DisplayConfigError, load_display, parse_display
from rtnf.wire.messages import decode, schema_for
from stimulus.cli import FLIP_LOG_COLUMNS, build_parser, display_config
from stimulus.link import FeedbackLink, MessageError, ScreenState
from stimulus.scene import Glide, SceneMaker, ease
from stimulus.timing import latency_summary, receive_to_flip_s, summarize_ms

RUN = "run-1"


def body(topic: str, **fields: object) -> dict:
    return {"schema": schema_for(topic), "run_id": RUN, **fields}


def started(**fields: object) -> ScreenState:
    state = ScreenState()
    fields.setdefault("feedback", {"scale_psc": [-0.5, 1.5]})
    state.handle("run", body("run", event="start", baseline="rest",
                             conditions=["rest", "up"], instructions={"up": "Raise it"},
                             **fields), 0.0)
    return state


# --------------------------------------------------------------------------- #
# [display]
# --------------------------------------------------------------------------- #
def test_defaults_and_file_loading(tmp_path):
    cfg = DisplayConfig()
    assert cfg.size == [1024, 768] and cfg.bar.glide_s == 0.3 and cfg.keys.trigger == "5"
    assert cfg.bar.target == 0.75 and cfg.bar.baseline == "auto" and not cfg.mirror
    path = tmp_path / "session.toml"
    path.write_text('[session]\nsubject = "01"\n')  # no [display]: defaults
    assert load_display(path) == cfg
    path.write_text(
        '[scanner]\ntr_s = 1.0\n\n[display]\nmirror = true\nsize = [800, 600]\n'
        '[display.bar]\nfill = "#00ff00"\ntarget = "none"\nbaseline = 0\n'
        '[display.conditions.rest]\nview = "fixation"\ncolour = [10, 20, 30]\n'
        '[display.keys]\ntrigger = false\nresponses = ["a", "num_1"]\nquit = "q"\n')
    cfg = load_display(path)
    assert cfg.mirror and cfg.size == [800, 600] and cfg.bar.fill == (0, 255, 0)
    assert cfg.bar.target == "none" and cfg.bar.baseline == 0.0
    assert cfg.conditions["rest"].colour == (10, 20, 30) and cfg.condition("up").view is None
    assert cfg.keys.trigger is False and cfg.keys.responses == ["a", "num_1"]


@pytest.mark.parametrize("table, message", [
    ({"bar": {"fill": "orange"}}, "'display.bar.fill': 'orange' (str). Allowed: '#rrggbb'"),
    ({"bar": {"fill": [0, 0, 256]}}, "'display.bar.fill': [0, 0, 256] (list). Allowed"),
    ({"bar": {"target": 1.2}}, "'display.bar.target': 1.2 (float). Allowed: a number in [0, 1] "
                               "or 'none'"),
    ({"bar": {"baseline": "zero"}}, "Allowed: a number in [0, 1] or 'auto' or 'none'"),
    ({"bar": {"glide_s": -1}}, "'display.bar.glide_s': -1 (int)"),
    ({"bar": {"easing": "bounce"}}, "'display.bar.easing': 'bounce'"),
    ({"bar": {"colour": 1}}, "unknown key 'display.bar.colour'. Allowed keys here: width_px"),
    ({"size": [10, 768]}, "'display.size[0]': 10 (int)"),
    ({"fullscreen": "yes"}, "'display.fullscreen': 'yes' (str)"),
    ({"conditions": {"rest": {"view": "cross"}}},
     "'display.conditions.rest.view': 'cross' (str). Input should be 'bar', 'gauge', 'picture', "
     "'number', 'fixation' or 'text'"),
    ({"conditions": {"rest": {"text": "x"}}},
     "unknown key 'display.conditions.rest.text'. Allowed keys here: view, instruction"),
    ({"keys": {"trigger": "F5"}}, "'display.keys.trigger': 'F5' (str). Allowed: a PsychoPy key"),
    ({"keys": {"responses": ["5"]}}, "'display.keys.responses': '5' is also the trigger"),
    ({"score": {"text": "{points}"}}, "'display.score.text': '{points}'"),
])
def test_invalid_values_name_key_value_and_allowed(table, message):
    with pytest.raises(DisplayConfigError) as exc:
        parse_display(table, "s.toml")
    assert str(exc.value).startswith("s.toml: ") and message in str(exc.value)


def test_load_errors(tmp_path):
    with pytest.raises(DisplayConfigError, match="cannot read config file"):
        load_display(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[display\n")
    with pytest.raises(DisplayConfigError, match="not valid TOML"):
        load_display(bad)
    bad.write_text("display = 3\n")
    with pytest.raises(DisplayConfigError, match="Allowed: a table"):
        load_display(bad)


def test_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[display]\nmirror = false\nmax_fps = 30\n[display.bar]\nglide_s = 0.5\n')
    args = build_parser().parse_args(["--config", str(path), "--mirror", "--glide", "0",
                                      "--trigger-key", "t", "--size", "640x480"])
    cfg = display_config(args)
    assert cfg.mirror and cfg.bar.glide_s == 0 and cfg.keys.trigger == "t"
    assert cfg.size == [640, 480] and cfg.max_fps == 30  # untouched by the command line
    with pytest.raises(DisplayConfigError, match="display.keys.trigger"):
        display_config(build_parser().parse_args(["--trigger-key", "Tab"]))


# --------------------------------------------------------------------------- #
# Scenes and glide
# --------------------------------------------------------------------------- #
def test_ease_and_glide():
    assert ease(0, "ease-out") == 0 and ease(1, "ease-out") == 1 and ease(2, "linear") == 1
    assert ease(0.5, "linear") == 0.5 and ease(0.5, "ease-out") == pytest.approx(0.875)
    g = Glide(0.3)
    assert g.level(5.0) is None
    g.set(0.2, 10.0)
    assert g.level(10.0) == 0.2  # the first value shows at once
    g.set(0.8, 11.0)
    assert g.level(11.0) == pytest.approx(0.2) and g.level(11.3) == pytest.approx(0.8)
    assert 0.2 < g.level(11.1) < 0.8 and g.moving(11.1) and not g.moving(11.3)
    g.set(0.5, 11.1)  # a new value mid-glide starts from where the bar is
    assert g.level(11.1) == pytest.approx(0.2 + 0.6 * ease(1 / 3, "ease-out"))
    assert Glide(0.0).level(0) is None


def test_views_per_condition_and_defaults():
    cfg = parse_display({"conditions": {"up": {"instruction": "Up!", "colour": "#ff0000"},
                                        "count": {"view": "text"}}})
    maker = SceneMaker(cfg)
    state = started()
    state.handle("feedback", body("feedback", index=0, condition="rest", value=None), 1.0)
    s = maker.scene(state, 1.1)
    assert s.view == "fixation" and s.title == "rest"  # the run's baseline: a cross
    state.handle("feedback", body("feedback", index=1, condition="up", value=0.4), 2.0)
    s = maker.scene(state, 2.1)
    assert s.view == "bar" and s.title == "Up!" and s.title_colour == (255, 0, 0)
    assert s.baseline_level == pytest.approx(0.25)  # 0 % on [-0.5, 1.5]
    state.handle("feedback", body("feedback", index=2, condition="count", value=0.4), 3.0)
    assert maker.scene(state, 3.1).view == "text"
    assert maker.scene(state, 3.1).lost is False
    assert maker.scene(state, 100.0).lost is True


def test_intermittent_feedback_shows_score_without_moving_the_bar():
    state = started()
    state.handle("feedback", body("feedback", index=0, condition="up", value=0.3), 1.0)
    state.handle("feedback", body("feedback", index=5, condition="up", value=0.9,
                                  kind="intermittent"), 6.0)
    assert state.bar_value == 0.3 and state.score.value == 0.9 and state.feedback.index == 5
    maker = SceneMaker(parse_display({"score": {"duration_s": 1.5, "text": "{score}%"}}))
    assert maker.scene(state, 6.1).view == "score"
    assert maker.scene(state, 6.1).score_text == "90%"
    assert maker.scene(state, 7.6).view == "bar"
    # An older intermittent message is never shown.
    assert not state.handle("feedback", body("feedback", index=4, value=0.1,
                                             kind="intermittent"), 8.0)
    assert state.score.index == 5
    # rtnf's per-volume intermittent messages between scores (null, no display_s) show no score
    # and leave the last one alone; the run's feedback kind makes the conditions text-only.
    state = started(feedback={"kind": "intermittent"})
    state.handle("feedback", body("feedback", index=1, condition="up", value=None,
                                  kind="intermittent", reason="intermittent: between scores"), 1)
    assert state.score is None and maker.scene(state, 1.1).view == "text"
    state.handle("feedback", body("feedback", index=2, condition="up", value=None,
                                  kind="intermittent", display_s=4.0), 2.0)
    assert state.score.index == 2 and maker.scene(state, 5.9).view == "score"
    assert maker.scene(state, 6.1).view == "text"
    with pytest.raises(MessageError, match="'kind'"):
        state.handle("feedback", body("feedback", index=7, value=0.1, kind="sometimes"), 9.0)
    with pytest.raises(MessageError, match="'display_s'"):
        state.handle("feedback", body("feedback", index=7, value=0.1, kind="intermittent",
                                      display_s=-2), 9.0)


# --------------------------------------------------------------------------- #
# Latency summary
# --------------------------------------------------------------------------- #
def test_latency_summary_from_flip_log(tmp_path):
    path = tmp_path / "flips.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, FLIP_LOG_COLUMNS)
        w.writeheader()
        t = 100.0
        for i in range(20):  # each index shown on 3 flips; receive 5 ms + i*0.1 ms before
            for k in range(3):
                w.writerow({"t_flip": f"{t:.6f}", "index": i, "run_id": RUN,
                            "t_received": f"{t - 0.005 - i * 1e-4 if k == 0 else 0:.6f}"})
                t += 0.0165
        w.writerow({"t_flip": f"{t:.6f}", "index": "", "t_received": ""})
    lat = receive_to_flip_s(csv.DictReader(path.open()))
    assert len(lat) == 20 and lat[0] == pytest.approx(0.005, abs=1e-6)
    s = latency_summary(path)
    assert s["n_flips"] == 61 and s["receive_to_flip"]["n"] == 20
    assert s["receive_to_flip"]["median_ms"] == pytest.approx(5.95, abs=1e-3)
    assert s["receive_to_flip"]["p99_ms"] == pytest.approx(np.percentile(np.array(lat) * 1e3, 99))
    assert s["receive_to_flip"]["p95_ms"] == pytest.approx(np.percentile(np.array(lat) * 1e3, 95))
    assert s["frame_interval"]["median_ms"] == pytest.approx(16.5, abs=1e-3)
    assert summarize_ms([]) == {"n": 0}


# --------------------------------------------------------------------------- #
# Keys topic, guarded until the protocol has it
# --------------------------------------------------------------------------- #
def test_keys_are_published_once_the_protocol_has_the_topic(monkeypatch):
    with FeedbackLink("tcp://127.0.0.1:1", "tcp://127.0.0.1:0") as link:
        if "keys" not in rtnf.wire.messages.TOPICS:
            assert not link.send_key(key="5", role="trigger", t_key=1.0)
    monkeypatch.setattr(rtnf.wire.messages, "TOPICS", (*rtnf.wire.messages.TOPICS, "keys"))
    with FeedbackLink("tcp://127.0.0.1:1", "tcp://127.0.0.1:0") as link:
        endpoint = link._pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        sub = link._context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"keys")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(endpoint)
        got = None
        deadline = time.time() + 5
        while got is None and time.time() < deadline:  # PUB drops until the SUB is connected
            assert link.send_key(key="5", role="trigger", t_key=12.5, index=3)
            if sub.poll(50):
                got = decode(sub.recv_multipart())
        sub.close()
    assert got is not None
    topic, msg = got
    assert topic == "keys" and msg["schema"] == "rtnf.keys/1" and msg["source"] == "stimulus"
    assert (msg["key"], msg["role"], msg["t_key"], msg["index"]) == ("5", "trigger", 12.5, 3)
