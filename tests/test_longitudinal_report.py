"""The longitudinal report (issue 18, point 7): per participant across sessions, and per arm code.

A simulated study (2 participants x 2 sessions x (2 feedback runs + a
transfer run without feedback)), recorded by rtnf into one derivatives
dataset, the true ROI activation growing from the first session to the
second. Every number the report writes (its runs TSV, its JSON, the rows of
its page) is checked against the same number recomputed here with NumPy from
the recorded tables, without the report's code: regulation success per block
and run, the change toward the goal, the transfer effect, PSC by condition,
FD, tSNR, ratings, the shaped success counts, and the means by arm code. The
learning the simulation built in (a larger activation in session 2) must show.
"""

from __future__ import annotations

import html.parser
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rtnf.run.ratings import COLUMNS as RATING_COLUMNS
from tests.longitudinal_data import read_rows, recompute_run, record_study

LAG = 2  # hemodynamic_lag_s 4 s at TR 2 s (tests/longitudinal_data.py)
ARMS = {"01": "A", "02": "B"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("longitudinal")
    runs = record_study(root, extra={"feedback.shaping": {"percentile": 50.0}})
    # Ratings after each regulation block of participant 01's first feedback run (the screen writes these;
    # here they are written as rtnf.run.ratings does, for a run without a screen).
    first = runs[0].timeseries
    ratings = first.with_name(first.name.replace("desc-rtnf_timeseries.tsv", "desc-ratings_events.tsv"))
    lines = ["\t".join(RATING_COLUMNS)]
    for block, value in ((1, 40.0), (3, 55.0), (5, 70.0)):
        row = dict.fromkeys(RATING_COLUMNS, "n/a")
        row.update(onset=str(12.0 * block), duration="3", trial_type="pain", value=str(value), response_time="1.5",
                   timed_out="0", block=str(block), condition="regulate", moment="after_block",
                   scale_low="0", scale_high="100", question_text="How much pain?")
        lines.append("\t".join(row[c] for c in RATING_COLUMNS))
    ratings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    arms_tsv = root / "participants.tsv"
    arms_tsv.write_text("participant_id\tarm\n" + "".join(f"sub-{s}\t{a}\n" for s, a in ARMS.items()))
    return root, runs, arms_tsv


@pytest.fixture(scope="module")
def report(study):
    from rtnf.cli import main

    root, runs, arms_tsv = study
    out = root / "reports" / "study.html"
    assert main(["report", "longitudinal", str(root / "out"), "-o", str(out), "--arms", str(arms_tsv)]) == 0
    return out


# ---------------------------------------------------------------- the numbers, recomputed from the tables


def _close(a, b, tol=1e-9) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(b))


def test_every_run_row_equals_the_recomputation_from_its_table(study, report):
    _, runs, _ = study
    written = read_rows(report.with_name("study_runs.tsv"))
    assert len(written) == len(runs) == 12
    by_key = {(r["participant"], r["session"], r["task"], r["run"]): r for r in written}
    for run in runs:
        got = by_key[(run.subject, run.session, run.task, str(run.run))]
        want = recompute_run(run.timeseries, LAG)
        assert got["role"] == ("feedback" if run.feedback else "transfer")
        assert int(got["n_blocks"]) == len(want["success"]) == 3
        assert int(got["n_success"]) == sum(want["success"])
        assert _close(got["success_rate"], np.mean(want["success"]))
        assert _close(got["mean_toward_goal"], np.mean(want["toward"]))
        assert _close(got["psc_rest_acc"], want["psc_rest"]) and _close(got["psc_regulate_acc"], want["psc_regulate"])
        assert _close(got["fd_mean_mm"], want["fd_mean"]) and _close(got["tsnr_acc"], want["tsnr"])
        assert int(got["n_shaped_blocks"]) == want["n_shaped"] and int(got["n_shaped_success"]) == want["n_shaped_success"]
    # The hand-written ratings: their mean, on the run they belong to, and nowhere else.
    assert _close(by_key[("01", "01", "nf", "1")]["rating_pain"], 55.0)
    assert sum(r.get("rating_pain", "n/a") != "n/a" for r in written) == 1


