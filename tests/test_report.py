"""``rtnf report``: the HTML report of a recorded run, its figures and its summary numbers.

One simulated run (real processes: scanner-sim writes, ``rtnf run`` processes)
with head motion, an intensity spike, a dropped and a late volume, two ROIs;
variants of its table stand for a run with motion correction off and a run
aborted mid-way. Summary numbers are recomputed here from the TSV, without
the report's code.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest


N_VOLUMES, DUMMIES = 34, 2
CONFIG = f"""
[session]
subject = "rep"
task = "nf"

[scanner]
export_dir = "export"
tr_s = 2.0
n_volumes = {N_VOLUMES}
dummy_volumes = {DUMMIES}
missing_timeout_s = 1.0

[protocol]
baseline = "rest"
pattern = {{ steps = [{{ condition = "rest", duration = 8 }}, {{ condition = "regulate", duration = 8 }}], repeat = 2 }}

[rois.acc]
center_mm = [0.0, 30.0, 15.0]
radius_mm = 8.0

[rois.linsula]
center_mm = [-37.0, 1.0, -1.0]
radius_mm = 6.0

[quality]
fd_threshold_mm = 0.4

[feedback]
roi = "acc"
scale_range = [-1.0, 2.5]

[output]
dir = "outputs"
"""
DROPPED, LATE, SPIKE = 6, 13, 20  # 0-based acquisitions (kept index = acquisition - DUMMIES)
# The late volume's delay, scanner seconds: 6 s at speed 16 is 0.375 s, judged against rtnf's bound of 0.3 s
# (rtnf.scanner.sequencer.LatenessJudge.MIN_LATE_S) with 75 ms to spare for detection jitter (5 s left 12.5 ms).
LATE_DELAY_S = 6.0


def simulate_run(tmp_path: Path, n_volumes: int = N_VOLUMES, speed: float = 16.0) -> Path:
    """Run scanner-sim and ``rtnf run`` as real processes; return the recorded table.

    Like ``tests.helpers.run_processes``, with head motion, a spike and faults in the simulator's spec.
    """
    from rtnf.config import load_config
    from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, sim_spec, write_toml
    from rtnf.run.record import bids_prefix, func_dir

    address = free_address()
    cfg_path = tmp_path / "session.toml"
    cfg_path.write_text(CONFIG.replace(f"n_volumes = {N_VOLUMES}", f"n_volumes = {n_volumes}"))
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = sim_spec(cfg, amplitude_pct=2.0, noise_pct=1.0, seed=11)
    spec["regions"] = [r for r in spec["regions"] if r["name"] != "linsula"]
    spec["spikes"] = [SPIKE]
    spec["spike_pct"] = 8.0
    spec["motion"] = {"max_trans_mm": 0.3, "max_rot_deg": 0.25, "kind": "smooth"}
    write_toml({k: v for k, v in spec.items() if k != "motion"}, tmp_path / "spec.toml")
    with open(tmp_path / "spec.toml", "a") as f:
        f.write("\n[motion]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec["motion"].items()))
    listener, procs = Listener([address]), Processes()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address], logs)
        wait_ready(listener, procs, no_screen=True)
        procs.start(
            "scanner_sim",
            [sys.executable, "-m", "scanner_sim", "synth", str(tmp_path / "spec.toml"),
             "--export-dir", str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
             "--speed", str(speed), "--drop", str(DROPPED), "--late", f"{LATE}:{LATE_DELAY_S}"],
            logs,
        )
        deadline = time.time() + 120
        while procs.procs["rtnf"].poll() is None:
            listener.poll(0.2)
            if time.time() > deadline:
                raise AssertionError("rtnf run did not finish:\n" + (logs / "rtnf.log").read_text()[-3000:])
        assert procs.procs["rtnf"].returncode == 0, (logs / "rtnf.log").read_text()
        procs.procs["scanner_sim"].wait(30)
    finally:
        listener.close()
        procs.stop_all()
    return func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv"


# ---------------------------------------------------------------- helpers: reading the TSV without the report's code


def _rows(tsv: Path) -> list[dict[str, str]]:
    with open(tsv, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _f(text: str) -> float:
    return float("nan") if text == "n/a" else float(text)


def _variant(src: Path, dest: Path, edit_rows=None, keep_rows: int | None = None, partial_line: bool = False,
             provenance: dict | None = None, siblings: bool = True) -> Path:
    """A copy of a run's folder with its table edited: stands for other kinds of run."""
    dest.mkdir(parents=True)
    for p in src.parent.iterdir():
        if p.is_file() and (siblings or p == src):
            shutil.copy(p, dest / p.name)
    tsv = dest / src.name
    rows = _rows(src)
    header = list(rows[0])
    if keep_rows is not None:
        rows = rows[:keep_rows]
    if edit_rows is not None:
        rows = [edit_rows(dict(r)) for r in rows]
    text = "\t".join(header) + "\n" + "".join("\t".join(r[c] for c in header) + "\n" for r in rows)
    if partial_line:
        text += "\t".join(_rows(src)[keep_rows or 0][c] for c in header[:7])  # the row in flight at the crash
    tsv.write_text(text)
    if provenance is not None:
        prov_path = dest / src.name.replace("_desc-rtnf_timeseries.tsv", "_desc-rtnf_provenance.json")
        prov = json.loads(prov_path.read_text())
        prov.update(provenance)
        prov_path.write_text(json.dumps(prov))
    return tsv


