"""The real feedback screen (``python -m stimulus``) under Xvfb, driven over ZeroMQ.

Each test plays rtnf: it binds a PUB on a free loopback port, starts the
screen as a subprocess, listens to the screen's acknowledgements on a SUB, and
checks the screenshots pixel by pixel against :mod:`stimulus.geometry`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import socket
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import zmq

from rtnf.wire.messages import MAX_MESSAGE_BYTES, encode, schema_for
from stimulus.geometry import (
    BAR_BG,
    BAR_FILL,
    LOST_COLOR,
    TARGET_COLOR,
    bar_geometry,
    to_image_col,
    to_image_row,
)
from stimulus.xvfb import display_prefix

pytestmark = [
    pytest.mark.display,
    pytest.mark.skipif(importlib.util.find_spec("psychopy") is None,
                       reason="PsychoPy is not installed (pip install rtnf[display])"),
    pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("xvfb-run") is None,
                       reason="Xvfb/xvfb-run not found: install the Debian package xvfb"),
]

SIZE = (640, 480)
RUN = "run-test"
START = {"event": "start", "tr_s": 1.0, "n_volumes": 10, "conditions": ["rest", "regulate"],
         "instructions": {"regulate": "Raise the bar"}}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def free_address() -> str:
    """A loopback TCP address nobody listens on (plain socket: closes synchronously)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def xdisplay():
    """A private Xvfb; screens started with it get SIGTERM directly (no xvfb-run shell)."""
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
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


class Rtnf:
    """The test's stand-in for rtnf: a PUB for messages and a SUB for the screen's replies."""

    def __init__(self, address: str, ack_address: str, bind: bool = True) -> None:
        self.ctx = zmq.Context()
        self.address = address
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        if bind:
            self.bind()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(ack_address)
        self.replies: list[tuple[str, dict]] = []

    def bind(self) -> None:
        self.pub.bind(self.address)

    def send(self, topic: str, **body: Any) -> None:
        self.pub.send_multipart(encode(topic, RUN, body))

    def heartbeat(self, state: str = "waiting") -> None:
        self.send("heartbeat", source="rtnf", state=state, last_index=None, t=time.time())

    def wait_for(self, pred: Callable[[str, dict], bool], timeout_s: float = 10.0,
                 meanwhile: Callable[[], None] | None = None, every_s: float = 0.05) -> dict:
        """Collect replies until one satisfies ``pred``; call ``meanwhile`` every ``every_s``."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if meanwhile is not None:
                meanwhile()
            if self.sub.poll(int(every_s * 1000)):
                while self.sub.poll(0):
                    topic, data = self.sub.recv_multipart()
                    reply = (topic.decode(), json.loads(data))
                    self.replies.append(reply)
                    if pred(*reply):
                        return reply[1]
        raise AssertionError(f"no matching reply within {timeout_s} s; got {self.replies[-5:]}")

    def wait_up(self, proc: subprocess.Popen, timeout_s: float = 20.0) -> dict:
        """Wait for the screen's own heartbeat (it is up and its ack socket is reachable)."""
        def check_alive() -> None:
            assert proc.poll() is None, f"screen exited early with {proc.returncode}"
            self.heartbeat()  # PUB drops what it sends before the screen connects
        return self.wait_for(lambda t, b: t == "heartbeat" and b["source"] == "stimulus",
                             timeout_s, check_alive, every_s=0.1)

    def acked(self, index: int, timeout_s: float = 10.0,
              meanwhile: Callable[[], None] | None = None) -> dict:
        return self.wait_for(lambda t, b: t == "displayed" and b["index"] == index,
                             timeout_s, meanwhile)

    def start_run_and_show(self, index: int, value: float | None) -> dict:
        """Send the run start and a first feedback until it is acknowledged (syncs the link)."""
        def resend() -> None:
            self.send("run", **START)
            self.send("feedback", index=index, condition="regulate", value=value,
                      reason=None, kind="continuous", t_published=time.time())
        return self.acked(index, meanwhile=resend)

    def show(self, index: int, value: float | None, condition: str = "regulate") -> dict:
        self.send("feedback", index=index, condition=condition, value=value,
                  reason=None if value is not None else "censored", kind="continuous",
                  t_published=time.time())
        return self.acked(index)

    def close(self) -> None:
        self.pub.close()
        self.sub.close()
        self.ctx.term()