def test_sessions_transfer_effect_and_learning_equal_the_recomputation(study, report):
    _, runs, _ = study
    summary = json.loads(report.with_name("study_summary.json").read_text())
    for p in summary["participants"]:
        sub = p["participant"]
        for s in p["sessions"]:
            mine = [r for r in runs if r.subject == sub and r.session == s["session"]]
            fb = [recompute_run(r.timeseries, LAG) for r in mine if r.feedback]
            tr = [recompute_run(r.timeseries, LAG) for r in mine if not r.feedback]
            assert _close(s["success_rate"], np.mean([x for w in fb for x in w["success"]]))
            assert _close(s["toward_goal"], np.mean([x for w in fb for x in w["toward"]]))
            assert _close(s["transfer_toward_goal"], np.mean([x for w in tr for x in w["toward"]]))
            assert _close(s["transfer_effect"], s["transfer_toward_goal"] - s["toward_goal"])
            assert _close(s["psc_regulate_acc"], np.mean([w["psc_regulate"] for w in fb + tr]))
        # The simulation's learning: a larger true activation in session 2 than in session 1.
        first, second = p["sessions"]
        assert second["toward_goal"] > first["toward_goal"] + 0.2, (sub, first["toward_goal"], second["toward_goal"])
        assert second["psc_regulate_acc"] > first["psc_regulate_acc"]
        feedback_means = [np.mean(recompute_run(r.timeseries, LAG)["toward"]) for r in runs if r.subject == sub and r.feedback]
        slope = np.polyfit(np.arange(len(feedback_means)), feedback_means, 1)[0]
        assert _close(p["learning_slope_toward_goal"], slope) and slope > 0


def test_the_arms_section_averages_participants_by_code(study, report):
    summary = json.loads(report.with_name("study_summary.json").read_text())
    sessions = {p["participant"]: p["sessions"] for p in summary["participants"]}
    assert [a["arm"] for a in summary["arms"]] == ["A", "B"]
    for arm in summary["arms"]:
        (member,) = arm["participants"]
        assert ARMS[member] == arm["arm"]
        for k, s in enumerate(arm["sessions"]):
            assert _close(s["success_rate"]["mean"], sessions[member][k]["success_rate"])
            assert s["success_rate"]["n"] == 1 and s["success_rate"]["sd"] is None  # one participant: no SD