def _images(html_text: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html_text)


def _check_figures(html_path: Path, expected: set[str]) -> None:
    """Every figure the page references exists beside it, is a PNG with content, and the expected ones are there."""
    from PIL import Image

    text = html_path.read_text()
    names = _images(text)
    assert {n.split("_desc-")[1].split("_report")[0] for n in names} == expected, names
    pngs = sorted(p.name for p in html_path.parent.glob("*.png"))
    assert sorted(names) == pngs  # no figure missing from the page, no stale figure beside it
    for name in names:
        path = html_path.parent / name
        assert path.stat().st_size > 10_000, name
        img = np.asarray(Image.open(path).convert("RGB"))
        colours = np.unique(img.reshape(-1, 3), axis=0)
        assert len(colours) > 20, f"{name} looks blank ({len(colours)} colours)"
        assert img.shape[0] > 300 and img.shape[1] > 600


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A real run: 32 kept volumes, two ROIs, motion, a spike, a dropped and a late volume (about 13 s)."""
    return simulate_run(tmp_path_factory.mktemp("report_run"))


def _cell_text(html_text: str, label: str) -> str:
    """Text of the cell after the row's first cell ``label``."""
    m = re.search(rf"<tr><td>{re.escape(label)}</td><td>(.*?)</td>", html_text)
    assert m, label
    return re.sub(r"<[^>]+>", "", m.group(1))