def start_screen(tmp_path: Path, address: str, ack: str, *extra: str,
                 display: str | None = None) -> tuple[subprocess.Popen, dict[str, Path]]:
    """Start ``python -m stimulus``; on ``display``, else the way rtnf's demo does (xvfb-run)."""
    paths = {"flip_log": tmp_path / "flips.csv", "screenshot": tmp_path / "screen.png",
             "stderr": tmp_path / "stderr.txt"}
    env = dict(os.environ)
    if display is None:
        env.pop("DISPLAY", None)
        old = os.environ.pop("DISPLAY", None)
        try:
            prefix = display_prefix()
        finally:
            if old is not None:
                os.environ["DISPLAY"] = old
        assert prefix[:2] == ["xvfb-run", "-a"]
    else:
        env["DISPLAY"] = display
        prefix = []
    cmd = prefix + [
        sys.executable, "-m", "stimulus", "--address", address, "--ack-address", ack,
        "--size", f"{SIZE[0]}x{SIZE[1]}", "--flip-log", str(paths["flip_log"]),
        "--screenshot", str(paths["screenshot"]), *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=paths["stderr"].open("w"))
    return proc, paths


def stop(proc: subprocess.Popen, paths: dict[str, Path], sig: int | None = signal.SIGTERM) -> None:
    """Signal the screen (unless it exits by itself) and check it exited cleanly."""
    if sig is not None:
        proc.send_signal(sig)
    try:
        rc = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, paths["stderr"].read_text()[-3000:]


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def bar_column(img: np.ndarray) -> tuple[np.ndarray, Any]:
    """Pixels of the column through the bar's centre, between the bar's top and bottom."""
    assert img.shape[:2] == (SIZE[1], SIZE[0])
    g = bar_geometry(SIZE)
    col = to_image_col(g.left + g.width / 2, SIZE)
    top, bottom = to_image_row(g.top, SIZE), to_image_row(g.bottom, SIZE)
    return img[top:bottom, col], g


def measured_level(img: np.ndarray) -> float:
    column, g = bar_column(img)
    fill = np.all(column == BAR_FILL, axis=1)
    bg = np.all(column == BAR_BG, axis=1)
    # Only fill and background inside the bar: nothing is drawn over it.
    assert np.all(fill | bg), "unexpected colours in the bar's column"
    assert fill.sum() + bg.sum() == g.height
    # Fill at the bottom, background on top.
    assert not np.any(fill[: bg.sum()]) and not np.any(bg[bg.sum():])
    return fill.sum() / (fill.sum() + bg.sum())


def read_flips(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
def test_run_acks_flip_log_and_final_screenshot(tmp_path):
    """The demo's way: xvfb-run, a whole run, and exit shortly after its end."""
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, "--exit-after-end", "0.3")
    try:
        hb = rtnf.wait_up(proc)
        assert hb["state"] == "waiting"
        values = [0.2, None, 0.55, 0.63]
        acks = [rtnf.start_run_and_show(0, values[0])]
        acks += [rtnf.show(i, v) for i, v in enumerate(values) if i > 0]
        rtnf.send("run", event="end")
        stop(proc, paths, sig=None)  # --exit-after-end
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()

    for i, (a, v) in enumerate(zip(acks, values)):
        assert a["index"] == i and a["value"] == v and a["condition"] == "regulate"
        assert a["run_id"] == RUN and a["schema"] == schema_for("displayed")
        assert a["t_received"] <= a["t_displayed"] < a["t_received"] + 1.0
    assert acks[1]["bar_value"] == 0.2  # the null volume held the previous level

    flips = read_flips(paths["flip_log"])
    by_index = {}
    for row in flips:
        by_index.setdefault(row["index"], row)
    assert all(str(i) in by_index for i in range(len(values)))
    for i, a in enumerate(acks):  # the ack stamps the first flip that showed the index
        assert float(by_index[str(i)]["t_flip"]) == pytest.approx(a["t_displayed"], abs=1e-5)
    assert by_index["1"]["has_value"] == "0" and float(by_index["1"]["value"]) == 0.2
    assert flips[-1]["phase"] == "ended"
    t = [float(r["t_flip"]) for r in flips]
    assert all(b >= a for a, b in zip(t, t[1:]))
    # Capped by the clock at 60 fps (Xvfb has no vsync to do it): without the
    # cap Xvfb flips every fraction of a millisecond.
    intervals = np.diff(t)
    assert np.median(intervals) >= 0.9 / 60
    assert intervals.min() >= 0.45 / 60

    img = read_png(paths["screenshot"])
    g = bar_geometry(SIZE)
    level = measured_level(img)
    assert abs(level * g.height - 0.63 * g.height) <= 2
    # Target ticks at 0.75 beside the bar, on both sides.
    row = to_image_row(g.level_y(0.75), SIZE) - 1
    for col in (to_image_col(g.left - 30, SIZE), to_image_col(g.left + g.width + 30, SIZE)):
        assert tuple(img[row, col]) == TARGET_COLOR


