"""Direction per condition (issue 17, point 1): up and down regulation in one run.

Each task condition says which way of the ROI's signal is success
(``[protocol] directions``); the shown value means success the same way in
both (the signal's sign is flipped before scaling in a "decrease" block), while
the ROI columns and ``feedback_signal`` stay what the ROI did. Checked by
hand-computed values of the feedback computer (fixed, adaptive, dynamic
scaling; intermittent scores), config errors, the wire fields, and against the
simulator's ground truth: a run whose ROI really rises in "up" and falls in
"down" blocks, replayed through rtnf, recorded and reported.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtnf.analysis.feedback import ExponentialSmoother, FeedbackComputer, scale
from rtnf.analysis.protocol import Block, Protocol, ProtocolError
from rtnf.analysis.roi_model import RoiValues
from rtnf.config import ConfigError, FeedbackConfig, load_config
from rtnf.wire.topics import FeedbackMessage, RunMessage, VolumeMessage
from tests.helpers import CONFIG_DIR, make_config, pattern

TR = 2.0
UPDOWN = {"protocol.pattern": pattern(rest=10, up=10, down=10, repeat=2), "scanner.n_volumes": 62,
          "protocol.directions": {"down": "decrease"}}


# ---------------------------------------------------------------- the feedback computer, by hand


def _protocol(steps: list[tuple[str, int]], directions: dict[str, str] | None = None) -> Protocol:
    """Blocks of the given (condition, volumes) in order; "rest" is the baseline."""
    blocks, t = [], 0.0
    for k, (cond, n) in enumerate(steps):
        if cond != "rest":
            blocks.append(Block(cond, t, n * TR, f"b{k}"))
        t += n * TR
    conditions = tuple(dict.fromkeys(["rest"] + [c for c, _ in steps]))
    return Protocol(tuple(blocks), "rest", conditions, TR, int(t / TR), directions or {})


STEPS = [("rest", 10), ("up", 10), ("rest", 10), ("down", 10)] * 2


def _feed(fc: FeedbackComputer, psc: list[float]) -> list:
    return [fc.step(i, [RoiValues(1000.0, 1000.0, p)], None) for i, p in enumerate(psc)]


def _psc(protocol: Protocol, up: float, down: float, lag: int = 0) -> list[float]:
    """The ROI's PSC per volume: ``up`` in up blocks, ``down`` in down blocks, 0 at rest, ``lag`` volumes late."""
    labels = protocol.labels()
    level = {"rest": 0.0, "up": up, "down": down}
    return [level[labels[i - lag]] if i >= lag else 0.0 for i in range(protocol.n_volumes)]


def _by_condition(protocol: Protocol, shown: list) -> dict[str, np.ndarray]:
    labels = protocol.labels()
    return {c: np.array([fb.value for fb, l in zip(shown, labels) if l == c]) for c in ("rest", "up", "down")}


def test_fixed_scaling_flips_the_signal_in_decrease_blocks_only():
    protocol = _protocol(STEPS, {"down": "decrease"})
    cfg = FeedbackConfig(roi="a", scaling="fixed", scale_range=[-1.0, 2.0])
    shown = _feed(FeedbackComputer(cfg, ["a"], protocol), _psc(protocol, up=1.0, down=-1.0))
    values = _by_condition(protocol, shown)
    # A rise of 1 % in "up" and a fall of 1 % in "down" are the same success: 2/3 of the bar; rest (0 %) at 1/3.
    assert np.allclose(values["up"], 2 / 3) and np.allclose(values["down"], 2 / 3)
    assert np.allclose(values["rest"], 1 / 3)
    labels = protocol.labels()
    for fb, cond in zip(shown, labels):
        # The recorded signal is the ROI's own; the direction says how the value reads it.
        assert fb.signal == {"rest": 0.0, "up": 1.0, "down": -1.0}[cond]
        assert fb.direction == {"rest": None, "up": "increase", "down": "decrease"}[cond]
        assert fb.success_signal == {"rest": 0.0, "up": 1.0, "down": 1.0}[cond]
    # Without directions the same down block empties the bar: the flip is what fills it.
    plain = _protocol(STEPS)
    unflipped = _by_condition(plain, _feed(FeedbackComputer(cfg, ["a"], plain), _psc(plain, up=1.0, down=-1.0)))
    assert np.allclose(unflipped["down"], 0.0)