def test_report_of_a_simulated_run(recorded, tmp_path):
    from rtnf.apps.report import read_run, summarise, write_report

    out = write_report(recorded, tmp_path / "report")
    assert out.exists() and out.suffix == ".html" and out.parent == tmp_path / "report"
    _check_figures(out, {"timecourses", "motion", "latency"})
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing fetched

    rows = _rows(recorded)
    n = len(rows)
    missing = [r["missing"] == "1" for r in rows]
    censored = [r["censored"] == "1" for r in rows]
    # the faults the simulator injected are in the table, and counted on the page
    assert missing[DROPPED - DUMMIES] and sum(missing) == 1
    assert rows[LATE - DUMMIES]["late"] == "1"
    assert censored[SPIKE - DUMMIES]
    assert _cell_text(text, "rows recorded") == str(n) == str(N_VOLUMES - DUMMIES)
    assert _cell_text(text, "missing (never arrived or unreadable)") == "1"
    for flag, label in (("late", "late (arrived late or took longer than a TR)"), ("out_of_order", "out of order"),
                        ("censored", "censored (FD, DVARS or global-signal jump)")):
        assert _cell_text(text, label) == str(sum(r[flag] == "1" for r in rows))

    s = summarise(read_run(recorded))
    usable = [not m and not c for m, c in zip(missing, censored)]
    # mean PSC per condition per ROI, as labelled and shifted by the lag (6 s at TR 2 s: 3 volumes)
    assert s["lag_volumes"] == 3
    for roi in ("acc", "linsula"):
        for cond in ("rest", "regulate"):
            v = [_f(r[f"{roi}_psc"]) for r, u in zip(rows, usable) if u and r["condition"] == cond]
            v = [x for x in v if x == x]
            assert s["psc_by_condition"][cond]["labelled"][roi]["mean"] == pytest.approx(np.mean(v), rel=1e-12)
            assert s["psc_by_condition"][cond]["labelled"][roi]["n"] == len(v)
            w = [_f(rows[i][f"{roi}_psc"]) for i in range(3, n) if usable[i] and rows[i - 3]["condition"] == cond]
            w = [x for x in w if x == x]
            assert s["psc_by_condition"][cond]["shifted"][roi]["mean"] == pytest.approx(np.mean(w), rel=1e-12)
        assert f"{s['psc_by_condition']['regulate']['labelled'][roi]['mean']:.3f}" in text
    # the simulated activation is in acc (regulate above rest), not in linsula
    acc, ins = (s["psc_by_condition"]["regulate"]["shifted"][r]["mean"] for r in ("acc", "linsula"))
    assert acc > 1.0 and acc > ins + 0.8

    # regulation success: each regulate block (shifted 3) against the preceding rest block (shifted 3)
    blocks = [int(r["block"]) for r in rows]
    assert [b["block"] for b in s["blocks"]] == [1, 3]
    for b in s["blocks"]:
        def mean_of(col, blk):
            v = [_f(rows[i][col]) for i in range(3, n) if usable[i] and blocks[i - 3] == blk]
            return np.nanmean(v)
        assert b["baseline_block"] == b["block"] - 1
        expected = mean_of("feedback_signal", b["block"]) - mean_of("feedback_signal", b["block"] - 1)
        assert b["delta_feedback_signal"] == pytest.approx(expected, rel=1e-12)
        assert b["delta_psc"]["acc"] == pytest.approx(mean_of("acc_psc", b["block"]) - mean_of("acc_psc", b["block"] - 1))
        assert b["mean_feedback_value"] == pytest.approx(mean_of("feedback_value", b["block"]))
        assert b["success"] is True  # the simulated activation follows the regulate blocks
        assert f"{expected:.3f}" in text

    # temporal SNR: mean / SD of the cleaned signal over non-missing volumes
    for roi in ("acc", "linsula"):
        v = np.array([_f(r[f"{roi}_clean"]) for r, m in zip(rows, missing) if not m])
        tsnr = v.mean() / v.std(ddof=1)
        assert s["tsnr"][roi]["tsnr"] == pytest.approx(tsnr, rel=1e-12)
        assert f"<td>{roi}</td><td>{tsnr:.1f}</td>" in text

    # latency: total processing latency median / p95 in ms
    total = np.array([(_f(r["t_published"]) - _f(r["t_detected"])) * 1000 for r, m in zip(rows, missing) if not m])
    st = s["latency_ms"]["detect → published (total)"]
    assert st["median"] == pytest.approx(np.median(total)) and st["p95"] == pytest.approx(np.percentile(total, 95))
    assert f"{np.median(total):.2f}" in text and f"{np.percentile(total, 95):.2f}" in text

    # FD threshold from the config copy; run identity and versions from the provenance
    assert s["motion"]["fd_threshold_mm"] == 0.4 and "threshold 0.4 mm" not in text  # (in the figure, not the page)
    fd = np.array([_f(r["framewise_displacement"]) for r in rows])
    assert s["motion"]["fd_over_threshold"] == int(np.sum(fd[np.isfinite(fd)] > 0.4))
    prov = json.loads(Path(str(recorded).replace("_desc-rtnf_timeseries.tsv", "_desc-rtnf_provenance.json")).read_text())
    assert prov["run_id"] in text and s["status"] == "ended"
    assert f"<td>numpy</td><td>{prov['versions']['numpy']}</td>" in text


