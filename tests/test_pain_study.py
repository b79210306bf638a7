"""Issue 17, the whole run: a pain study with up and down blocks and ratings after each block.

The example ``config/pain_updown.toml`` (gauge in up and down blocks, fixation at rest, pain intensity and
unpleasantness after each regulation block and after the run, button-box keys 1/2/3), shortened to
rest 8, up 8, rest 8, down 8, rest 8 volumes, runs as real processes: scanner_sim (whose ACC rises 2 % in
"up" and falls 2 % in "down" blocks), ``rtnf run`` and the PsychoPy screen under a private Xvfb, with the
ratings answered by X key presses (xdotool). Checked:

- the ratings file: every rating with the value its keys set, its block and condition, and the volume on
  screen when it appeared (the first volume of the next block for the first question after a block);
- the console's state and page list every rating;
- the report joins every rating with its block and that block's direction;
- the table's ``direction`` column, and the value rtnf sent and the screen received, above the rest level in
  both the up and the down blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest

from tests.helpers import CONFIG_DIR, requires_display, toml_text
from tests.test_ratings import _acks, _rows, xdisplay  # noqa: F401  (xdisplay: the private Xvfb fixture)

BLOCK = 8
STEPS = [("rest", BLOCK), ("up", BLOCK), ("rest", BLOCK), ("down", BLOCK)]
N = len(STEPS) * BLOCK + BLOCK  # a last rest block (baseline, not in the pattern): both ratings fall inside the run
UP, DOWN = 1, 3  # block numbers (0-based, as the table's block column)
# What the participant presses at each scale (the marker starts at 50; 1: 5 left, 2: 5 right, 3 confirms).
SCRIPT = {("intensity", 1): ["2", "2", "2", "3"], ("unpleasantness", 1): ["1", "3"],
          ("intensity", 2): ["2", "3"], ("unpleasantness", 2): ["1", "1", "1", "1", "3"],
          ("run_intensity", 1): ["3"], ("run_unpleasantness", 1): ["2", "3"]}
# (question, value, block, condition, moment)
EXPECTED = [("intensity", 65.0, UP, "up", "after_block"), ("unpleasantness", 45.0, UP, "up", "after_block"),
            ("intensity", 55.0, DOWN, "down", "after_block"), ("unpleasantness", 30.0, DOWN, "down", "after_block"),
            ("run_intensity", 50.0, None, None, "after_run"), ("run_unpleasantness", 55.0, None, None, "after_run")]
DIRECTION = {"rest": "n/a", "up": "increase", "down": "decrease"}


def _session_config(folder) -> dict:
    """The example config with a short protocol, this test's folders, and no preview images."""
    data = tomllib.loads((CONFIG_DIR / "pain_updown.toml").read_text(encoding="utf-8"))
    data["scanner"].update(export_dir=str(folder / "export"), n_volumes=N, dummy_volumes=0)
    data["protocol"]["pattern"] = {"steps": [{"condition": c, "duration": d} for c, d in STEPS], "repeat": 1}
    data["feedback"]["min_baseline_volumes"] = 2
    data["publish"] = {"preview": False}
    data["output"]["dir"] = str(folder / "outputs")
    return data


@pytest.fixture(scope="module")
def pain_run(tmp_path_factory, xdisplay):  # noqa: F811
    """scanner_sim, rtnf run and the screen as processes; the ratings answered with xdotool.

    Returns (cfg, messages as (topic, body), presses as (question, occurrence), truth.tsv's columns).
    """
    from rtnf.apps.demo import Listener, Processes, free_address, screen_command, sim_spec, wait_ready, write_toml
    from rtnf.config import load_config
    from scanner_sim.synth import read_truth_tsv

    tmp_path = tmp_path_factory.mktemp("pain")
    cfg_path = tmp_path / "pain_updown.toml"
    cfg_path.write_text(toml_text(_session_config(tmp_path)), encoding="utf-8")
    address, ack = free_address(), free_address()
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = sim_spec(cfg, amplitude_pct=2.0, noise_pct=0.5, seed=7)
    (acc,) = spec["regions"]
    spec["regions"] = [{**acc, "name": "accup", "condition": "up", "amplitude_pct": 2.0},
                       {**acc, "name": "accdown", "condition": "down", "amplitude_pct": -2.0}]
    write_toml(spec, tmp_path / "spec.toml")
    env = {**os.environ, "DISPLAY": xdisplay}
    listener, procs = Listener([address, ack]), Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    presses: list[tuple[str, int]] = []
    old_display = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = xdisplay  # the screen opens its window there
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
        deadline = time.time() + 180
        while procs.procs["rtnf"].poll() is None or procs.procs["screen"].poll() is None:
            assert time.time() < deadline, (logs / "rtnf.log").read_text()[-3000:]
            for topic, b in listener.poll(0.1):
                # The screen sends a heartbeat as soon as a new scale is on screen: answer it.
                if topic == "heartbeat" and b.get("source") == "stimulus" and b.get("rating") \
                        and b.get("n_ratings", 0) > handled:
                    handled = b["n_ratings"]
                    question = b["rating"]
                    seen[question] = seen.get(question, 0) + 1
                    presses.append((question, seen[question]))
                    keys = SCRIPT.get((question, seen[question]))
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
    return cfg, listener.messages, presses, read_truth_tsv(tmp_path / "truth" / "truth.tsv")


def _na(text: str, kind=float):
    return None if text == "n/a" else kind(text)