def test_a_rise_in_a_decrease_block_lowers_the_bar():
    protocol = _protocol(STEPS, {"down": "decrease"})
    cfg = FeedbackConfig(roi="a", scaling="fixed", scale_range=[-1.0, 2.0])
    values = _by_condition(protocol, _feed(FeedbackComputer(cfg, ["a"], protocol), _psc(protocol, up=1.0, down=1.0)))
    assert np.allclose(values["down"], 0.0) and np.allclose(values["up"], 2 / 3)


def test_adaptive_scaling_treats_up_and_down_alike():
    # A large signal (5 %) makes the adaptive gain grow; a fall of 5 % in "down" must read as a rise of 5 % in "up".
    protocol = _protocol(STEPS, {"down": "decrease"})
    cfg = FeedbackConfig(roi="a", scaling="adaptive", scale_range=[-1.0, 2.0])
    fc = FeedbackComputer(cfg, ["a"], protocol)
    shown = _feed(fc, _psc(protocol, up=5.0, down=-5.0))
    assert fc._adaptive.gain > 1.0, "the test needs a gain that adapted"
    assert all(fb.value is not None for fb in shown)
    segments = protocol.segments()
    for seg in segments[4:]:  # from the second cycle on, the gain is set at each block's start
        block = [shown[i].value for i in range(seg.start, seg.stop)]
        assert len(set(block)) == 1, "within a block the gain stays"
    up2 = next(s for s in segments[4:] if s.condition == "up")
    down2 = next(s for s in segments[4:] if s.condition == "down")
    rest2 = next(s for s in segments[4:] if s.condition == "rest")
    v_up, v_down, v_rest = shown[up2.start].value, shown[down2.start].value, shown[rest2.start].value
    assert v_down > v_rest + 0.2 and v_up > v_rest + 0.2
    # The same signal size gives the same bar in both directions once the gain no longer changes.
    assert math.isclose(v_down, scale(5.0, *fc._adaptive.range), abs_tol=1e-12)
    # A run of up blocks only, of the same size, adapts the gain alike: the scaler sees magnitudes.
    ups = _protocol([("rest", 10), ("up", 10)] * 4)
    fc_up = FeedbackComputer(cfg, ["a"], ups)
    _feed(fc_up, _psc(ups, up=5.0, down=0.0))
    assert math.isclose(fc_up._adaptive.gain, fc._adaptive.gain, rel_tol=1e-9)


def test_dynamic_scaling_ranks_a_fall_in_a_decrease_block_as_success():
    protocol = _protocol(STEPS, {"down": "decrease"})
    cfg = FeedbackConfig(roi="a", scaling="dynamic")
    values = _by_condition(protocol, _feed(FeedbackComputer(cfg, ["a"], protocol), _psc(protocol, up=1.0, down=-1.0)))
    # After the first up block the range is [0, 1]: both kinds of block at the top, rest at the bottom.
    assert np.allclose(values["down"], 1.0) and np.allclose(values["up"][1:], 1.0)
    assert np.allclose(values["rest"][10:], 0.0)


def test_intermittent_scores_count_in_the_scored_blocks_direction():
    # up then down with no rest between: the up block's score comes (3 volumes of lag) inside the down block.
    protocol = _protocol([("rest", 10), ("up", 5), ("down", 5), ("rest", 10)], {"down": "decrease"})
    cfg = FeedbackConfig(roi="a", kind="intermittent", hemodynamic_lag_s=6.0, scaling="fixed", scale_range=[-1.0, 2.0])
    fc = FeedbackComputer(cfg, ["a"], protocol)
    shown = _feed(fc, _psc(protocol, up=1.0, down=-1.0, lag=3))
    scores = {i: fb for i, fb in enumerate(shown) if fb.value is not None}
    assert sorted(scores) == [17, 22]  # up block 10-14 ready at 17, down block 15-19 at 22
    up, down = scores[17], scores[22]
    assert protocol.labels()[17] == "down"  # the volume asks for a decrease, the score is of the up block
    assert (up.direction, up.signal) == ("increase", 1.0) and math.isclose(up.value, 2 / 3)
    assert (down.direction, down.signal) == ("decrease", -1.0) and math.isclose(down.value, 2 / 3)
    assert fc.direction(17) == "increase" and fc.direction(18) == "decrease" and fc.direction(22) == "decrease"
    assert shown[25].direction is None  # rest, between scores