def test_report_of_a_run_with_motion_correction_off(recorded, tmp_path):
    from rtnf.analysis.motion import MOTION_COLUMNS
    from rtnf.apps.report import write_report

    def no_motion(r):
        for c in (*MOTION_COLUMNS, "framewise_displacement"):
            r[c] = "n/a"
        return r

    tsv = _variant(recorded, tmp_path / "run", edit_rows=no_motion)
    out = write_report(tsv, tmp_path / "report")
    _check_figures(out, {"timecourses", "latency"})
    assert "No motion parameters were recorded" in out.read_text()


def test_report_of_an_aborted_run_that_crashed_mid_line(recorded, tmp_path):
    from rtnf.apps.report import read_run, summarise, write_report

    tsv = _variant(recorded, tmp_path / "run", keep_rows=13, partial_line=True, provenance={"status": "aborted"})
    run = read_run(tsv)
    assert len(run.rows) == 13 and any("incomplete" in n for n in run.notes)
    s = summarise(run)
    assert s["status"] == "aborted" and s["aborted_at_s"] == pytest.approx(26.0)
    assert [b["block"] for b in s["blocks"]] == [1]
    out = write_report(tsv, tmp_path / "report")
    _check_figures(out, {"timecourses", "motion", "latency"})
    text = out.read_text()
    assert "13 of 32 volumes recorded" in text and "aborted" in text


def test_report_of_a_bare_table_without_siblings(recorded, tmp_path):
    """Only the table: defaults stand for the config, blocks come from the condition column."""
    from rtnf.apps.report import read_run, summarise, write_report

    tsv = _variant(recorded, tmp_path / "run", siblings=False)
    run = read_run(tsv)
    assert run.events is None and run.config == {} and len(run.notes) == 3
    s = summarise(run)
    assert s["motion"]["fd_threshold_mm"] == 0.5  # rtnf's default
    assert s["status"] == "unknown"
    _check_figures(write_report(tsv, tmp_path / "report"), {"timecourses", "motion", "latency"})


def test_command_line(recorded, tmp_path, capsys):
    import argparse

    from rtnf.apps.report import add_arguments, default_output_dir, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # a folder is searched; the default output folder is <sub>/<ses>/figures
    root = tmp_path / "copy"
    shutil.copytree(recorded.parents[3], root)
    assert run(parser.parse_args([str(root)])) == 0
    html_path = Path(capsys.readouterr().out.strip())
    assert html_path.parent == default_output_dir(next(root.rglob("*_timeseries.tsv"))) and html_path.parent.name == "figures"
    assert html_path.exists()
    # -o and --embed: one file with the figures inside
    assert run(parser.parse_args([str(recorded), "-o", str(tmp_path / "o"), "--embed"])) == 0
    text = Path(capsys.readouterr().out.strip()).read_text()
    assert len(_images(text)) == 3 and all(src.startswith("data:image/png;base64,") for src in _images(text))
    # nothing to report on: a message and exit code 2, no traceback
    assert run(parser.parse_args([str(tmp_path / "o")])) == 2
    assert "no '*_desc-rtnf_timeseries.tsv' found" in capsys.readouterr().err


# ---------------------------------------------------------------- feedback at the bar's ends (saturation)


def _small_run(folder: Path, regulate_values: list[float | None]) -> Path:
    """A hand-written run: 10 baseline volumes (all with the bar empty), then the regulation volumes given."""
    folder.mkdir(parents=True)
    prefix = "sub-sat_task-nf_run-1"
    values = [0.0] * 10 + regulate_values
    header = ["index", "onset_s", "condition", "block", "missing", "late", "out_of_order", "censored",
              "feedback_value", "feedback_signal", "feedback_reason"]
    lines = ["\t".join(header)]
    for i, v in enumerate(values):
        cond, block = ("rest", 0) if i < 10 else ("regulate", 1)
        lines.append("\t".join(map(str, [
            i, 2.0 * i, cond, block, int(v is None), 0, 0, 0,
            "n/a" if v is None else v, "n/a" if v is None else 2.0 * v, "missing volume" if v is None else "n/a",
        ])))
    tsv = folder / f"{prefix}_desc-rtnf_timeseries.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    (folder / f"{prefix}_desc-rtnf_config.toml").write_text(
        f'[scanner]\ntr_s = 2.0\nn_volumes = {len(values)}\n\n[protocol]\nbaseline = "rest"\n')
    return tsv


