"""A whole session with real processes: scanner-sim, rtnf run, a ZeroMQ subscriber and the screen."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from rtnf.apps.demo import read_tsv
from rtnf.run.record import bids_prefix, format_cell, func_dir, row_from_messages, timeseries_columns
from tests.helpers import pattern, requires_display, run_processes

N_VOLUMES, DUMMIES = 50, 2
CONFIG = {"session.subject": "sim", "session.task": "nf", "scanner.n_volumes": N_VOLUMES,
          "scanner.dummy_volumes": DUMMIES, "scanner.missing_timeout_s": 1.0,
          "protocol.pattern": pattern(rest=8, regulate=8, repeat=3), "protocol.instructions.regulate": "Raise the bar",
          "rois.linsula": {"center_mm": [-37.0, 1.0, -1.0], "radius_mm": 6.0}, "feedback.scale_range": [-1.0, 2.5],
          "output.dir": "outputs"}


def _session(tmp_path: Path, with_screen: bool, speed: float = 4.0):
    return run_processes(tmp_path, CONFIG, with_screen=with_screen, speed=speed, silent_rois=["linsula"])


@requires_display()
def test_full_session_with_the_feedback_screen(tmp_path):
    cfg, listener = _session(tmp_path, with_screen=True)
    n_kept = N_VOLUMES - DUMMIES
    volumes, feedback = listener.of("volume"), listener.of("feedback")

    # Every volume published exactly once, in order, and none missing.
    assert [v["index"] for v in volumes] == list(range(n_kept))
    assert [f["index"] for f in feedback] == list(range(n_kept))
    assert not any(v["flags"]["missing"] for v in volumes)
    for v in volumes:
        t = v["timing"]
        assert t["t_acquired"] <= t["t_detected"] <= t["t_read"] <= t["t_preprocessed"] <= t["t_modelled"] <= t["t_published"]

    # The recorded table holds exactly what was published.
    table_path = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv"
    rows = read_tsv(table_path)
    columns = timeseries_columns(["acc", "linsula"])
    assert list(rows[0]) == columns and len(rows) == n_kept
    for row, v, f in zip(rows, volumes, feedback):
        expected = row_from_messages(v, f, ["acc", "linsula"])
        assert row == {c: format_cell(expected[c]) for c in columns}

    # The feedback follows the simulator's true activation.
    truth = read_tsv(tmp_path / "truth" / "truth.tsv")
    pairs = [(f["value"], float(truth[f["index"] + DUMMIES]["activation_acc"])) for f in feedback if f["value"] is not None]
    assert len(pairs) >= n_kept - 10
    r = np.corrcoef(np.array(pairs).T)[0, 1]
    assert r >= 0.8, f"feedback vs true activation r = {r:.3f}"

    # The screen flipped a frame for every feedback message and acknowledged each.
    with open(tmp_path / "flips.csv", newline="") as fh:
        flips = list(csv.DictReader(fh))
    shown = {int(f["index"]) for f in flips if f["index"] not in ("", "None", "n/a")}
    assert set(range(n_kept)) <= shown
    acks = {d["index"]: d for d in listener.of("displayed") if d.get("index") is not None}
    assert set(acks) == set(range(n_kept))
    for v in volumes:
        assert acks[v["index"]]["t_displayed"] >= v["timing"]["t_published"]

    # The last frame shows the bar at the height of the last value.
    last_value = next(f["value"] for f in reversed(feedback) if f["value"] is not None)
    fill_fraction, height = _bar_fill_fraction(tmp_path / "last_frame.png")
    assert abs(fill_fraction - last_value) * height <= 2.0, (fill_fraction, last_value)


def _bar_fill_fraction(png: Path) -> tuple[float, int]:
    from PIL import Image

    from stimulus.geometry import BAR_BG, BAR_FILL

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    column = img[:, img.shape[1] // 2]
    fill = int(np.sum(np.all(np.abs(column - BAR_FILL) <= 2, axis=1)))
    background = int(np.sum(np.all(np.abs(column - BAR_BG) <= 2, axis=1)))
    assert fill + background > 0.5 * 0.6 * img.shape[0], "no thermometer in the screenshot"
    return fill / (fill + background), fill + background


def test_session_without_screen_records_every_volume_and_survives_a_bad_file(tmp_path):
    """Headless: a foreign file among the volumes is logged and skipped; every volume is still recorded."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "notes_00007.nii").write_bytes(b"this is not a volume")  # matches the pattern, never completes
    cfg, listener = _session(tmp_path, with_screen=False, speed=8.0)
    volumes = listener.of("volume")
    assert [v["index"] for v in volumes] == list(range(N_VOLUMES - DUMMIES))
    run_messages = listener.of("run")
    assert run_messages[-1]["event"] == "end"
    beats = [h for h in listener.of("heartbeat") if h.get("source") == "rtnf"]
    assert beats[0]["state"] == "waiting" and beats[-1]["state"] == "ended"


def test_whole_brain_t_map_finds_the_simulated_activation(tmp_path):
    """The whole-brain model's t-map peaks where the simulator put the activation; previews carry it."""
    import nibabel as nib

    config = {**CONFIG, "model.whole_brain": True, "model.motion_regressors": 6}
    cfg, listener = run_processes(tmp_path, config, speed=8.0, silent_rois=["linsula"])
    statmap = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_stat-t_statmap.nii.gz"
    img = nib.load(statmap)
    t = np.nan_to_num(np.asarray(img.dataobj))
    peak = np.unravel_index(np.argmax(t), t.shape)
    peak_mm = img.affine[:3, :3] @ np.array(peak) + img.affine[:3, 3]
    assert t.max() > 5, f"max t {t.max():.1f}"
    assert np.linalg.norm(peak_mm - np.array([0.0, 30.0, 15.0])) <= 10.0, f"peak at {peak_mm} mm"
    previews = listener.of("preview")
    # A preview per volume while the operator's worker keeps up; when it falls behind (a loaded machine: one
    # volume every 0.25 s here), only the newest waiting volume gets one (rtnf.run.operator), and the last always.
    indices = [p["index"] for p in previews]
    n_kept = N_VOLUMES - DUMMIES
    assert indices == sorted(set(indices)) and indices[-1] == n_kept - 1 and len(indices) >= 0.8 * n_kept, indices
    axial = previews[-1]["planes"]["axial"]
    assert len(axial["image"]) == axial["shape"][0] and "tmap" in axial and sum(map(sum, axial["rois"]["acc"])) > 0