class _DataRows(html.parser.HTMLParser):
    """Every <tr> with data-* attributes, by its table's data-table."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.rows: list[tuple[str | None, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("data-table")
        elif tag == "tr" and any(k.startswith("data-") for k in attrs):
            self.rows.append((self.table, attrs))


def test_the_page_shows_the_same_numbers_and_its_figures(study, report):
    summary = json.loads(report.with_name("study_summary.json").read_text())
    parser = _DataRows()
    page = report.read_text(encoding="utf-8")
    parser.feed(page)
    session_rows = [a for t, a in parser.rows if t == "sessions"]
    expected = [s for p in summary["participants"] for s in p["sessions"]]
    assert len(session_rows) == len(expected) == 4
    for attrs, s in zip(session_rows, expected):
        assert _close(attrs["data-success-rate"], s["success_rate"])
        assert _close(attrs["data-transfer-effect"], s["transfer_effect"])
    arm_rows = [a for t, a in parser.rows if t == "arms"]
    assert [a["data-arm"] for a in arm_rows] == ["A", "A", "B", "B"]
    for sub in ("01", "02"):
        for name in ("learning", "psc", "quality"):
            png = report.with_name(f"study_{name}_sub-{sub}.png")
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert png.name in page
    assert report.with_name("study_ratings_sub-01.png").is_file()
    assert not report.with_name("study_ratings_sub-02.png").exists()


def test_one_participant_and_the_study_state_as_arms(study, tmp_path):
    from rtnf.apps.report.longitudinal import read_arms
    from rtnf.apps.report.longitudinal_write import write_longitudinal

    root, _, _ = study
    state = tmp_path / "state"
    state.mkdir()
    (state / "study.json").write_text(json.dumps({"name": "t", "allocation": {"01": "B", "02": "A"}}))
    assert read_arms(state) == {"01": "B", "02": "A"}
    out = write_longitudinal(root / "out", tmp_path / "one.html", participant="sub-02", arms=read_arms(state))
    summary = json.loads(out.with_name("one_summary.json").read_text())
    assert [p["participant"] for p in summary["participants"]] == ["02"]
    assert {r["participant"] for r in summary["runs"]} == {"02"}
    assert [a["arm"] for a in summary["arms"]] == ["A"]


def test_errors_are_one_message_and_exit_code_2(tmp_path, capsys):
    from rtnf.cli import main

    assert main(["report", "longitudinal", str(tmp_path), "-o", str(tmp_path / "x.html")]) == 2
    assert "no recorded run" in capsys.readouterr().err
    bad = tmp_path / "arms.tsv"
    bad.write_text("who\tgroup\n01\tA\n")
    assert main(["report", "longitudinal", str(tmp_path), "--arms", str(bad)]) == 2
    assert "participant_id" in capsys.readouterr().err


def test_arms_are_read_from_the_participants_tsv_that_rtnf_study_writes(tmp_path):
    """rtnf study writes 'arm_code' in participants.tsv; the report read only 'arm' and refused it."""
    from rtnf.apps.report.longitudinal import read_arms

    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tarm_code\nsub-01\tA\nsub-02\tB\n")
    assert read_arms(path) == {"01": "A", "02": "B"}
    path.write_text("participant_id\tarm\nsub-03\tB\n")
    assert read_arms(path) == {"03": "B"}


def test_a_stray_or_crafted_table_is_left_out_with_a_warning_not_the_whole_report(study, tmp_path, caplog):
    """One unreadable table in a study's derivatives (a hand-made TSV, a binary file, a run label that is no
    number, a provenance nested beyond the JSON parser's limit) stopped the whole study's report, some with a
    traceback; a provenance whose ``config.feedback`` is no table crashed it too. Now such a table is left out
    with one warning naming it, and a wrong-typed provenance falls back to the run's own config."""
    import logging
    import shutil

    from rtnf.apps.report.longitudinal_write import write_longitudinal

    root, runs, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, ignore=shutil.ignore_patterns("*.nii", "*.nii.gz"))
    func = runs[0].timeseries.parent.relative_to(root / "out")
    folder = out / func
    stem = runs[0].timeseries.name.removesuffix("desc-rtnf_timeseries.tsv")  # sub-01_ses-01_task-nf_run-1_
    (folder / "sub-01_ses-01_task-nf_run-7_desc-rtnf_timeseries.tsv").write_text("foo\tbar\n1\t2\n")
    (folder / "sub-01_ses-01_task-nf_run-8_desc-rtnf_timeseries.tsv").write_bytes(b"\xff\xfe\x00garbage")
    for p in list(folder.glob(stem + "*")):
        shutil.copy(p, folder / p.name.replace("run-1_", "run-abc_"))
        shutil.copy(p, folder / p.name.replace("run-1_", "run-9_"))
    nested = folder / "sub-01_ses-01_task-nf_run-9_desc-rtnf_provenance.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    provenance = folder / (stem + "desc-rtnf_provenance.json")
    body = json.loads(provenance.read_text())
    body["config"]["feedback"], body["resumed"] = "x", 3
    provenance.write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING, logger="rtnf.apps.report.longitudinal"):
        html = write_longitudinal(out, tmp_path / "study.html")
    summary = json.loads(html.with_name("study_summary.json").read_text())
    kept = sorted((r["participant"], r["session"], r["task"], r["run"]) for r in summary["runs"])
    assert kept == sorted((r.subject, r.session, r.task, r.run) for r in runs)
    assert next(r for r in summary["runs"] if (r["participant"], r["session"], r["run"], r["task"]) ==
                ("01", "01", 1, "nf"))["role"] == "feedback"  # from the run's config: it showed feedback
    warned = " ".join(r.getMessage() for r in caplog.records)
    for label in ("run-7", "run-8", "run-abc", "run-9"):
        assert f"task-nf_{label}_desc-rtnf_timeseries.tsv" in warned, (label, warned)


def test_a_figure_that_cannot_be_drawn_is_left_out_not_the_report(study, tmp_path, caplog):
    """Tables whose FD column holds 1e308 (hand-edited or damaged) made matplotlib's ticks overflow: the whole
    report stopped with a traceback. Now that figure is left out with a warning."""
    import logging
    import shutil

    from rtnf.apps.report.longitudinal_write import write_longitudinal

    root, runs, _ = study
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, ignore=shutil.ignore_patterns("*.nii", "*.nii.gz"))
    for run in runs:
        if run.subject != runs[0].subject:
            continue
        table = out / run.timeseries.relative_to(root / "out")
        rows = read_rows(table)
        for r in rows:
            r["framewise_displacement"] = "1e308"
        table.write_text("\t".join(rows[0]) + "\n" + "".join("\t".join(r.values()) + "\n" for r in rows),
                         encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="rtnf.apps.report.longitudinal_write"):
        html = write_longitudinal(out, tmp_path / "study.html")
    assert html.is_file()
    assert not (tmp_path / f"study_quality_sub-{runs[0].subject}.png").exists()
    assert (tmp_path / f"study_learning_sub-{runs[0].subject}.png").is_file()
    assert any("quality" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