def test_report_counts_feedback_at_the_bars_ends(tmp_path):
    """5 of 10 regulation volumes at an end of the bar (4 full, 1 empty): counted, and warned about at the top."""
    from rtnf.apps.fidelity import SATURATION_EPS
    from rtnf.apps.report import read_run, summarise, write_report

    # the baseline's empty bar, the missing volume (no value) and 0.998 (just inside the bar) are not counted
    regulate = [1.0, 1.0, 1.0, 1 - SATURATION_EPS / 2, 0.0, 0.5, 0.998, 0.4, 0.7, 0.3, None]
    tsv = _small_run(tmp_path / "run", regulate)
    s = summarise(read_run(tsv))["saturation"]
    assert {k: s[k] for k in ("regulation", "top", "bottom", "at_end")} == {
        "regulation": 10, "top": 4, "bottom": 1, "at_end": 5}
    assert s["fraction"] == pytest.approx(0.5) and s["warn"] is True
    text = write_report(tsv, tmp_path / "report").read_text()
    assert _cell_text(text, "feedback at the bar's ends") == "5 of 10 regulation volumes (50.0 %) — full 4, empty 1"
    warning = re.search(r'<p class="warn" data-warning="saturation">(.*?)</p>', text)
    assert warning and "5 of 10 regulation volumes (50 %" in re.sub(r"<[^>]+>", "", warning.group(1))
    assert text.index('data-warning="saturation"') < text.index("<h2>Run</h2>")  # at the top


def test_report_does_not_warn_at_or_below_a_fifth_at_the_bars_ends(tmp_path):
    from rtnf.apps.report import read_run, summarise, write_report

    tsv = _small_run(tmp_path / "run", [1.0, 0.0, 0.5, 0.6, 0.4, 0.7, 0.3, 0.2, 0.8, 0.55])  # 2 of 10: 20 %
    s = summarise(read_run(tsv))["saturation"]
    assert (s["at_end"], s["regulation"], s["warn"]) == (2, 10, False)
    text = write_report(tsv, tmp_path / "report").read_text()
    assert _cell_text(text, "feedback at the bar's ends") == "2 of 10 regulation volumes (20.0 %) — full 1, empty 1"
    assert 'data-warning="saturation"' not in text and "Warning: the feedback" not in text


# ---------------------------------------------------------------- issue 16: no feedback, volume numbers, motion axes


def _table_run(folder: Path, rows: list[dict], config: str = "") -> Path:
    """A hand-written run from rows of (condition, block, feedback_value, feedback_reason[, motion columns])."""
    from rtnf.analysis.motion import MOTION_COLUMNS

    folder.mkdir(parents=True)
    prefix = "sub-nofb_task-nf_run-1"
    header = ["index", "onset_s", "condition", "block", "missing", "late", "out_of_order", "censored",
              "feedback_value", "feedback_signal", "feedback_reason", *MOTION_COLUMNS, "framewise_displacement"]
    lines = ["\t".join(header)]
    for i, r in enumerate(rows):
        value = r.get("value")
        lines.append("\t".join(map(str, [
            i, 2.0 * i, r["condition"], r["block"], 0, 0, 0, int(str(r.get("reason", "")).startswith("censored")),
            "n/a" if value is None else value, "n/a" if value is None else 2.0 * value,
            r.get("reason") or "n/a", *[r.get(c, "n/a") for c in MOTION_COLUMNS], r.get("fd", "n/a"),
        ])))
    tsv = folder / f"{prefix}_desc-rtnf_timeseries.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    (folder / f"{prefix}_desc-rtnf_config.toml").write_text(
        f'[scanner]\ntr_s = 2.0\nn_volumes = {len(rows)}\n\n[protocol]\nbaseline = "rest"\n\n' + config)
    return tsv