def test_smoothing_works_on_the_rois_signal_before_the_flip():
    # up straight into down: the ROI's signal goes from +1 to -1 and the smoother follows the ROI, not the bar.
    protocol = _protocol([("rest", 10), ("up", 10), ("down", 10), ("rest", 10)], {"down": "decrease"})
    cfg = FeedbackConfig(roi="a", scaling="fixed", scale_range=[-1.0, 2.0], smoothing_alpha=0.5)
    psc = _psc(protocol, up=1.0, down=-1.0)
    shown = _feed(FeedbackComputer(cfg, ["a"], protocol), psc)
    smooth = ExponentialSmoother(0.5)
    for fb, p, cond in zip(shown, psc, protocol.labels()):
        expected = smooth(p)  # the ROI's smoothed signal, recorded as it is
        assert fb.signal == expected
        assert fb.value == scale(-expected if cond == "down" else expected, -1.0, 2.0)
    first_down = protocol.segments()[2].start
    # At the switch the smoothed ROI signal is still near 0 (halfway from +1 to -1): the bar starts from
    # the zero level, then rises as the signal keeps falling.
    assert abs(shown[first_down].signal) < 0.01 and shown[first_down + 3].value > shown[first_down].value + 0.2


def test_protocol_directions_default_to_increase_and_the_baseline_has_none():
    protocol = _protocol(STEPS, {"down": "decrease"})
    assert protocol.directions == {"up": "increase", "down": "decrease"}
    assert protocol.direction("rest") is None and protocol.direction("up") == "increase"
    with pytest.raises(ProtocolError, match="not a task condition"):
        _protocol(STEPS, {"rest": "decrease"})
    with pytest.raises(ProtocolError, match="invalid direction 'lower'"):
        _protocol(STEPS, {"down": "lower"})


# ---------------------------------------------------------------- config


def _config_error(tmp_path: Path, directions) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(make_config(tmp_path, {**UPDOWN, "protocol.directions": directions}))
    return str(info.value)


def test_config_directions_load(tmp_path):
    protocol = load_config(make_config(tmp_path, UPDOWN)).make_protocol()
    assert protocol.directions == {"up": "increase", "down": "decrease"}


def test_config_rejects_a_bad_word(tmp_path):
    msg = _config_error(tmp_path, {"down": "lower"})
    assert "'protocol.directions.down'" in msg and "'lower'" in msg
    assert "'increase'" in msg and "'decrease'" in msg


def test_config_rejects_an_unknown_condition(tmp_path):
    msg = _config_error(tmp_path, {"dwon": "decrease"})
    assert "'protocol.directions.dwon'" in msg and "not a condition" in msg and "'up', 'down'" in msg


def test_config_rejects_a_direction_for_the_baseline(tmp_path):
    msg = _config_error(tmp_path, {"rest": "decrease"})
    assert "'protocol.directions.rest'" in msg and "baseline" in msg and "'up', 'down'" in msg


