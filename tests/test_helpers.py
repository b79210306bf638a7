"""The tests' own helpers: one default session config that loads, overrides checked against rtnf.config."""

from __future__ import annotations

import time

import pytest

from rtnf.config import load_config
from tests.helpers import config_text, make_config, pattern, wait_until


def test_the_default_config_loads(tmp_path):
    cfg = load_config(make_config(tmp_path))
    assert cfg.scanner.n_volumes == 42 and cfg.scanner.dummy_volumes == 2 and cfg.feedback.targets == ["acc"]
    assert cfg.output.dir == (tmp_path / "out").resolve()


def test_overrides_set_add_replace_and_remove(tmp_path):
    cfg = load_config(make_config(tmp_path, {
        "scanner.n_volumes": 24,                                     # set
        "rois.ins": {"center_mm": [36.0, 2.0, 0.0], "radius_mm": 6.0},  # add a table
        "protocol.pattern": pattern(rest=6, regulate=5),             # replace a table
        "scanner.dummy_volumes": None,                               # remove: the loader's default
        "protocol.instructions.regulate": "Up",
        "display.score.reward_text": 'quote " and é',
    }))
    assert cfg.scanner.n_volumes == 24 and cfg.scanner.dummy_volumes == 0
    assert list(cfg.rois) == ["acc", "ins"]
    assert [(s.condition, s.duration) for s in cfg.protocol.pattern.steps] == [("rest", 6), ("regulate", 5)]
    assert cfg.protocol.instructions == {"regulate": "Up"} and cfg.display.score.reward_text == 'quote " and é'


@pytest.mark.parametrize("overrides", [
    {"scanner.tr": 2.0},
    {"rois.acc.radius": 8.0},
    {"feedback.scalling": "fixed"},
    {"feedback.roi.name": "acc"},
    {"protocol.pattern": {"steps": [{"condition": "rest", "durations": 6}]}},
    {"rois": {"ins": {"centre_mm": [0.0, 0.0, 0.0]}}},
])
def test_an_unknown_key_fails_loudly(tmp_path, overrides):
    with pytest.raises(ValueError, match="unknown config key"):
        make_config(tmp_path, overrides)
    assert not (tmp_path / "session.toml").exists()


def test_unknown_keys_are_written_only_when_asked_for():
    assert "\ntr = 2.0\n" in config_text(unknown_keys={"scanner.tr": 2.0})


def test_wait_until_returns_the_condition_or_false_at_the_timeout():
    t0 = time.monotonic()
    assert wait_until(lambda: time.monotonic() - t0 > 0.05 and "done", 5) == "done"
    assert wait_until(lambda: False, 0.05) is False