def _no_feedback_rows() -> list[dict]:
    """rest (10), regulate block 1 (6, nothing shown), rest (4), regulate block 2 (6, shown)."""
    rows = [{"condition": "rest", "block": 0, "value": 0.3} for _ in range(10)]
    reasons = ["waiting for baseline"] * 2 + ["censored: FD 0.9 mm > 0.5 mm", "censored: DVARS z 6.1 > 5"] * 2
    rows += [{"condition": "regulate", "block": 1, "value": None, "reason": r} for r in reasons]
    rows += [{"condition": "rest", "block": 2, "value": 0.3} for _ in range(4)]
    rows += [{"condition": "regulate", "block": 3, "value": 0.6} for _ in range(6)]
    return rows


def test_report_warns_at_the_top_when_a_regulation_block_showed_no_feedback(tmp_path):
    from rtnf.apps.report import read_run, summarise, write_report

    tsv = _table_run(tmp_path / "run", _no_feedback_rows())
    s = summarise(read_run(tsv))
    shown = s["feedback_shown"]
    assert (shown["regulation"], shown["shown"], shown["warn"]) == (12, 6, True)
    assert shown["silent_blocks"] == [{"number": 1, "volumes": (11, 16),
                                       "reasons": {"censored": 4, "waiting for baseline": 2}}]
    # null reasons grouped by kind, not one entry per distinct message
    assert s["counts"]["feedback_na_reasons"] == {"censored": 4, "waiting for baseline": 2}
    text = write_report(tsv, tmp_path / "report").read_text()
    warning = re.search(r'<div class="warn" data-warning="no-feedback">(.*?)</div>', text)
    assert warning and text.index('data-warning="no-feedback"') < text.index("<h2>Run</h2>")  # at the top
    plain = re.sub(r"<[^>]+>", " ", warning.group(1))
    assert "no feedback shown in regulation block 1 (volumes 11–16; censored: 4, waiting for baseline: 2)" in plain
    assert "feedback shown for 6 of 12 regulation volumes (no value: censored: 4, waiting for baseline: 2)" in plain
    assert _cell_text(text, "feedback n/a") == "6 (censored: 4, waiting for baseline: 2)"
    assert _cell_text(text, "regulation volumes with feedback shown") == "6 of 12"


def test_report_does_not_warn_about_feedback_for_a_run_without_feedback_or_with_enough(tmp_path):
    from rtnf.apps.report import read_run, summarise, write_report

    rows = [{**r, "value": None, "reason": "no feedback in this run"} for r in _no_feedback_rows()]
    tsv = _table_run(tmp_path / "off", rows, config="[feedback]\nroi = \"acc\"\nenabled = false\n")
    s = summarise(read_run(tsv))["feedback_shown"]
    assert (s["enabled"], s["warn"], s["silent_blocks"]) == (False, False, [])
    text = write_report(tsv, tmp_path / "report_off").read_text()
    assert 'data-warning="no-feedback"' not in text
    assert _cell_text(text, "regulation volumes with feedback shown").startswith("no feedback in this run")
    # One value in each regulation block and most volumes with a value: no warning.
    rows = _no_feedback_rows()
    for r in rows[10:15]:
        r.update(value=0.5, reason=None)
    tsv = _table_run(tmp_path / "enough", rows)
    assert summarise(read_run(tsv))["feedback_shown"]["warn"] is False
    assert 'data-warning="no-feedback"' not in write_report(tsv, tmp_path / "report_enough").read_text()


def test_report_numbers_volumes_from_one(tmp_path):
    from rtnf.apps.report import write_report

    text = write_report(_table_run(tmp_path / "run", _no_feedback_rows()), tmp_path / "report").read_text()
    # regulation block rows: protocol block 2 (index 1) is volumes 11-16 for people; its baseline block is 1
    assert re.search(r"<tr><td>2</td><td>regulate</td><td>11–16</td><td>1</td>", text)
    assert re.search(r"<tr><td>4</td><td>regulate</td><td>21–26</td><td>3</td>", text)