@pytest.mark.parametrize("value", [0.3, 0.9])
def test_screenshot_shows_value(tmp_path, xdisplay, value):
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, display=xdisplay)
    try:
        rtnf.wait_up(proc)
        a = rtnf.start_run_and_show(3, value)
        assert a["value"] == value and a["state"] == "running"
        stop(proc, paths)  # SIGTERM saves the screenshot and exits 0
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    level = measured_level(read_png(paths["screenshot"]))
    g = bar_geometry(SIZE)
    assert abs(level * g.height - value * g.height) <= 2
    assert read_flips(paths["flip_log"])[-1]["index"] == "3"


def test_malformed_messages_are_skipped(tmp_path, xdisplay):
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, display=xdisplay)
    try:
        rtnf.wait_up(proc)
        rtnf.start_run_and_show(0, 0.5)
        garbage = [
            [b"feedback"],
            [b"feedback", b"{}", b"third frame"],
            [b"feedback", b"not json at all"],
            [b"feedback", b"\xff\xfe\xfd"],
            [b"feedback", json.dumps({"schema": "rtnf.run/1", "run_id": RUN}).encode()],
            [b"feedback", json.dumps({"schema": schema_for("feedback"), "run_id": RUN,
                                      "index": "one", "value": 0.9}).encode()],
            [b"run", json.dumps({"schema": schema_for("run"), "event": "explode"}).encode()],
            [b"runaway", b"{}"],
        ]
        for frames in garbage:
            rtnf.pub.send_multipart(frames)
        # The screen counts what it skipped in its heartbeat.
        hb = rtnf.wait_for(lambda t, b: t == "heartbeat" and b["n_malformed"] >= len(garbage))
        assert hb["n_malformed"] == len(garbage) and hb["last_index"] == 0
        # Oversized: libzmq drops the connection, the screen reconnects.
        rtnf.pub.send_multipart([b"feedback", b"x" * (MAX_MESSAGE_BYTES + 1)])
        a = rtnf.acked(1, meanwhile=lambda: rtnf.send(
            "feedback", index=1, condition="regulate", value=0.8, reason=None))
        assert a["value"] == 0.8
        assert proc.poll() is None
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    log = paths["stderr"].read_text()
    assert log.count("Skipped a malformed message") == len(garbage)
    assert "Traceback" not in log
    assert measured_level(read_png(paths["screenshot"])) == pytest.approx(0.8, abs=2 / 288)


def test_screen_started_before_rtnf_and_connection_lost(tmp_path, xdisplay):
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack, bind=False)
    proc, paths = start_screen(tmp_path, address, ack, "--heartbeat-timeout", "0.5",
                               display=xdisplay)
    try:
        hb = rtnf.wait_up(proc)  # up although nobody publishes yet
        assert hb["state"] == "waiting" and hb["connection_lost"] is False
        rtnf.bind()
        a = rtnf.start_run_and_show(0, 0.4)
        assert a["value"] == 0.4
        # rtnf goes silent: the screen says so.
        hb = rtnf.wait_for(lambda t, b: t == "heartbeat" and b["connection_lost"])
        assert hb["state"] == "running"
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    img = read_png(paths["screenshot"])
    assert np.all(img == LOST_COLOR, axis=2).sum() > 50  # the notice is drawn
    assert measured_level(img) == pytest.approx(0.4, abs=2 / 288)  # over the held screen
    assert read_flips(paths["flip_log"])[-1]["connection_lost"] == "1"


