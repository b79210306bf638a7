"""Feedback screen without a display: ScreenState, FeedbackLink, xvfb helper, CLI options."""

from __future__ import annotations

import json
import socket
import logging
import time

import pytest
import zmq

from rtnf.wire.messages import MAX_MESSAGE_BYTES, encode, schema_for
from stimulus import xvfb
from stimulus.cli import build_parser, display_config
from stimulus.geometry import BAR_HEIGHT_FRAC, BAR_WIDTH_PX, bar_geometry
from stimulus.link import FeedbackLink, MessageError, ScreenState

RUN = "run-1"


def body(topic: str, run_id: str = RUN, **fields: object) -> dict:
    return {"schema": schema_for(topic), "run_id": run_id, **fields}


def start(state: ScreenState, t: float = 0.0, run_id: str = RUN, **fields: object) -> None:
    fields.setdefault("conditions", ["rest", "regulate"])
    fields.setdefault("instructions", {"regulate": "Raise the bar"})
    state.handle("run", body("run", run_id, event="start", tr_s=1.0, n_volumes=10, **fields), t)


def feedback(state: ScreenState, index: int, value: float | None, t: float = 0.0,
             run_id: str = RUN, condition: str = "regulate", **fields: object) -> bool:
    reason = None if value is not None else "censored"
    return state.handle("feedback", body("feedback", run_id, index=index, condition=condition,
                                         value=value, reason=reason, **fields), t)


# --------------------------------------------------------------------------- #
# ScreenState
# --------------------------------------------------------------------------- #
def test_phase_transitions_start_feedback_end():
    state = ScreenState()
    assert state.phase == "waiting" and state.run is None and state.bar_value is None
    start(state, 1.0)
    assert state.phase == "running" and state.run_id == RUN
    assert state.run.n_volumes == 10 and state.run.tr_s == 1.0
    assert state.run.conditions == ("rest", "regulate")
    feedback(state, 0, 0.4, 2.0)
    assert state.instruction() == "Raise the bar"
    feedback(state, 1, 0.5, 3.0, condition="rest")
    assert state.instruction() == "rest"  # no instruction: the condition's name
    state.handle("run", body("run", event="end"), 4.0)
    assert state.phase == "ended" and state.t_phase == 4.0
    assert state.bar_value == 0.5  # kept for the closing screen
    # Feedback of a finished run and a repeated start no longer change anything.
    assert not feedback(state, 2, 0.9, 5.0)
    start(state, 6.0, repeat=True)
    assert state.phase == "ended" and state.bar_value == 0.5


def test_abort_and_heartbeat_end_the_run():
    state = ScreenState()
    start(state)
    state.handle("run", body("run", event="abort"), 1.0)
    assert state.phase == "ended"

    state = ScreenState()
    state.handle("heartbeat", body("heartbeat", source="rtnf", state="running"), 1.0)
    assert state.phase == "running"
    state.handle("heartbeat", body("heartbeat", source="rtnf", state="ended"), 2.0)
    assert state.phase == "ended"


def test_feedback_before_start_and_late_start_fill_in_run_info():
    state = ScreenState()
    feedback(state, 5, 0.3, 1.0)  # screen joined late
    assert state.phase == "running" and state.run is None
    assert state.instruction() == "regulate"
    start(state, 2.0, repeat=True)
    assert state.instruction() == "Raise the bar" and state.bar_value == 0.3


def test_stale_index_is_ignored_and_equal_index_updates():
    state = ScreenState()
    start(state)
    assert feedback(state, 3, 0.6, 1.0)
    assert not feedback(state, 2, 0.1, 2.0)
    assert state.feedback.index == 3 and state.bar_value == 0.6
    assert feedback(state, 3, 0.65, 3.0)
    assert state.bar_value == 0.65