def test_report_motion_axes_in_mm_and_degrees_with_a_minimum_range_and_plain_ticks(tmp_path, monkeypatch):
    """Sub-millimetre noise does not fill the panels; the FD threshold line is in view; no 2e-3 tick labels."""
    import rtnf.apps.report as report
    from rtnf.apps.report import figures as report_figures

    rng = np.random.default_rng(0)
    rows = _no_feedback_rows()
    for r in rows:
        r.update({c: float(x) for c, x in zip(("trans_x", "trans_y", "trans_z"), rng.normal(0, 0.004, 3))})
        r.update({c: float(x) for c, x in zip(("rot_x", "rot_y", "rot_z"), rng.normal(0, 0.00004, 3))})
        r["fd"] = float(abs(rng.normal(0, 0.002)))
    tsv = _table_run(tmp_path / "run", rows, config="[quality]\nfd_threshold_mm = 0.9\n")
    figures = []
    new_figure = report_figures._new_figure
    monkeypatch.setattr(report_figures, "_new_figure", lambda *a: figures.append(new_figure(*a)) or figures[-1])
    run = report.read_run(tsv)
    assert report.figure_motion(run, report.summarise(run), tmp_path / "motion.png") is not None
    fig = figures[-1]
    fig.canvas.draw()
    trans, rots, fd = fig.axes[:3]
    assert "degrees" in rots.get_ylabel() and "mm" in trans.get_ylabel()
    for ax in (trans, rots):
        low, high = ax.get_ylim()
        assert low <= -1.0 and high >= 1.0
    low, high = fd.get_ylim()
    assert low == 0.0 and high >= 1.0 and high > 0.9  # the threshold line (0.9 mm) is in view
    for ax in (trans, rots, fd):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels and not any("e" in t.lower() for t in labels), labels
        assert ax.yaxis.get_offset_text().get_text() == ""


@pytest.mark.parametrize("column", ["framewise_displacement", "feedback_value", "t_detected"])
def test_a_figure_that_cannot_be_drawn_is_left_out_not_the_report(recorded, tmp_path, caplog, column):
    """A damaged or hand-edited table with values near the float limit (1e308) made matplotlib's ticks
    overflow and the whole report stopped with a traceback (as the longitudinal report did): the figure
    is left out with a warning naming it, the rest of the report is written."""
    import logging

    from rtnf.apps.report import write_report

    header = _rows(recorded)[0]
    if column not in header:
        pytest.skip(f"the table has no {column} column")

    def huge(r):
        if r[column] != "n/a":
            r[column] = "1e308" if int(r["index"]) % 2 else "-1e308"
        return r

    tsv = _variant(recorded, tmp_path / "run", edit_rows=huge)
    with caplog.at_level(logging.WARNING):
        out = write_report(tsv, tmp_path / "report")
    text = out.read_text()
    assert "<html" in text.lower() and len(_images(text)) >= 1  # the report and its other figures
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    drawn = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert left_out or len(drawn) == 3, (left_out, drawn)  # drawn after all, or said
    assert all(m.split(": ", 1)[1].split(" (")[0] in text for m in left_out)  # and said in the report, too


def test_drawn_leaves_out_only_what_cannot_be_drawn_and_says_so(tmp_path, caplog):
    """The guard itself: a figure raising ValueError/LinAlgError/OverflowError is left out (its partial file
    removed, a note added); any other error is a fault and propagates; a drawn figure is returned as it is."""
    import logging

    import numpy as np

    from rtnf.apps.report.figures import drawn

    def failing(exc):
        def make(path):
            path.write_bytes(b"partial")
            raise exc
        return make

    for exc in (ValueError("ticks"), np.linalg.LinAlgError("Singular matrix"), OverflowError("int too large")):
        notes: list[str] = []
        path = tmp_path / "f.png"
        with caplog.at_level(logging.WARNING):
            assert drawn("motion", failing(exc), path, notes) is None
        assert not path.exists() and len(notes) == 1 and "figure motion left out" in notes[0]
        assert type(exc).__name__ in notes[0]
    with pytest.raises(KeyError):
        drawn("motion", failing(KeyError("a bug")), tmp_path / "g.png", [])
    assert drawn("motion", lambda p: p, tmp_path / "h.png") == tmp_path / "h.png"