def screen_beat(pred: Callable[[dict], bool]) -> Callable[[str, dict], bool]:
    return lambda t, b: t == "heartbeat" and b["source"] == "stimulus" and pred(b)


@pytest.mark.parametrize("event, reason", [("end", None), ("abort", "stopped by the operator")])
def test_normal_end_shows_no_connection_lost(tmp_path, xdisplay, event, reason):
    """What rtnf sends at the run's end or the operator's Ctrl-C, then silence: only the closing text."""
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, "--heartbeat-timeout", "0.5",
                               display=xdisplay)
    try:
        rtnf.wait_up(proc)
        rtnf.start_run_and_show(0, 0.4)
        # rtnf/run/session.py, _RunLoop.finish: the run message, then a heartbeat "ended".
        rtnf.send("run", **{**START, "event": event, "reason": reason})
        rtnf.heartbeat("ended")
        rtnf.wait_for(screen_beat(lambda b: b["state"] == "ended"))
        t_end = time.time()
        hb = rtnf.wait_for(screen_beat(lambda b: b["t"] > t_end + 1.5))  # 3 x the timeout
        assert hb["connection_lost"] is False and hb["view"] == "ended"
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    img = read_png(paths["screenshot"])
    assert np.all(img == LOST_COLOR, axis=2).sum() == 0
    assert np.all(img[: SIZE[1] // 6] == (255, 255, 255), axis=2).sum() > 50  # the end text
    assert measured_level(img) == pytest.approx(0.4, abs=2 / 288)  # above the final bar
    ended = [r for r in read_flips(paths["flip_log"]) if r["phase"] == "ended"]
    assert ended and float(ended[-1]["t_flip"]) > t_end + 1.5
    assert all(r["connection_lost"] == "0" for r in ended)


def test_get_ready_until_the_first_volume(tmp_path, xdisplay):
    """After the run's start and before its first volume: "Get ready", no empty thermometer."""
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, display=xdisplay)
    try:
        rtnf.wait_up(proc)
        hb = rtnf.wait_for(screen_beat(lambda b: b["state"] == "running"),
                           meanwhile=lambda: rtnf.send("run", **START), every_s=0.2)
        assert hb["view"] == "get_ready" and hb["last_index"] is None
        assert hb["connection_lost"] is False
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    img = read_png(paths["screenshot"])
    assert np.all(img == BAR_BG, axis=2).sum() < 50 and np.all(img == BAR_FILL, axis=2).sum() == 0
    middle = img[SIZE[1] // 3: SIZE[1] * 2 // 3]
    assert np.all(middle == (255, 255, 255), axis=2).sum() > 50  # the get-ready text
    assert read_flips(paths["flip_log"])[-1]["view"] == "get_ready"


# --------------------------------------------------------------------------- #
# Glide, intermittent score, keys, restarts, config file
# --------------------------------------------------------------------------- #
def test_glide_and_intermittent_score_end_to_end(tmp_path, xdisplay):
    """The flip log shows frames between the old and the new level; a score is acknowledged."""
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, "--glide", "0.4", display=xdisplay)
    try:
        rtnf.wait_up(proc)
        rtnf.start_run_and_show(0, 0.1)
        time.sleep(0.5)  # the first value has settled
        a = rtnf.show(1, 0.9)
        assert a["bar_value"] == 0.9 and a["bar_shown"] < 0.9
        assert a["t_settled"] == pytest.approx(a["t_received"] + 0.4)
        time.sleep(0.5)
        rtnf.send("feedback", index=2, condition="regulate", value=0.7, reason=None,
                  kind="intermittent", t_published=time.time())
        s = rtnf.acked(2)
        assert s["kind"] == "intermittent" and s["view"] == "score" and s["bar_value"] == 0.9
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    flips = read_flips(paths["flip_log"])
    shown = [(float(r["t_flip"]), float(r["bar_shown"])) for r in flips if r["index"] == "1"]
    between = [v for _, v in shown if 0.1 + 0.01 < v < 0.9 - 0.01]
    assert between, "no frame between the old and the new level"
    assert [v for _, v in shown] == sorted(v for _, v in shown)  # never backwards
    assert shown[-1][1] == pytest.approx(0.9)
    assert any(r["view"] == "score" for r in flips)
    # The latency summary is written beside the flip log at exit.
    summary = json.loads(paths["flip_log"].with_suffix(".latency.json").read_text())
    assert summary["receive_to_flip"]["n"] == 3
    assert 0 <= summary["receive_to_flip"]["median_ms"] < 500


@pytest.mark.skipif(shutil.which("xdotool") is None,
                    reason="xdotool not found: apt-get install xdotool")
def test_trigger_and_response_keys(tmp_path, xdisplay):
    """Real X key presses (xdotool) are logged with times and counted in the heartbeat."""
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    keys = tmp_path / "keys.csv"
    proc, paths = start_screen(tmp_path, address, ack, "--trigger-key", "t", "--key-log",
                               str(keys), display=xdisplay)
    env = {**os.environ, "DISPLAY": xdisplay}

    def press(*names: str) -> None:
        # No window manager: the key goes to the window under the pointer
        # (PsychoPy's window sits at the top-left corner).
        subprocess.run(["xdotool", "mousemove", "20", "20"], env=env, check=True)
        subprocess.run(["xdotool", "key", *names], env=env, check=True)

    try:
        rtnf.wait_up(proc)
        rtnf.start_run_and_show(0, 0.5)
        t_sent = time.time()
        hb = rtnf.wait_for(lambda t, b: t == "heartbeat" and b.get("n_triggers", 0) >= 1,
                           timeout_s=10, meanwhile=lambda: press("t"), every_s=1.0)
        press("2")
        hb = rtnf.wait_for(lambda t, b: t == "heartbeat" and b.get("n_responses", 0) >= 1)
        assert hb["last_response"]["key"] == "2"
        assert t_sent <= hb["t_last_trigger"] <= time.time()
        press("Escape")  # the quit key stops the screen cleanly
        stop(proc, paths, sig=None)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    rows = read_flips(keys)
    assert [r["role"] for r in rows][:1] == ["trigger"] and rows[0]["key"] == "t"
    assert any(r["role"] == "response" and r["key"] == "2" for r in rows)
    assert all(r["run_id"] == RUN and r["index"] == "0" for r in rows)
    assert "stopping (escape key)" in paths["stderr"].read_text()


def test_reconnects_after_rtnf_restarts(tmp_path, xdisplay):
    """rtnf stops and a new rtnf binds the same address: the screen follows the new run."""
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, display=xdisplay)
    try:
        rtnf.wait_up(proc)
        rtnf.start_run_and_show(0, 0.3)
        rtnf.close()  # rtnf gone
        rtnf = Rtnf(address, ack)  # restarted on the same address

        def resend() -> None:
            rtnf.pub.send_multipart(encode("run", "run-2", {**START}))
            rtnf.pub.send_multipart(encode("feedback", "run-2", {
                "index": 0, "condition": "regulate", "value": 0.85, "reason": None}))
        a = rtnf.wait_for(lambda t, b: t == "displayed" and b["run_id"] == "run-2",
                          meanwhile=resend)
        assert a["index"] == 0 and a["value"] == 0.85
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    assert measured_level(read_png(paths["screenshot"])) == pytest.approx(0.85, abs=2 / 288)


