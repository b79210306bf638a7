"""Feedback signals as plugins (issue 20, point 1): an installed package's signal runs in a replay, is recorded,
can be fed back, and a failing signal costs its value for that volume, never the run."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtnf.config import ConfigError, load_config
from tests.helpers import ROOT, make_config, replay_func_dir, synthetic_run_4d

EXAMPLE = ROOT / "examples" / "rtnf-signal-example"
ROIS = {"acc": {"center_mm": [0.0, 30.0, 15.0], "radius_mm": 8.0},
        "insula": {"center_mm": [37.0, 1.0, -1.0], "radius_mm": 8.0}}

FLAKY = '''
from rtnf.analysis.signals import FeedbackSignal

class Flaky(FeedbackSignal):
    def step(self, volume):
        if volume.index == 12:
            raise RuntimeError("boom at 12")
        if volume.index == 15:
            self.outputs["x"] = "abc"  # not a number: costs this signal's value, not the volume
        return float(volume.index)


class BadFit(FeedbackSignal):
    def fit(self, context):
        raise RuntimeError("no training data")

    def step(self, volume):
        return 0.0
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin installed (pip, its entry point registered) into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("rtnf_signal_example-*.dist-info/entry_points.txt"))
    (target / "flaky_signal.py").write_text(FLAKY)
    sys.path.insert(0, str(target))  # this process loads the configs too
    yield target
    sys.path.remove(str(target))


def _replay(tmp_path: Path, site: Path, overrides: dict) -> tuple[list[dict[str, str]], subprocess.CompletedProcess]:
    source = tmp_path / "run.nii.gz"
    synthetic_run_4d(source, 42)
    config = make_config(tmp_path, {"rois": ROIS, **overrides})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(config), str(source)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    tables = list(replay_func_dir(load_config(config)).glob("*_desc-rtnf_timeseries.tsv"))
    rows = list(csv.DictReader(open(tables[0]), delimiter="\t")) if tables else []
    return rows, proc


def _num(text: str) -> float:
    return math.nan if text == "n/a" else float(text)


def test_an_installed_plugin_runs_is_recorded_and_feeds_back(tmp_path, installed):
    rows, proc = _replay(tmp_path, installed, {
        "signals": {"diff": {"class": "roi_difference", "target": "acc", "control": "insula"}},
        "feedback.source": "diff", "feedback.scaling": "fixed",
    })
    assert proc.returncode == 0, proc.stderr
    assert len(rows) == 40
    valued = [r for r in rows if r["signal_diff"] != "n/a"]
    assert len(valued) >= 25
    for r in rows:
        if r["acc_psc"] == "n/a" or r["insula_psc"] == "n/a":
            assert r["signal_diff"] == "n/a" and r["signal_diff_reason"] == "waiting for baseline"
            continue
        assert _num(r["signal_diff"]) == pytest.approx(_num(r["acc_psc"]) - _num(r["insula_psc"]), abs=1e-9)
        assert _num(r["signal_diff_target_psc"]) == pytest.approx(_num(r["acc_psc"]), abs=1e-12)
        # fed back: the feedback signal is the plugin's value, scaled from scale_range [-1, 2]
        assert _num(r["feedback_signal"]) == pytest.approx(_num(r["signal_diff"]), abs=1e-9)
        expected = min(1.0, max(0.0, (_num(r["signal_diff"]) + 1.0) / 3.0))
        if r["feedback_value"] != "n/a":
            assert _num(r["feedback_value"]) == pytest.approx(expected, abs=1e-9)


def test_a_failing_signal_costs_one_value_and_raises_an_alarm_not_the_run(tmp_path, installed):
    rows, proc = _replay(tmp_path, installed, {"signals": {"flaky": {"class": "flaky_signal:Flaky"}},
                                               "feedback.source": "flaky", "feedback.scaling": "fixed"})
    assert proc.returncode == 0, proc.stderr
    by_index = {int(r["index"]): r for r in rows}
    assert by_index[12]["signal_flaky"] == "n/a" and "boom at 12" in by_index[12]["signal_flaky_reason"]
    assert by_index[12]["feedback_value"] == "n/a" and "flaky" in by_index[12]["feedback_reason"]
    assert _num(by_index[13]["signal_flaky"]) == 13.0 and _num(by_index[11]["signal_flaky"]) == 11.0
    assert by_index[15]["signal_flaky"] == "n/a" and "ValueError" in by_index[15]["signal_flaky_reason"]
    assert by_index[15]["missing"] == "0" and by_index[15]["acc_raw"] != "n/a"  # the volume itself is kept
    assert all(_num(r["signal_flaky_s"]) >= 0 for r in rows)
    assert proc.stderr.count("signal flaky failed") == 1  # one alarm, not one line per volume


def test_a_signal_whose_fit_fails_stops_the_run_with_one_message(tmp_path, installed):
    rows, proc = _replay(tmp_path, installed, {"signals": {"bad": {"class": "flaky_signal:BadFit"}}})
    assert proc.returncode == 2, proc.stderr
    assert "signals.bad: fit failed: RuntimeError: no training data" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_signal_configs_are_checked_at_load(tmp_path, installed):
    bad = [
        ({"signals": {"x": {"class": "no_such_signal"}}}, "no feedback signal named 'no_such_signal'"),
        ({"signals": {"x": {"class": "roi_difference", "target": "acc"}}}, "signals.x.control"),
        ({"signals": {"x": {"class": "roi_difference", "target": "acc", "control": "insula", "extra": 1}}},
         "signals.x.extra"),
        ({"signals": {"x": {"target": "acc"}}}, "a 'class' is required"),
        ({"feedback.source": "nothing"}, "'feedback.source'"),
        ({"signals": {"x": {"class": "math:sqrt"}}}, "is not a feedback signal"),
        ({"signals": {"x": {"class": ":X"}}}, "is not 'module:Class'"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(make_config(tmp_path, {"rois": ROIS, **overrides}))