def test_null_value_holds_previous_level():
    state = ScreenState()
    start(state)
    feedback(state, 0, None, 1.0)
    assert state.bar_value is None and not state.has_value  # nothing to hold yet
    feedback(state, 1, 0.42, 2.0)
    feedback(state, 2, None, 3.0)
    assert state.bar_value == 0.42
    assert not state.has_value
    assert state.feedback.index == 2 and state.feedback.reason == "censored"
    feedback(state, 3, 0.1, 4.0)
    assert state.has_value and state.bar_value == 0.1


def test_unknown_fields_are_ignored():
    state = ScreenState()
    start(state, future_field={"nested": [1, 2]}, colour="blue")
    feedback(state, 0, 0.7, 1.0, kind="continuous", extra=[None], t_published=0.5)
    assert state.bar_value == 0.7 and state.phase == "running"
    # Heartbeats of other screens say nothing about rtnf.
    state2 = ScreenState()
    assert not state2.handle("heartbeat", body("heartbeat", source="stimulus", state="ended"), 1)
    assert state2.phase == "waiting" and state2.t_last_message is None


def test_connection_lost_after_timeout():
    state = ScreenState(heartbeat_timeout_s=3.0)
    assert not state.connection_lost(1e9)  # never heard from rtnf: just waiting
    state.handle("heartbeat", body("heartbeat", source="rtnf", state="waiting"), 100.0)
    assert not state.connection_lost(102.9)
    assert state.connection_lost(103.1)
    feedback(state, 0, 0.5, 103.5)
    assert not state.connection_lost(104.0)


@pytest.mark.parametrize("end", [
    ("run", {"event": "end", "reason": None}),
    ("run", {"event": "abort", "reason": "stopped by the operator"}),  # rtnf's Ctrl-C
    ("heartbeat", {"source": "rtnf", "state": "ended", "last_index": 0}),
])
def test_no_connection_lost_after_the_run_ended(end):
    """rtnf is quiet after it said the run ended: that is the end, not a lost link."""
    topic, fields = end
    state = ScreenState(heartbeat_timeout_s=3.0)
    start(state, 100.0)
    feedback(state, 0, 0.5, 101.0)
    state.handle(topic, body(topic, **fields), 102.0)
    assert state.phase == "ended"
    assert not state.connection_lost(105.1) and not state.connection_lost(1e9)
    # The next run is watched again.
    start(state, 200.0, run_id="run-2")
    assert not state.connection_lost(202.9) and state.connection_lost(203.1)


def test_run_started_by_its_start_message_or_heartbeat():
    state = ScreenState()
    assert not state.started
    state.handle("heartbeat", body("heartbeat", source="rtnf", state="waiting"), 1.0)
    assert state.started and state.phase == "waiting"  # rtnf's run waits for its first volume
    state = ScreenState()
    state.handle("heartbeat", body("heartbeat", "", source="rtnf", state="waiting"), 1.0)
    assert not state.started  # no run named
    start(state, 2.0)
    assert state.started and state.phase == "running"


def test_get_ready_text_is_validated_like_the_other_texts():
    from rtnf.wire.display import MAX_STATE_TEXT, DisplayConfigError, parse_display

    assert parse_display({}).texts.get_ready == "Get ready"
    assert parse_display({"texts": {"get_ready": "Keep still"}}).texts.get_ready == "Keep still"
    for key in ("get_ready", "waiting", "ended", "lost"):
        with pytest.raises(DisplayConfigError, match=f"'display.texts.{key}'.*at most {MAX_STATE_TEXT}"):
            parse_display({"texts": {key: "x" * (MAX_STATE_TEXT + 1)}})
    with pytest.raises(DisplayConfigError, match="'display.texts.get_ready'.*valid string"):
        parse_display({"texts": {"get_ready": 3}})