def test_rtnf_check_exits_2_without_traceback_on_a_bad_direction(tmp_path):
    path = make_config(tmp_path, {**UPDOWN, "protocol.directions": {"down": "downwards"}})
    proc = subprocess.run([sys.executable, "-m", "rtnf", "check", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "protocol.directions.down" in proc.stdout + proc.stderr


def test_the_updown_example_decreases_in_down_blocks():
    protocol = load_config(CONFIG_DIR / "updown.toml").make_protocol()
    assert protocol.directions == {"up": "increase", "down": "decrease"}
    assert {s.condition for s in protocol.segments()} == {"rest", "up", "down"}


# ---------------------------------------------------------------- wire


def test_wire_fields_are_optional_and_checked():
    ok = FeedbackMessage.from_body({"index": 3, "value": 0.5, "direction": "decrease"})
    assert ok.direction == "decrease" and not ok.invalid
    bad = FeedbackMessage.from_body({"index": 3, "value": 0.5, "direction": "down"})
    assert bad.direction is None and "direction" in bad.invalid and bad.value == 0.5
    assert FeedbackMessage.from_body({"index": 3}).direction is None  # older rtnf: absent
    run = RunMessage.from_body({"event": "start", "directions": {"up": "increase", "down": "decrease"}})
    assert run.directions == {"up": "increase", "down": "decrease"} and not run.invalid
    assert VolumeMessage.from_body({"index": 0, "direction": None}).direction is None


# ---------------------------------------------------------------- a simulated run, against ground truth


@pytest.fixture(scope="module")
def updown_run(tmp_path_factory):
    """A run whose ACC rises 2 % in "up" and falls 2 % in "down" blocks, replayed through rtnf."""
    from rtnf.apps.demo import sim_spec
    from rtnf.apps.replay import ReplayFeeder
    from rtnf.run.publish import Publisher
    from rtnf.run.session import RunParts, run_session
    from scanner_sim.generate import generate_run

    root = tmp_path_factory.mktemp("updown")
    overrides = {**UPDOWN, "scanner.n_volumes": 80, "scanner.dummy_volumes": 0, "scanner.format": "nifti",
                 # rest, up, rest, down, twice: every task block has a baseline block before it
                 "protocol.pattern": {"steps": [{"condition": c, "duration": 10} for c in ("rest", "up", "rest", "down")],
                                      "repeat": 2},
                 "output.save_volumes": False, "output.dir": root / "out",
                 "publish.address": "inproc://rtnf-test-directions", "publish.preview": False}
    cfg_path = make_config(root, overrides)
    cfg = load_config(cfg_path)
    spec = sim_spec(cfg, amplitude_pct=2.0, noise_pct=0.5, seed=11)
    (acc,) = spec["regions"]
    spec["regions"] = [{**acc, "name": "accup", "condition": "up", "amplitude_pct": 2.0},
                       {**acc, "name": "accdown", "condition": "down", "amplitude_pct": -2.0}]
    g = generate_run(spec, root / "sim")

    sent: list[tuple[str, dict]] = []

    class Capture(Publisher):
        def send(self, topic, body):
            sent.append((topic, body))
            super().send(topic, body)

    def feeder(export, put):
        return ReplayFeeder(g.export_dir, export, put, 0.0, cfg.scanner.first_volume_number)

    result = run_session(cfg, cfg_path.read_text(encoding="utf-8"), feeder_factory=feeder,
                         parts=RunParts(publisher=Capture))
    assert result.ok, result
    return cfg, g, Path(result.timeseries), sent


def _rows(tsv: Path) -> list[dict[str, str]]:
    lines = tsv.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def _num(rows, column) -> np.ndarray:
    return np.array([np.nan if r[column] == "n/a" else float(r[column]) for r in rows])


def test_the_bar_shows_success_above_baseline_in_up_and_down_blocks(updown_run):
    cfg, g, tsv, _ = updown_run
    from scanner_sim.synth import read_truth_tsv

    truth = read_truth_tsv(g.truth_dir / "truth.tsv")
    true_act = truth["activation_accup"] + truth["activation_accdown"]  # what the ROI really did (% change)
    rows = _rows(tsv)
    value, signal, psc = _num(rows, "feedback_value"), _num(rows, "feedback_signal"), _num(rows, "acc_psc")
    # Judged where the true response is near its plateau, and at rest where it has returned.
    up = truth["activation_accup"] > 1.5
    down = truth["activation_accdown"] < -1.5
    rest = np.abs(true_act) < 0.1
    rest[:10] = False  # before the baseline is known
    assert up.sum() >= 10 and down.sum() >= 10 and rest.sum() >= 10
    # The ROI's own columns go the way the ROI went: up in "up", down in "down".
    assert np.nanmean(psc[down]) < -1.0 and np.nanmean(psc[up]) > 1.0
    assert np.nanmean(signal[down]) < -1.0
    ok = np.isfinite(signal)
    assert np.corrcoef(signal[ok], true_act[ok])[0, 1] > 0.9
    # The shown value: above its baseline level in both kinds of block (success shown the same way).
    level = np.nanmean(value[rest])
    assert np.nanmean(value[up]) > level + 0.15, (np.nanmean(value[up]), level)
    assert np.nanmean(value[down]) > level + 0.15, (np.nanmean(value[down]), level)
    # feedback_success_signal is the flipped signal in down blocks: what the value scales.
    success = _num(rows, "feedback_success_signal")
    direction = [r["direction"] for r in rows]
    flip = np.array([-1.0 if d == "decrease" else 1.0 for d in direction])
    assert np.allclose(success[ok], (flip * signal)[ok])


def test_the_table_and_messages_say_which_way_each_volume_asked(updown_run):
    cfg, _, tsv, sent = updown_run
    rows = _rows(tsv)
    expected = {"rest": "n/a", "up": "increase", "down": "decrease"}
    assert [r["direction"] for r in rows] == [expected[r["condition"]] for r in rows]
    import json

    side = json.loads(tsv.with_suffix(".json").read_text())
    assert "decrease" in side["direction"]["Description"]
    assert "BEFORE" in side["feedback_signal"]["Description"] and "AFTER" in side["feedback_success_signal"]["Description"]
    run = RunMessage.from_body(next(b for t, b in sent if t == "run"))
    assert run.directions == {"up": "increase", "down": "decrease"} and not run.invalid
    feedback = [FeedbackMessage.from_body(b) for t, b in sent if t == "feedback"]
    volumes = [VolumeMessage.from_body(b) for t, b in sent if t == "volume"]
    assert len(feedback) == len(volumes) == len(rows)
    for fb, vol in zip(feedback, volumes):
        assert not fb.invalid and not vol.invalid
        assert fb.direction == vol.direction == {"rest": None, "up": "increase", "down": "decrease"}[vol.condition]


def test_the_report_counts_each_block_in_its_direction(updown_run):
    from rtnf.apps.report.read import read_run
    from rtnf.apps.report.summary import summarise
    from rtnf.apps.report.write import write_report

    _, _, tsv, _ = updown_run
    blocks = summarise(read_run(tsv))["blocks"]
    assert [(b["condition"], b["direction"]) for b in blocks] == [("up", "increase"), ("down", "decrease")] * 2
    for b in blocks:
        if b["direction"] == "decrease":
            assert b["delta_feedback_signal"] < 0 and b["delta_psc"]["acc"] < 0  # the ROI fell ...
        else:
            assert b["delta_feedback_signal"] > 0
        assert b["success"] is True  # ... which is success in a decrease block
    html = write_report(tsv, tsv.parent / "report").read_text(encoding="utf-8")
    assert "<th>direction</th><th>success</th>" in html
    cells = re.findall(r"<td>(increase|decrease)</td><td><span class=\"(ok|warn)\">(yes|no)</span>", html)
    assert cells == [("increase", "ok", "yes"), ("decrease", "ok", "yes")] * 2


def test_the_report_reads_directions_from_the_config_copy_of_an_older_table(updown_run, tmp_path):
    """A table without the direction column: the block's direction comes from the config copy."""
    import shutil

    from rtnf.apps.report.read import read_run
    from rtnf.apps.report.summary import summarise
    from rtnf.run import outputs

    _, _, tsv, _ = updown_run
    copy = tmp_path / tsv.name
    lines = tsv.read_text(encoding="utf-8").splitlines()
    drop = lines[0].split("\t").index("direction")
    copy.write_text("\n".join("\t".join(c for k, c in enumerate(line.split("\t")) if k != drop) for line in lines)
                    + "\n", encoding="utf-8")
    shutil.copy(outputs.sibling(tsv, outputs.CONFIG), outputs.sibling(copy, outputs.CONFIG))
    blocks = summarise(read_run(copy))["blocks"]
    assert [b["direction"] for b in blocks] == ["increase", "decrease"] * 2
    assert all(b["success"] is True for b in blocks)
    outputs.sibling(copy, outputs.CONFIG).unlink()  # no config copy either: every block increases
    blocks = summarise(read_run(copy))["blocks"]
    assert [b["direction"] for b in blocks] == ["increase"] * 4
    assert [b["success"] for b in blocks] == [True, False, True, False]
