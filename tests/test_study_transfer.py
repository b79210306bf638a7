"""A study's transfer runs are labelled by the study, not guessed from their task label (issue 18 leftovers).

A study laid out as ``examples/study``: the transfer run uses the feedback run's config, so it has the
feedback runs' task label (``nf``) and only the study knows it is a transfer run. 2 participants (real and
yoked sham) x 1 session x (feedback run + transfer run), each a simulated series replayed by ``rtnf study
next``. Checked: every run's provenance carries the study's kind (the same in both arms), ``rtnf report
longitudinal`` without ``--transfer-task`` reports the transfer runs as transfer runs, and its transfer-run
numbers equal those recomputed with NumPy from the recorded tables; a run without the recorded kind (one
recorded outside a study) still falls back to the task label (``--transfer-task``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from rtnf.apps.demo import free_address, sim_spec
from rtnf.cli import main
from rtnf.config import load_config
from tests.helpers import make_config
from tests.longitudinal_data import read_rows, recompute_run
from tests.study_data import ARM_WORDS, next_run, run_config, table_path

N_VOLUMES = 40
LAG = 4  # feedback.hemodynamic_lag_s 2 s at TR 0.5 s

STUDY = """
[study]
name = "xfer"
output_dir = "derivatives"
participants = ["P01", "P02"]
sessions = ["01"]

[[runs]]
kind = "feedback"
config = "nf.toml"

[[runs]]
kind = "transfer"
config = "nf.toml"            # as in examples/study: the feedback run's config, so its task label

[roi]
strategy = "config"
roi = "acc"

[arms]
arms = ["real", "sham"]
block_size = 2
"""


def _provenance(table: Path) -> dict:
    return json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())


def _close(got, want, tol=1e-9) -> bool:
    got = math.nan if got is None else float(got)  # the report's JSON writes NaN as null
    return (math.isnan(got) and math.isnan(want)) or abs(got - want) <= tol * max(1.0, abs(want))


def test_transfer_runs_are_reported_as_the_study_ran_them(tmp_path, capsys):
    from scanner_sim.generate import generate_run

    make_config(tmp_path, {**run_config(free_address(), N_VOLUMES), "session.task": "nf",
                           "feedback.hemodynamic_lag_s": 2.0}, name="nf.toml")
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    assert main(["study", "init", str(study)]) == 0
    capsys.readouterr()
    allocation = json.loads((tmp_path / "xfer-state" / "study.json").read_text())["allocation"]
    cfg = load_config(tmp_path / "nf.toml")
    seed = 10
    for subject in ("P01", "P02"):  # P01 leads (arms.conceal_order): the real arm, the sham's source
        for _ in range(2):
            seed += 1
            sim = generate_run(sim_spec(cfg, amplitude_pct=2.5, noise_pct=1.0, seed=seed), tmp_path / f"sim{seed}")
            next_run(capsys, study, subject, sim.export_dir)

    # the kind is the study file's: feedback run then transfer run, alike in both arms
    for subject in ("P01", "P02"):
        feedback, transfer = (table_path(tmp_path, subject, "01", "nf", run) for run in (1, 2))
        assert _provenance(feedback)["run_kind"] == "feedback"
        assert _provenance(transfer)["run_kind"] == "transfer"
        assert _provenance(transfer)["config"]["feedback"]["enabled"] is False
        assert _provenance(transfer)["config"]["session"]["task"] == "nf"

    out = tmp_path / "reports" / "study.html"
    assert main(["report", "longitudinal", str(tmp_path / "derivatives"), "-o", str(out),
                 "--arms", str(tmp_path / "xfer-state")]) == 0
    capsys.readouterr()
    rows = {(r["participant"], r["run"]): r for r in read_rows(out.with_name("study_runs.tsv"))}
    assert {key: r["role"] for key, r in rows.items()} == {
        ("P01", "1"): "feedback", ("P01", "2"): "transfer", ("P02", "1"): "feedback", ("P02", "2"): "transfer"}
    summary = json.loads(out.with_name("study_summary.json").read_text())
    for participant in summary["participants"]:
        subject = participant["participant"]
        (session,) = participant["sessions"]
        assert (session["n_feedback_runs"], session["n_transfer_runs"]) == (1, 1)
        fb, tr = (recompute_run(table_path(tmp_path, subject, "01", "nf", run), LAG) for run in (1, 2))
        assert len(tr["toward"]) == 2
        want = {"transfer_toward_goal": np.mean(tr["toward"]), "transfer_success_rate": np.mean(tr["success"]),
                "toward_goal": np.mean(fb["toward"]), "success_rate": np.mean(fb["success"])}
        want["transfer_effect"] = want["transfer_toward_goal"] - want["toward_goal"]
        for key, value in want.items():
            assert _close(session[key], value), (subject, key, session[key], value)
        assert _close(float(rows[subject, "2"]["mean_toward_goal"]), np.mean(tr["toward"]))
    for entry in summary["arms"]:  # by arm code: one participant each, its transfer effect
        (member,) = entry["participants"]
        assert entry["arm"] == allocation[member]
        mine = next(p for p in summary["participants"] if p["participant"] == member)
        assert _close(entry["sessions"][0]["transfer_effect"]["mean"], mine["sessions"][0]["transfer_effect"])
    for path in out.parent.iterdir():
        if path.suffix in (".html", ".json", ".tsv"):
            assert not ARM_WORDS.search(path.read_text(encoding="utf-8").replace("n/a", "")), path

    # a run recorded outside a study has no kind: its role is guessed from its config and task label
    from rtnf.apps.report.longitudinal import find_study_runs

    plain = tmp_path / "plain"
    source = table_path(tmp_path, "P01", "01", "nf", 2)
    target = plain / source.parent.relative_to(tmp_path / "derivatives")
    target.mkdir(parents=True)
    for path in source.parent.glob(source.name.replace("desc-rtnf_timeseries.tsv", "*")):
        shutil.copy(path, target / path.name)
    prov = target / source.name.replace("timeseries.tsv", "provenance.json")
    record = json.loads(prov.read_text())
    del record["run_kind"]
    prov.write_text(json.dumps(record))
    assert [r.role for r in find_study_runs(plain)] == ["no feedback"]
    assert [r.role for r in find_study_runs(plain, transfer_tasks=("nf",))] == ["transfer"]