def test_new_run_resets_state():
    state = ScreenState()
    start(state)
    feedback(state, 7, 0.9, 1.0)
    state.handle("run", body("run", event="end"), 2.0)
    start(state, 3.0, run_id="run-2", instructions={})
    assert state.run_id == "run-2" and state.phase == "running"
    assert state.feedback is None and state.bar_value is None
    assert feedback(state, 0, 0.2, 4.0, run_id="run-2")  # index 0 < 7 but a new run
    assert state.bar_value == 0.2 and state.instruction() == "regulate"
    # A heartbeat outside any run (empty run_id) does not reset anything.
    state.handle("heartbeat", body("heartbeat", run_id="", source="rtnf", state="running"), 5)
    assert state.run_id == "run-2" and state.bar_value == 0.2


@pytest.mark.parametrize(
    "topic, fields",
    [
        ("feedback", {"index": "3", "value": 0.5}),
        ("feedback", {"index": -1, "value": 0.5}),
        ("feedback", {"value": 0.5}),
        ("feedback", {"index": 1, "value": 1.5}),
        ("feedback", {"index": 1, "value": "high"}),
        ("feedback", {"index": True, "value": 0.5}),
        ("feedback", {"index": 1, "value": 0.5, "run_id": 12}),
        ("run", {"event": "pause"}),
        ("run", {"event": "start", "instructions": ["Raise the bar"]}),
        ("run", {"event": "start", "n_volumes": 2.5}),
        ("heartbeat", {"state": "sleeping"}),
    ],
)
def test_invalid_fields_raise_and_leave_state_untouched(topic, fields):
    state = ScreenState()
    start(state, 1.0)
    feedback(state, 2, 0.4, 2.0)
    before = (state.phase, state.run, state.feedback, state.bar_value, state.t_last_message)
    with pytest.raises(MessageError):
        state.handle(topic, body(topic, **fields), 9.0)
    assert (state.phase, state.run, state.feedback, state.bar_value,
            state.t_last_message) == before


def test_value_round_off_is_clipped():
    state = ScreenState()
    feedback(state, 0, 1.0 + 1e-9, 1.0)
    assert state.bar_value == 1.0


# --------------------------------------------------------------------------- #
# FeedbackLink over real sockets
# --------------------------------------------------------------------------- #
@pytest.fixture
def pub():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()
    ctx.term()


def _free_address() -> str:
    """A loopback TCP address nobody listens on (plain socket: closes synchronously)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _sync(sock, link: FeedbackLink, timeout_s: float = 5.0) -> None:
    """Send heartbeats until the link hears one (PUB drops messages sent before it connects)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        sock.send_multipart(encode("heartbeat", RUN, {"source": "rtnf", "state": "waiting"}))
        if link.receive(50):
            return
    raise AssertionError("the link never received a heartbeat")


def test_link_skips_malformed_messages_with_one_warning_each(pub, caplog):
    sock, address = pub
    with FeedbackLink(address, _free_address(), heartbeat_timeout_s=3.0) as link:
        _sync(sock, link)
        garbage = [
            [b"feedback"],
            [b"feedback", b"{}", b"third"],
            [b"feedback", b"not json"],
            [b"feedback", b"\xff\xfe\x00"],
            [b"feedback", json.dumps({"schema": "rtnf.volume/1", "run_id": RUN}).encode()],
            [b"feedback", b"[1, 2, 3]"],
            [b"runaway", b"{}"],  # passes the 'run' prefix subscription
            encode("feedback", RUN, {"index": "zero", "value": 0.5}),
        ]
        with caplog.at_level(logging.WARNING, logger="stimulus.link"):
            for frames in garbage:
                sock.send_multipart(frames)
            sock.send_multipart(encode("feedback", RUN, {"index": 4, "value": 0.25}))
            received = []
            deadline = time.time() + 5
            while not received and time.time() < deadline:
                received = link.receive(100)
        assert [(m.topic, m.body["index"]) for m in received] == [("feedback", 4)]
        assert link.state.bar_value == 0.25
        assert link.n_malformed == len(garbage)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == len(garbage)


