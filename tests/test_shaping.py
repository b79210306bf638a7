"""Shaping (issue 18, point 6): success thresholds from the participant's previous blocks, across runs and sessions.

A regulation block succeeds when its value (the mean feedback signal over the
lagged block, oriented as success) exceeds a percentile of the previous
blocks' values (``[feedback.shaping]``). Checked by hand-computed values of
the feedback computer, and on a simulated study recorded by rtnf: every
recorded threshold equals the one recomputed with NumPy from the recorded
tables (the earlier runs' and the run's own earlier blocks), every block
value equals the mean of the table's ``feedback_signal`` over its lagged
window, and every success flag follows the threshold.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rtnf.analysis.feedback import FeedbackComputer
from rtnf.analysis.protocol import Block, Protocol
from rtnf.analysis.roi_model import RoiValues
from rtnf.analysis.shaping import Shaper, shaping_threshold
from rtnf.config import ConfigError, FeedbackConfig, load_config
from tests.helpers import make_config
from tests.longitudinal_data import TR, record_run

SHAPING = {"percentile": 50.0, "history": "study", "min_blocks": 2}


# ---------------------------------------------------------------- the threshold, by hand


def test_threshold_is_the_percentile_of_the_previous_blocks():
    values = [0.2, 1.0, 0.6, 0.4, 3.0]
    assert shaping_threshold(values, 50.0) == pytest.approx(0.6)
    assert shaping_threshold(values, 75.0) == pytest.approx(np.percentile(values, 75.0))
    # Before min_blocks values the block must beat its baseline (0).
    assert shaping_threshold([5.0], 50.0, min_blocks=2) == 0.0
    # OpenNFT's rule: the median of the last 3 blocks.
    assert shaping_threshold(values, 50.0, last_blocks=3) == pytest.approx(0.6)
    assert shaping_threshold([*values, math.nan], 50.0, last_blocks=2) == pytest.approx(1.7)


def test_shaper_judges_each_block_against_the_ones_before_it():
    shaper = Shaper([1.0, 2.0], percentile=50.0, min_blocks=2)
    first = shaper.score(1.4)
    assert first.threshold == pytest.approx(1.5) and not first.success
    second = shaper.score(1.6)  # history 1.0, 2.0, 1.4: median 1.4
    assert second.threshold == pytest.approx(1.4) and second.success
    assert shaper.threshold == pytest.approx(1.5)  # 1.0, 1.4, 1.6, 2.0
    off = Shaper([1.0, 2.0])  # no percentile: shaping off, the threshold stays 0
    assert off.score(0.1).success and off.threshold == 0.0


def _protocol(n_cycles: int, directions: dict[str, str] | None = None, conditions=("up",)) -> Protocol:
    """rest 4, task 4 per cycle (conditions in turn), then rest 4; "rest" is the baseline."""
    blocks = []
    for k in range(n_cycles):
        cond = conditions[k % len(conditions)]
        blocks.append(Block(cond, (8 * k + 4) * TR, 4 * TR, f"b{k}"))
    return Protocol(tuple(blocks), "rest", ("rest", *dict.fromkeys(conditions)), TR, 8 * n_cycles + 4,
                    directions or {})


def _run(fc: FeedbackComputer, psc: list[float]):
    out = []
    for i, p in enumerate(psc):
        fc.step(i, [RoiValues(1000.0, 1000.0, p)], None)
        out.append(fc.shaping(i))
    return out


@pytest.mark.parametrize("kind", ["continuous", "intermittent"])
def test_feedback_computer_scores_blocks_against_history_and_its_own_blocks(kind):
    protocol = _protocol(4, {"down": "decrease"}, conditions=("up", "down"))
    lag = 2
    cfg = FeedbackConfig(roi="a", kind=kind, hemodynamic_lag_s=lag * TR, scaling="fixed",
                         shaping={"percentile": 50.0, "min_blocks": 2})
    fc = FeedbackComputer(cfg, ["a"], protocol, shaping_history=[0.5, 1.5])
    # The ROI's PSC, lagged: up blocks rise by 1.2, 2; down blocks fall by 0.5, 3 (success in both = magnitude).
    levels = {1: 1.2, 2: -0.5, 3: 2.0, 4: -3.0}
    psc = [0.0] * protocol.n_volumes
    for k, seg in enumerate([s for s in protocol.segments() if s.condition != "rest"], start=1):
        for i in range(seg.start + lag, seg.stop + lag):
            psc[i] = levels[k]
    states = _run(fc, psc)
    scored = [(i, s) for i, s in enumerate(states) if s.block_value is not None]
    ends = [seg.stop - 1 + lag for seg in protocol.segments() if seg.condition != "rest"]
    assert [i for i, _ in scored] == ends
    values = [s.block_value for _, s in scored]
    assert values == pytest.approx([1.2, 0.5, 2.0, 3.0])  # oriented as success: a fall in "down" counts up
    history = [0.5, 1.5]
    for (i, s), value in zip(scored, values):
        expected = float(np.median(history))
        assert s.threshold == pytest.approx(expected) and s.block_success == (value > expected)
        history.append(value)
        assert states[i + 1].threshold == pytest.approx(float(np.median(history)))  # from the next volume on
    assert [s.block_success for _, s in scored] == [True, False, True, True]


def test_intermittent_score_signal_is_the_block_value():
    protocol = _protocol(3)
    cfg = FeedbackConfig(roi="a", kind="intermittent", hemodynamic_lag_s=0.0, scaling="fixed",
                         shaping={"percentile": 50.0})
    fc = FeedbackComputer(cfg, ["a"], protocol)
    rng = np.random.default_rng(3)
    for i, p in enumerate(rng.normal(0.5, 1.0, protocol.n_volumes)):
        fb = fc.step(i, [RoiValues(1000.0, 1000.0, float(p))], None)
        state = fc.shaping(i)
        if state.block_value is not None:
            assert fb.success_signal == pytest.approx(state.block_value)


def test_a_missing_last_volume_does_not_lose_its_block():
    protocol = _protocol(2)
    cfg = FeedbackConfig(roi="a", hemodynamic_lag_s=0.0, scaling="fixed", shaping={"percentile": 50.0})
    fc = FeedbackComputer(cfg, ["a"], protocol)
    end = protocol.segments()[1].stop - 1
    for i in range(end):
        fc.step(i, [RoiValues(1000.0, 1000.0, 1.0 if protocol.labels()[i] == "up" else 0.0)], None)
        fc.shaping(i)
    state = fc.shaping(end)  # never stepped: the volume is missing
    assert state.block_value == pytest.approx(1.0) and state.block_success


@pytest.mark.parametrize("key, value", [("percentile", 101.0), ("history", "day"), ("min_blocks", 0)])
def test_bad_shaping_settings_are_config_errors(tmp_path, key, value):
    path = make_config(tmp_path, {f"feedback.shaping.{key}": value})
    with pytest.raises(ConfigError, match=f"shaping.{key}"):
        load_config(path)


# ---------------------------------------------------------------- a recorded sequence of runs


def _rows(tsv: Path) -> list[dict[str, str]]:
    with open(tsv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _num(text: str) -> float:
    return math.nan if text == "n/a" else float(text)


def _started(tsv: Path) -> float:
    prov = json.loads(tsv.with_name(tsv.name.replace("desc-rtnf_timeseries.tsv", "desc-rtnf_provenance.json"))
                      .read_text())
    return prov["started"]


@pytest.fixture(scope="module")
def shaped_study(tmp_path_factory):
    """Participant 01: two sessions of two shaped feedback runs with a transfer run (no feedback) between;
    participant 02's run in between, whose blocks must not count; then a run whose history is its session's."""
    root = tmp_path_factory.mktemp("shaping")
    extra = {"feedback.shaping": SHAPING}
    runs = [
        record_run(root, "01", "01", 1, amplitude_pct=1.0, seed=1, extra=extra),
        record_run(root, "02", "01", 1, amplitude_pct=3.0, seed=2, extra=extra),
        record_run(root, "01", "01", 2, amplitude_pct=1.4, seed=3, extra=extra),
        record_run(root, "01", "01", 1, task="transfer", feedback=False, amplitude_pct=5.0, seed=4, extra=extra),
        record_run(root, "01", "02", 1, amplitude_pct=1.8, seed=5, extra=extra),
        record_run(root, "01", "02", 2, amplitude_pct=2.2, seed=6,
                   extra={"feedback.shaping": {**SHAPING, "history": "session", "percentile": 75.0}}),
    ]
    return root, runs


def test_recorded_thresholds_equal_those_recomputed_from_the_recorded_tables(shaped_study):
    root, runs = shaped_study
    participant = [r for r in runs if r.subject == "01" and r.feedback]
    assert len(participant) == 4
    lag = 2  # hemodynamic_lag_s 4 s at TR 2 s
    n_blocks_checked = n_success = 0
    for k, run in enumerate(participant):
        percentile = 75.0 if k == 3 else 50.0
        earlier = [r for r in participant[:k] if k < 3 or r.session == run.session]
        assert all(_started(r.timeseries) < _started(run.timeseries) for r in earlier)
        history = [v for r in earlier for v in (_num(x["block_value"]) for x in _rows(r.timeseries))
                   if math.isfinite(v)]
        rows = _rows(run.timeseries)
        signal = np.array([_num(r["feedback_signal"]) for r in rows])
        blocks = [int(r["block"]) for r in rows]
        for i, row in enumerate(rows):
            expected = float(np.percentile(history, percentile)) if len(history) >= 2 else 0.0
            assert _num(row["shaping_threshold"]) == pytest.approx(expected, abs=1e-12), (run.timeseries.name, i)
            value = _num(row["block_value"])
            if math.isfinite(value):
                # The block scored here: the regulation block ending `lag` volumes earlier, its window shifted by lag.
                b = blocks[i - lag]
                window = [j + lag for j, x in enumerate(blocks) if x == b]
                assert row["condition"] == "rest" and rows[i - lag]["condition"] == "regulate"
                assert window[-1] == i
                assert value == pytest.approx(np.nanmean(signal[window]), abs=1e-9)
                assert row["block_success"] == ("1" if value > expected else "0")
                history.append(value)
                n_blocks_checked += 1
                n_success += value > expected
            else:
                assert row["block_success"] == "n/a"
    assert n_blocks_checked == 4 * 3
    assert 0 < n_success < n_blocks_checked, "the test needs both outcomes"


def test_the_session_history_leaves_other_sessions_out(shaped_study):
    from rtnf.run.shaping_history import history_runs

    root, runs = shaped_study
    out = root / "out"
    everything = history_runs(out, "01", None, before=math.inf)
    # Feedback runs only (the transfer run showed no feedback), the participant's only, oldest first.
    assert [r.timeseries for r in everything] == [r.timeseries for r in runs if r.subject == "01" and r.feedback]
    session2 = history_runs(out, "01", "02", before=math.inf)
    assert [r.timeseries for r in session2] == [r.timeseries for r in runs[4:]]
    assert all(len(r.values) == 3 for r in everything)


def test_the_table_and_its_sidecar_describe_the_shaping_columns(shaped_study):
    _, runs = shaped_study
    tsv = runs[0].timeseries
    side = json.loads(tsv.with_suffix(".json").read_text())
    assert "percentile 50" in side["shaping_threshold"]["Description"]
    assert "block_value" in side and "block_success" in side


# ---------------------------------------------------------------- the operator's console


def test_console_state_keeps_the_threshold_and_the_scored_blocks():
    from rtnf.apps.console.app import _fmt_shaping
    from rtnf.apps.console.state import RunState

    state = RunState(t_start=0.0)
    state.handle("rtnf", "run", {"run_id": "r1", "event": "start", "n_volumes": 10}, 0.0)
    assert state.threshold is None
    messages = [{"index": 0, "value": 0.5, "threshold": 0.0},
                {"index": 1, "value": 0.6, "threshold": 0.0, "block_value": 0.8, "block_success": True},
                {"index": 2, "value": 0.4, "threshold": 0.55},
                {"index": 3, "value": 0.4, "threshold": 0.55, "block_value": 0.3, "block_success": False}]
    for body in messages:
        state.handle("rtnf", "feedback", {"run_id": "r1", **body}, 0.0)
    assert state.threshold == 0.55
    assert [(b["value"], b["success"], b["threshold"]) for b in state.block_scores] == [(0.8, True, 0.0),
                                                                                      (0.3, False, 0.55)]
    text = _fmt_shaping(state.threshold, state.block_scores)
    assert 'data-threshold="0.55"' in text and "last block 0.3: <b>no success</b>" in text
    assert "1 of 2 blocks succeeded" in text


def test_a_crashed_run_resumed_records_the_thresholds_of_an_uninterrupted_one(tmp_path):
    extra = {"feedback.shaping": SHAPING}
    record_run(tmp_path, "01", "01", 1, amplitude_pct=1.2, seed=21, extra=extra)
    second = record_run(tmp_path, "01", "01", 2, amplitude_pct=1.6, seed=22, extra=extra)
    tsv = second.timeseries
    whole = _rows(tsv)
    # The crash: the table stops after 20 rows (the last one cut short), the provenance never got its end.
    lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
    tsv.write_text("".join(lines[:21]) + lines[21][:30], encoding="utf-8")
    provenance = tsv.with_name(tsv.name.replace("desc-rtnf_timeseries.tsv", "desc-rtnf_provenance.json"))
    body = json.loads(provenance.read_text())
    started = body["started"]
    for key in ("finished", "status", "n_rows"):
        body.pop(key, None)
    provenance.write_text(json.dumps(body))
    # Run 3 of the participant started (and recorded blocks) while run 2 lay crashed: run 2's resume must not
    # count them, as it did not when it started.
    record_run(tmp_path, "01", "01", 3, amplitude_pct=3.0, seed=23, extra=extra)
    resumed = record_run(tmp_path, "01", "01", 2, amplitude_pct=1.6, seed=22, extra=extra, resume=True)
    rows = _rows(resumed.timeseries)
    assert len(rows) == len(whole)
    for column in ("shaping_threshold", "block_value", "block_success"):
        assert [r[column] for r in rows] == [r[column] for r in whole], column
    assert json.loads(provenance.read_text())["resumed"][0]["started"] == started


# ---------------------------------------------------------------- hostile derivatives


def _history_folder(tmp_path: Path, tsv: bytes, provenance: str) -> Path:
    """A derivatives dataset with one recorded run of participant 01 (crafted table and provenance) and one
    well-formed earlier run whose single block value is 0.25."""
    func = tmp_path / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    (func / "sub-01_ses-1_task-nf_run-1_desc-rtnf_timeseries.tsv").write_bytes(b"index\tblock_value\n0\t\n1\t0.25\n")
    (func / "sub-01_ses-1_task-nf_run-1_desc-rtnf_provenance.json").write_text(json.dumps({"started": 1.0}))
    (func / "sub-01_ses-1_task-nf_run-2_desc-rtnf_timeseries.tsv").write_bytes(tsv)
    (func / "sub-01_ses-1_task-nf_run-2_desc-rtnf_provenance.json").write_text(provenance)
    return tmp_path


_TABLE = b"index\tblock_value\n0\t\n1\t0.5\n"


@pytest.mark.parametrize("tsv, provenance, expected", [
    (b"index\tblock_value\n0\t\xff\xfe\n1\t0.5\n", '{"started": 2.0}', [0.25]),  # not UTF-8
    (b"index\tblock_value\n0\t" + b"1" * 200_000 + b"\n", '{"started": 2.0}', [0.25]),  # beyond csv's field limit
    (_TABLE, "[" * 100_000 + "]" * 100_000, [0.25]),  # nested beyond the JSON parser's recursion limit
    (_TABLE, '{"started": 2.0, "config": ' + "[" * 100_000 + "]" * 100_000 + "}", [0.25]),
    (_TABLE, '{"started": 2.0, "resumed": 5}', [0.25, 0.5]),  # resumes that are not a list: the start still counts
    (_TABLE, '{"started": true}', [0.25]),  # a start that is not a number
    (_TABLE, '{"started": 2.0, "config": {"feedback": {"sham_from": "run-1.tsv"}}}', [0.25]),  # sham: not its blocks
    (_TABLE, '{"started": 2.0, "config": {"feedback": {"enabled": false}}}', [0.25]),  # no feedback shown
], ids=["latin1", "huge-field", "nested", "nested-config", "resumed-int", "started-bool", "sham", "no-feedback"])
def test_a_crafted_earlier_run_neither_crashes_the_history_nor_adds_blocks(tmp_path, tsv, provenance, expected):
    from rtnf.run.shaping_history import history_runs

    root = _history_folder(tmp_path, tsv, provenance)
    values = [v for run in history_runs(root, "01", None, before=1e12) for v in run.values]
    assert values == expected


def test_a_sham_tables_garbage_shaping_cells_show_no_threshold(tmp_path):
    """A sham run shows its source's thresholds; cells that are no finite number (a hand-edited or foreign table)
    give none, and a success flag of "nan" is not a success (``bool(nan)`` is True)."""
    source = tmp_path / "sham.tsv"
    source.write_text("index\tfeedback_value\tshaping_threshold\tblock_value\tblock_success\n"
                      "0\t0.5\tabc\tn/a\tn/a\n"
                      "1\t0.5\tinf\tnan\tnan\n"
                      "2\t0.5\t0.3\t0.7\t1\n", encoding="utf-8")
    cfg = FeedbackConfig(roi="a", scaling="fixed", sham_from=source, shaping={"percentile": 50.0})
    fc = FeedbackComputer(cfg, ["a"], _protocol(1))
    states = [fc.shaping(i) for i in range(3)]
    assert [(s.threshold, s.block_value, s.block_success) for s in states] == [
        (None, None, None), (None, None, None), (0.3, 0.7, True)]


def test_only_the_participants_own_run_tables_feed_the_history(tmp_path):
    """Every ``*_desc-rtnf_timeseries.tsv`` anywhere under ``sub-01`` counted: another participant's table put
    there, or a copy kept in a subfolder (a backup before ``--overwrite``), added its blocks (the copy twice)."""
    from rtnf.run.shaping_history import history_runs

    root = _history_folder(tmp_path, _TABLE, '{"started": 2.0}')  # 0.25 (run 1), 0.5 (run 2)
    func = root / "sub-01" / "ses-1" / "func"
    stray = {func / "sub-02_ses-1_task-nf_run-1_": b"index\tblock_value\n0\t9.0\n",
             func / "backup" / "sub-01_ses-1_task-nf_run-2_": b"index\tblock_value\n0\t7.0\n",
             root / "sub-01" / "sub-01_ses-1_task-nf_run-3_": b"index\tblock_value\n0\t8.0\n",
             root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_task-nf_run-4_": b"index\tblock_value\n0\t6.0\n",
             root / "sub-01" / "ses-2" / "func" / "sub-01_ses-1_task-nf_run-5_": b"index\tblock_value\n0\t5.0\n"}
    for prefix, table in stray.items():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_name(prefix.name + "desc-rtnf_timeseries.tsv").write_bytes(table)
        prefix.with_name(prefix.name + "desc-rtnf_provenance.json").write_text('{"started": 1.5}')
    assert [v for run in history_runs(root, "01", None, before=1e12) for v in run.values] == [0.25, 0.5]
    assert [v for run in history_runs(root, "01", "1", before=1e12) for v in run.values] == [0.25, 0.5]


def test_a_replay_of_a_shaped_run_shows_the_thresholds_the_live_run_showed(tmp_path):
    """``rtnf replay`` writes into ``output.dir/replay``: the history was read there (the earlier replays, in the
    order they were replayed), not from the live runs, so the replay's thresholds started again from 0."""
    from rtnf.apps.replay import ReplayJob, replay_one

    extra = {"feedback.shaping": SHAPING}
    record_run(tmp_path, "01", "01", 1, amplitude_pct=1.0, seed=1, extra=extra)
    live = record_run(tmp_path, "01", "01", 2, amplitude_pct=1.5, seed=2, extra=extra)
    record_run(tmp_path, "01", "01", 3, amplitude_pct=2.0, seed=3, extra=extra)  # later: not in run 2's history
    folder = tmp_path / "sub-01_ses-01_task-nf_run-2"
    result = replay_one(ReplayJob(config=folder / "session.toml", source=folder / "sim" / "export", overrides={}))
    assert result["status"] == "ended", result
    replayed = _rows(Path(result["timeseries"]))
    assert "replay" in Path(result["timeseries"]).parts
    for column in ("shaping_threshold", "block_value", "block_success"):
        assert [r[column] for r in replayed] == [r[column] for r in _rows(live.timeseries)], column