def test_config_file_sets_the_display(tmp_path, xdisplay):
    """--config reads [display] (here a per-condition bar colour); a bad table exits 2, one line."""
    cfg = tmp_path / "session.toml"
    cfg.write_text('[session]\nsubject = "01"\n\n[display]\nmax_fps = 30\n\n'
                   '[display.conditions.regulate]\nbar_fill = "#00c000"\n', encoding="utf-8")
    address, ack = free_address(), free_address()
    rtnf = Rtnf(address, ack)
    proc, paths = start_screen(tmp_path, address, ack, "--config", str(cfg), display=xdisplay)
    try:
        rtnf.wait_up(proc)
        rtnf.start_run_and_show(0, 0.5)
        stop(proc, paths)
    finally:
        if proc.poll() is None:
            proc.kill()
        rtnf.close()
    img = read_png(paths["screenshot"])
    column, g = bar_column(img)
    assert np.all(column == (0, 192, 0), axis=1).sum() == round(0.5 * g.height)
    t = [float(r["t_flip"]) for r in read_flips(paths["flip_log"])]
    assert np.median(np.diff(t)) >= 0.9 / 30  # max_fps from the file

    cfg.write_text('[display.bar]\nglide_s = -1\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "stimulus", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "'display.bar.glide_s': -1" in out.stderr