@requires_display()
def test_every_rating_is_recorded_with_its_keys_value_and_the_volume_on_screen(pain_run):
    cfg, messages, presses, _ = pain_run
    from rtnf.run.outputs import RATINGS_EVENTS, output_path

    assert presses == list(SCRIPT), presses
    rows = _rows(output_path(cfg, RATINGS_EVENTS))
    got = [(r["trial_type"], _na(r["value"]), _na(r["block"], int), _na(r["condition"], str), r["moment"])
           for r in rows]
    assert got == EXPECTED, rows
    assert all(r["timed_out"] == "0" and r["response"] == "3" for r in rows)
    run_id = next(b["run_id"] for t, b in messages if t == "feedback")
    blocks = next(b for t, b in messages if t == "run")["blocks"]
    assert [(b["condition"], b["start"], b["stop"]) for b in blocks[:4]] == [
        (c, k * BLOCK, (k + 1) * BLOCK) for k, (c, _) in enumerate(STEPS)]
    acks = _acks(messages, run_id)
    assert sorted(acks) == list(range(N))
    for r in rows:
        t_onset, index = float(r["t_onset"]), int(r["volume_index"])
        shown = max(i for i, a in acks.items() if a["t_displayed"] <= t_onset)
        assert index == shown, (r, shown)  # the volume the screen showed when the scale appeared
        if r["moment"] == "after_block":
            nxt = blocks[int(r["block"])]["stop"]  # the next block's first volume
            assert nxt <= index < nxt + BLOCK, r
            if r["trial_type"] == "intensity":  # the first question after the block: shown with that volume
                assert index == nxt and t_onset >= acks[nxt]["t_displayed"], r
        else:
            assert index == N - 1


@requires_display()
def test_the_console_shows_every_rating(pain_run):
    _, messages, _, _ = pain_run
    pytest.importorskip("bokeh")
    from bokeh.document import Document

    from rtnf.apps.console.app import ConsolePage
    from rtnf.apps.console.state import RunState

    state = RunState(t_start=0.0)
    page = ConsolePage(Document(), state, clock=time.time)
    for k, (topic, b) in enumerate(messages):
        screen = topic in ("displayed", "keys", "rating") or (topic == "heartbeat" and b.get("source") == "stimulus")
        state.handle("screen" if screen else "rtnf", topic, b, float(k))
    page.tick()
    assert [(r["question"], r["value"], r["block"]) for r in state.ratings] == [e[:3] for e in EXPECTED]
    assert state.n_ratings == len(EXPECTED)
    for question, value, *_ in EXPECTED:
        assert f'data-question="{question}" data-value="{value}"' in page.ratings.text


@requires_display()
def test_the_report_shows_every_rating_with_its_block_and_direction(pain_run, tmp_path):
    cfg, _, _, _ = pain_run
    from rtnf.apps.report import write_report
    from rtnf.run.outputs import TIMESERIES, output_path

    page = write_report(output_path(cfg, TIMESERIES), tmp_path / "report").read_text(encoding="utf-8")
    table = re.search(r'<table class="num" id="ratings-by-block">(.*?)</table>', page, re.S).group(1)
    shown = {}
    for number, cells in re.findall(r'<tr data-block="(\d+)">(.*?)</tr>', table, re.S):
        condition = re.search(r"<td>(\w+) \((increase|decrease)\)</td>", cells).groups()
        answers = dict(re.findall(r'<td data-question="(\w+)">([\d.]+)</td>', cells))
        shown[int(number) - 1] = (condition, answers)
    assert shown == {UP: (("up", "increase"), {"intensity": "65.0", "unpleasantness": "45.0"}),
                     DOWN: (("down", "decrease"), {"intensity": "55.0", "unpleasantness": "30.0"})}
    other = page[page.index("<h3>Other ratings</h3>"):]
    for question, value in (("run_intensity", "50.0"), ("run_unpleasantness", "55.0")):
        assert re.search(rf"<td>{question}</td><td>after_run</td><td>[\d.]+</td><td>{value}</td>", other), question


@requires_display()
def test_up_and_down_blocks_record_their_direction_and_show_success_above_rest(pain_run):
    cfg, messages, _, truth = pain_run
    from rtnf.run.outputs import TIMESERIES, output_path

    rows = _rows(output_path(cfg, TIMESERIES))
    assert len(rows) == N
    assert [r["direction"] for r in rows] == [DIRECTION[r["condition"]] for r in rows]
    value = np.array([np.nan if r["feedback_value"] == "n/a" else float(r["feedback_value"]) for r in rows])
    # The value the screen received for each volume is the one rtnf recorded.
    acks = _acks(messages, next(b["run_id"] for t, b in messages if t == "feedback"))
    for i, a in acks.items():
        if a.get("value") is not None:
            assert a["value"] == pytest.approx(value[i], abs=1e-9), (i, a)
    # Judged in each block where the simulated ACC is near its plateau (up: +2 %, down: -2 %; its lagged
    # response in the rest block after a down block is an unflipped fall), and at rest where it is back.
    condition = np.array([r["condition"] for r in rows])
    up = (truth["activation_accup"] > 1.0) & (condition == "up")
    down = (truth["activation_accdown"] < -1.0) & (condition == "down")
    rest = (np.abs(truth["activation_accup"] + truth["activation_accdown"]) < 0.1) & (condition == "rest")
    rest[:BLOCK // 2] = False  # before the baseline is known
    assert up.sum() >= 4 and down.sum() >= 4 and rest.sum() >= 4
    level = np.nanmean(value[rest])
    assert np.nanmean(value[up]) > level + 0.15, (value[up], level)
    assert np.nanmean(value[down]) > level + 0.15, (value[down], level)