def test_link_survives_oversized_message(pub):
    sock, address = pub
    with FeedbackLink(address, _free_address()) as link:
        _sync(sock, link)
        sock.send_multipart([b"feedback", b" " * (MAX_MESSAGE_BYTES + 1)])
        # libzmq drops the offending connection and reconnects: keep sending.
        deadline = time.time() + 5
        while link.state.feedback is None and time.time() < deadline:
            sock.send_multipart(encode("feedback", RUN, {"index": 1, "value": 0.5}))
            link.receive(50)
        assert link.state.feedback is not None and link.state.feedback.index == 1


def test_link_poll_respects_timeout(pub):
    _, address = pub
    with FeedbackLink(address, _free_address()) as link:
        t0 = time.perf_counter()
        assert link.poll(30) == []
        # 30 ms, not 30 s (the unit) nor for ever; the bound leaves a loaded machine's scheduling delays aside
        assert time.perf_counter() - t0 < 3.0


def test_link_publishes_heartbeat_and_displayed(pub):
    _, address = pub
    ack = _free_address()
    with FeedbackLink(address, ack) as link:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(ack)
        try:
            deadline = time.time() + 5
            got = {}
            # (an XPUB applies a new subscription at its next call: keep going until both arrived)
            while not {"displayed", "heartbeat"} <= set(got) and time.time() < deadline:
                link.send_heartbeat("waiting", last_index=None)
                link.send_displayed(index=3, value=None, condition="rest", state="running",
                                    t_received=1.0, t_displayed=2.0)
                if sub.poll(50):
                    while sub.poll(0):
                        frames = sub.recv_multipart()
                        got[frames[0].decode()] = json.loads(frames[1])
        finally:
            sub.close(linger=0)
    assert got["heartbeat"]["source"] == "stimulus" and got["heartbeat"]["state"] == "waiting"
    assert got["displayed"]["index"] == 3 and got["displayed"]["value"] is None
    assert got["displayed"]["t_displayed"] == 2.0


def test_link_reports_busy_ack_address(pub):
    _, address = pub
    ack = _free_address()
    with FeedbackLink(address, ack):
        with pytest.raises(RuntimeError, match="Cannot connect to rtnf"):
            FeedbackLink(address, ack)


# --------------------------------------------------------------------------- #
# Geometry, xvfb helper, CLI options
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("size", [(1024, 768), (801, 601), (640, 480)])
def test_bar_geometry_on_whole_pixels(size):
    g = bar_geometry(size)
    assert g.height == round(BAR_HEIGHT_FRAC * size[1]) and g.width == BAR_WIDTH_PX
    # Edges measured from the window's bottom-left corner are whole pixels.
    assert (g.bottom + size[1] / 2) % 1 == 0 and (g.left + size[0] / 2) % 1 == 0
    assert g.fill_height(0.5) == round(0.5 * g.height)
    assert g.fill_height(None) == 0 and g.fill_height(2.0) == g.height


def test_display_prefix(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":7")
    assert xvfb.display_prefix() == []
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setattr(xvfb.shutil, "which", lambda name: "/usr/bin/xvfb-run")
    assert xvfb.display_prefix() == ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"]
    monkeypatch.setattr(xvfb.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="install the Debian package xvfb"):
        xvfb.display_prefix()


def test_cli_options():
    parser = build_parser()
    args = parser.parse_args(["--size", "800x600", "--target", "0.5", "--exit-after-end", "1"])
    assert args.size == [800, 600] and args.target == 0.5 and args.exit_after_end == 1.0
    assert args.max_fps is None and args.mirror is None  # not given: the config decides
    cfg = display_config(args)
    assert cfg.size == [800, 600] and cfg.bar.target == 0.5 and cfg.max_fps == 60.0
    for bad in (["--size", "800"], ["--target", "1.5"], ["--max-fps", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
