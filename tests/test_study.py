"""``rtnf study`` end to end with the simulator: 2 participants x 2 sessions x (localizer + feedback), two arms.

Checks: the allocation is concealed (key 0600, state and outputs hold codes only), the sham participant's
shown feedback equals its yoked source's while its own ROI values are recorded, nothing in a sham run's
outputs, logs or messages tells it apart from a real one, and a run killed with SIGKILL is resumed by
``rtnf study next`` without losing a recorded row.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtnf.apps.demo import Listener, free_address, read_tsv, sim_spec, write_toml
from rtnf.cli import main
from rtnf.config import ConfigError, load_config
from rtnf.study.studyfile import check_participant_id, load_study
from tests.helpers import make_config, wait_until
from tests.study_data import ARM_WORDS, func_dir, neutral, next_run, repositioned, run_config, table_path

N_VOLUMES = 40

STUDY = """
[study]
name = "trial"
output_dir = "derivatives"
participants = ["P01", "P02"]
sessions = ["01", "02"]

[[runs]]
kind = "localizer"
config = "localizer.toml"

[[runs]]
kind = "feedback"
config = "nf.toml"

[roi]
strategy = "localizer"
roi = "acc"
top_k = 30

[arms]
arms = ["real", "sham"]
block_size = 2                # 2 participants: one per arm
"""


def _make_study(tmp_path: Path, address: str) -> Path:
    make_config(tmp_path, {**run_config(address), "session.task": "loc"}, name="localizer.toml")
    make_config(tmp_path, {**run_config(address), "session.task": "nf"}, name="nf.toml")
    (tmp_path / "study.toml").write_text(STUDY)
    return tmp_path / "study.toml"


def _simulate(tmp_path: Path, name: str, seed: int, noise_pct: float = 1.0) -> Path:
    cfg = load_config(tmp_path / "nf.toml")
    spec = sim_spec(cfg, amplitude_pct=2.0, noise_pct=noise_pct, seed=seed)
    write_toml(spec, tmp_path / f"{name}.toml")
    folder = tmp_path / "scans" / name
    proc = subprocess.run([sys.executable, "-m", "scanner_sim", "synth", str(tmp_path / f"{name}.toml"),
                           "--export-dir", str(folder), "--truth-dir", str(tmp_path / "truth" / name),
                           "--speed", "100", "--recon-delay-s", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return folder


def test_participant_ids_must_be_codes():
    for ok in ("P01", "sub07", "A3"):
        assert check_participant_id(ok) == ok
    for bad, why in (("Smith", "no digit"), ("JD", "no digit"), ("P19850312", "date"), ("120385", "date")):
        with pytest.raises(ValueError, match=why):
            check_participant_id(bad)


def test_study_file_errors_name_the_key(tmp_path):
    study = _make_study(tmp_path, "inproc://x")
    study.write_text(STUDY.replace('"P02"', '"Miller"'))
    with pytest.raises(ConfigError, match=r"study\.participants.*no digit"):
        load_study(study)
    study.write_text(STUDY.replace('arms = ["real", "sham"]', 'arms = ["sham"]'))
    with pytest.raises(ConfigError, match="yoked to participants of the 'real' arm"):
        load_study(study)
    study.write_text(STUDY.replace('name = "trial"', 'name = "trial"\nkey_file = "derivatives/k.key"'))
    with pytest.raises(ConfigError, match="key_file.*inside study.output_dir"):
        load_study(study)


def test_study_end_to_end_sham_blinding_and_crash_resume(tmp_path, capsys):
    address = free_address()
    study = _make_study(tmp_path, address)
    scans = {(p, s): _simulate(tmp_path, f"{p}_{s}", seed=seed)
             for seed, (p, s) in enumerate([("P01", "01"), ("P01", "02"), ("P02", "01"), ("P02", "02")], start=5)}

    # init: codes in the state and the dataset, the arms only in the owner-only key
    assert main(["study", "init", str(study)]) == 0
    init_out = capsys.readouterr().out
    key_path = tmp_path / "trial.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    state_text = (tmp_path / "trial-state" / "study.json").read_text()
    participants = (tmp_path / "derivatives" / "participants.tsv").read_text()
    for text in (init_out, state_text, participants):
        assert not ARM_WORDS.search(text), text
    codes = json.loads(key_path.read_text())["codes"]
    allocation = json.loads(state_text)["allocation"]
    real = next(p for p, c in allocation.items() if codes[c] == "real")
    sham = next(p for p, c in allocation.items() if codes[c] == "sham")
    assert main(["study", "init", str(study)]) == 2  # once per study
    capsys.readouterr()

    # the sham participant cannot start its feedback run before the first participant's (the real arm's) matched run
    printed = [next_run(capsys, study, sham, scans[sham, "01"])]
    assert main(["study", "next", sham, "--study", str(study), "--replay", str(scans[sham, "01"])]) == 2
    refused = capsys.readouterr().err
    assert "waits until the study's first participant has finished" in refused and not ARM_WORDS.search(refused)
    assert real == "P01"  # arms.conceal_order: the first participant leads, in the real arm

    printed.append(next_run(capsys, study, real, scans[real, "01"]))
    listener = Listener([address])  # the messages of the two feedback runs, buffered by the socket meanwhile
    try:
        time.sleep(0.3)
        printed.append(next_run(capsys, study, real, scans[real, "01"]))
        real_messages = _drain(listener)
        printed.append(next_run(capsys, study, sham, scans[sham, "01"]))
        sham_messages = _drain(listener)
    finally:
        listener.close()

    # yoked sham: what the sham participant was shown is what the real participant was shown
    src, yoked = read_tsv(table_path(tmp_path, real, "01")), read_tsv(table_path(tmp_path, sham, "01"))
    shown = [(s, y) for s, y in zip(src, yoked) if y["feedback_value"] != "n/a"]
    assert len(shown) >= 20
    assert all(s["feedback_value"] == y["feedback_value"] for s, y in shown)
    assert all(s["feedback_signal"] == y["feedback_signal"] for s, y in shown)
    # ... while its own ROI was computed and recorded (its own localizer mask, its own data)
    for subject in (real, sham):
        table = table_path(tmp_path, subject, "01")
        prov = json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())
        mask = func_dir(tmp_path, subject, "01") / f"sub-{subject}_ses-01_task-loc_run-1_desc-acclocalizer_mask.nii.gz"
        assert prov["config"]["rois"]["acc"]["mask"] == str(mask) and mask.is_file()
    assert all(y["acc_raw"] != "n/a" for y in yoked)
    assert sum(s["acc_raw"] != y["acc_raw"] for s, y in zip(src, yoked)) == N_VOLUMES

    # blinding: the sham run's files, columns, sidecars, config, provenance, log and messages are a real run's
    _check_outputs_blind(tmp_path, real, sham)
    _check_messages_blind(real_messages, sham_messages, real, sham)
    printed.append(next_run(capsys, study, real, scans[real, "02"]))  # localizer, session 02

    # crash: SIGKILL the real participant's session-02 feedback run mid-run, then `rtnf study next` resumes it
    table = table_path(tmp_path, real, "02")
    proc = subprocess.Popen([sys.executable, "-m", "rtnf", "study", "next", real, "--study", str(study), "--replay",
                             str(scans[real, "02"]), "--pace-s", "0.15"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: table.is_file() and len(read_tsv(table)) >= 10, 120), proc.poll()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = read_tsv(table)
    assert 10 <= len(before) < N_VOLUMES
    assert main(["study", "status", "--study", str(study)]) == 0
    status = capsys.readouterr().out
    assert f"resume (interrupted): sub-{real} ses-02, run 2 of 2" in status and not ARM_WORDS.search(status)
    printed.append(next_run(capsys, study, real, scans[real, "02"]))
    after = read_tsv(table)
    assert [r["index"] for r in after] == [str(i) for i in range(N_VOLUMES)]  # every volume once
    assert after[: len(before)] == before  # the rows recorded before the kill are kept as they were
    prov = json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())
    assert prov["status"] == "ended" and len(prov["resumed"]) == 1

    # the sham participant's session 02 is yoked to the resumed run
    printed += [next_run(capsys, study, sham, scans[sham, "02"]), next_run(capsys, study, sham, scans[sham, "02"])]
    src, yoked = read_tsv(table_path(tmp_path, real, "02")), read_tsv(table_path(tmp_path, sham, "02"))
    shown = [(s, y) for s, y in zip(src, yoked) if y["feedback_value"] != "n/a"]
    assert len(shown) >= 20 and all(s["feedback_value"] == y["feedback_value"] for s, y in shown)

    # the console never named an arm; status shows both finished; unblinding needs the study's own key
    assert not any(ARM_WORDS.search(p) for p in printed), [p for p in printed if ARM_WORDS.search(p)]
    assert main(["study", "status", "--study", str(study)]) == 0
    assert capsys.readouterr().out.count("4 of 4 runs done; finished") == 2
    (tmp_path / "other.key").write_text(key_path.read_text().replace("real", "sham", 1))
    assert main(["study", "unblind", "--study", str(study), "--key", str(tmp_path / "other.key")]) == 2
    assert "not this study's blinding key" in capsys.readouterr().err
    assert main(["study", "unblind", "--study", str(study), "--key", str(key_path)]) == 0
    unblinded = capsys.readouterr().out
    assert f"sub-{real}\t{allocation[real]}\treal" in unblinded and f"sub-{sham}\t{allocation[sham]}\tsham" in unblinded


def _drain(listener: Listener) -> list[tuple[str, dict]]:
    """Every message the socket has buffered since the last drain."""
    start = len(listener.messages)
    while listener.poll(0.3):
        pass
    return listener.messages[start:]


def _check_messages_blind(real_messages, sham_messages, real: str, sham: str) -> None:
    """Same topics, same fields; the run's announcement and the log lines equal but for labels and numbers."""
    assert real_messages and sham_messages
    topics = {t for t, _ in real_messages}
    assert {"volume", "feedback", "run"} <= topics
    assert topics - {"heartbeat"} == {t for t, _ in sham_messages} - {"heartbeat"}
    for topic in ("volume", "feedback"):
        keys_r = {json.dumps(sorted(b)) for t, b in real_messages if t == topic}
        keys_s = {json.dumps(sorted(b)) for t, b in sham_messages if t == topic}
        assert keys_r == keys_s, topic

    def texts(messages, subject: str, topic: str) -> set[str]:
        return {neutral(json.dumps({k: v for k, v in b.items() if k not in ("t", "run_id")}, sort_keys=True), subject)
                for t, b in messages if t == topic and (topic != "run" or b.get("event") == "end")}

    for topic in ("run", "log"):
        assert texts(real_messages, real, topic) == texts(sham_messages, sham, topic), topic
    for _, body in sham_messages:
        assert not ARM_WORDS.search(json.dumps(body).replace("n/a", "")), body


def _check_outputs_blind(root: Path, real: str, sham: str) -> None:
    """Nothing in the sham run's outputs differs from the real run's but numbers and labels."""
    rf, sf = func_dir(root, real, "01"), func_dir(root, sham, "01")

    def names(func: Path, subject: str) -> set[str]:
        return {p.name.replace(subject, "SUBJECT") for p in func.iterdir()}

    assert names(rf, real) == names(sf, sham)
    prefix = {real: f"sub-{real}_ses-01_task-nf_run-1_", sham: f"sub-{sham}_ses-01_task-nf_run-1_"}
    r, s = (lambda name: rf / (prefix[real] + name)), (lambda name: sf / (prefix[sham] + name))
    header = [f("desc-rtnf_timeseries.tsv").read_text().splitlines()[0] for f in (r, s)]
    assert header[0] == header[1]
    assert r("desc-rtnf_timeseries.json").read_text() == s("desc-rtnf_timeseries.json").read_text()
    assert r("desc-rtnf_config.toml").read_text() == s("desc-rtnf_config.toml").read_text()
    assert r("events.tsv").read_text() == s("events.tsv").read_text()
    pr, ps = (json.loads(f("desc-rtnf_provenance.json").read_text()) for f in (r, s))
    assert set(pr) == set(ps)
    assert neutral(json.dumps(pr["config"]), real) == neutral(json.dumps(ps["config"]), sham)
    assert neutral(" ".join(pr["command"]), real) == neutral(" ".join(ps["command"]), sham)
    log_r = {neutral(line.split("\t", 1)[-1], real) for line in r("desc-rtnf_log.tsv").read_text().splitlines()}
    log_s = {neutral(line.split("\t", 1)[-1], sham) for line in s("desc-rtnf_log.tsv").read_text().splitlines()}
    assert log_r == log_s
    for func in (rf, sf):
        for path in func.iterdir():
            if path.suffix in (".tsv", ".json", ".toml"):
                assert not ARM_WORDS.search(path.read_text().replace("n/a", "")), path


def _replay(cfg_path: Path, source: Path, out: str, parts=None, **overrides):
    """One run of ``cfg_path`` replayed from ``source`` in this process, into ``out``; returns its rows."""
    from rtnf.apps.replay import ReplayFeeder
    from rtnf.run.session import RunParts, run_session

    cfg = load_config(cfg_path, {"output.dir": str(cfg_path.parent / out), **overrides})
    result = run_session(cfg, cfg_path.read_text(), parts=parts or RunParts(),
                         feeder_factory=lambda export, put: ReplayFeeder(source, export, put, 0.0, 1))
    assert result.ok
    return read_tsv(result.timeseries), result.timeseries


def test_control_and_no_feedback_arms_against_plain_configs(tmp_path):
    """The control arm shows what a run configured to feed back the control ROI shows; 'none' shows nothing.

    Both keep the study's config in their outputs (the arm is not recorded) and record every ROI.
    """
    from rtnf.study.armfeedback import ArmRun

    make_config(tmp_path, {**run_config("inproc://study-arms"), "rois.ctl": {"center_mm": [0.0, -60.0, 10.0],
                                                                            "radius_mm": 8.0}}, name="nf.toml")
    source = _simulate(tmp_path, "scan", seed=3)
    cfg_path = tmp_path / "nf.toml"
    reference, _ = _replay(cfg_path, source, "reference", **{"feedback.roi": "ctl"})
    control, table = _replay(cfg_path, source, "control", ArmRun("control", control_roi="ctl").parts())
    real, _ = _replay(cfg_path, source, "real", ArmRun("real").parts())
    none, _ = _replay(cfg_path, source, "none", ArmRun("none").parts())
    assert [r["feedback_value"] for r in control] == [r["feedback_value"] for r in reference]
    assert sum(r["feedback_value"] != "n/a" for r in control) >= 20
    assert [r["feedback_value"] for r in control] != [r["feedback_value"] for r in real]
    assert {r["feedback_value"] for r in none} == {"n/a"}
    for rows in (control, none):
        assert [(r["acc_raw"], r["ctl_raw"]) for r in rows] == [(r["acc_raw"], r["ctl_raw"]) for r in real]
    prov = json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())
    assert prov["config"]["feedback"]["roi"] == "acc"  # the study's feedback ROI: the arm stays concealed


def test_example_study_loads():
    from tests.helpers import ROOT

    study = load_study(ROOT / "examples" / "study" / "study.toml")
    assert [r.kind for r in study.runs] == ["localizer", "feedback", "feedback", "transfer"]
    assert study.key_file.name == "accpain.key" and not study.key_file.is_relative_to(study.state_dir)


def test_journal_progress_resume_redo_and_torn_line(tmp_path):
    """A start without an end is resumed; an aborted run is redone under the next run number; a torn line is skipped."""
    from rtnf.study.progress import next_step
    from rtnf.study.state import StudyState

    study = load_study(_make_study(tmp_path, "inproc://x"))
    state = StudyState(tmp_path / "state")
    state.folder.mkdir()
    ident = {"subject": "P01", "session": "01", "position": 0, "task": "loc", "run": 1}
    state.append("start", **ident)
    step = next_step(study, state.events(), "P01")
    assert (step.session, step.planned.kind, step.run, step.resume) == ("01", "localizer", 1, True)
    state.append("end", **ident, status="aborted", ok=False)
    step = next_step(study, state.events(), "P01")
    assert (step.planned.kind, step.run, step.resume) == ("localizer", 2, False)
    state.append("start", **{**ident, "run": 2})
    state.append("end", **{**ident, "run": 2}, status="ended", ok=True, table="t.tsv")
    with open(state.journal_path, "a") as f:
        f.write('{"event": "start", "subj')  # a crash in the middle of a line
    step = next_step(study, state.events(), "P01")
    assert (step.session, step.planned.kind, step.run, step.resume) == ("01", "feedback", 1, False)
    assert next_step(study, state.events(), "P02").run == 1


def test_atlas_strategy_puts_the_mni_region_on_each_sessions_grid(tmp_path, capsys):
    """roi.strategy = "atlas": the feedback run's ROI is `rtnf roi mni`'s region on the session's first volume."""
    pytest.importorskip("SimpleITK", reason="the atlas strategy registers with SimpleITK")
    import nibabel as nib
    import numpy as np

    from rtnf.apps import roidef

    study = _make_study(tmp_path, free_address())
    text = STUDY.replace('participants = ["P01", "P02"]', 'participants = ["P01"]').replace('sessions = ["01", "02"]',
                                                                                            'sessions = ["01"]')
    text = text.replace('strategy = "localizer"\nroi = "acc"\ntop_k = 30',
                        'strategy = "atlas"\nroi = "acc"\nregion = "anterior_cingulate"')
    study.write_text(text.replace('arms = ["real", "sham"]\nblock_size = 2', 'arms = ["real"]'))
    # 0.5 % noise: this test is about the study's plumbing; `rtnf roi mni`'s own tests judge the registration
    source = _simulate(tmp_path, "scan", seed=9, noise_pct=0.5)
    assert main(["study", "init", str(study)]) == 0
    next_run(capsys, study, "P01", source)
    next_run(capsys, study, "P01", source)
    func = func_dir(tmp_path, "P01", "01")
    mask_path = func / "sub-P01_ses-01_task-loc_run-1_desc-accatlas_mask.nii.gz"
    table = table_path(tmp_path, "P01", "01")
    prov = json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())
    assert prov["config"]["rois"]["acc"]["mask"] == str(mask_path)
    assert mask_path.with_name(mask_path.name.replace(".nii.gz", ".png")).is_file()
    # the same region `rtnf roi mni` makes on the localizer's first volume (the simulator's images lie in MNI space)
    reference = roidef.load_reference(func / "sub-P01_ses-01_task-loc_run-1_desc-rtnf_bold.nii", volume=0)
    expected = roidef.mni_roi(reference.grid, roidef.register_mni(reference), region="anterior_cingulate").mask
    mask = nib.load(mask_path)
    # Two registrations with two ITK threads: their threaded sums may differ in the last digits (up to 3e-4 mm,
    # depending on the process's history), which can move a voxel on the region's edge in or out; a mask from
    # another region or another registration differs in tens of voxels.
    differ = np.sum((np.asarray(mask.dataobj) > 0) != expected)
    assert expected.sum() > 20 and differ <= 2, (differ, expected.sum())
    ijk = np.argwhere(expected)
    com = mask.affine[:3, :3] @ ijk.mean(axis=0) + mask.affine[:3, 3]
    assert np.linalg.norm(com - [0.0, 30.0, 12.0]) < 6.0
    assert sum(r["feedback_value"] != "n/a" for r in read_tsv(table)) >= 20


def test_carried_strategy_moves_the_first_sessions_roi_with_the_head(tmp_path, capsys):
    """roi.strategy = "carried": session 2's ROI is session 1's localizer ROI carried by the head's known move."""
    pytest.importorskip("SimpleITK", reason="carrying ROIs registers with SimpleITK")
    import nibabel as nib
    import numpy as np

    from scanner_sim.synth import rigid_matrix

    study = _make_study(tmp_path, free_address())
    text = STUDY.replace('participants = ["P01", "P02"]', 'participants = ["P01"]')
    text = text.replace('strategy = "localizer"', 'strategy = "carried"')
    study.write_text(text.replace('arms = ["real", "sham"]\nblock_size = 2', 'arms = ["real"]'))
    day1 = _simulate(tmp_path, "day1", seed=11)
    pose = [6.0, -5.0, 4.0, 0.10, -0.06, 0.08]  # mm, radians: the head lies elsewhere on day 2
    day2 = repositioned(_simulate(tmp_path, "day2", seed=12), tmp_path / "day2.nii.gz", pose)
    assert main(["study", "init", str(study)]) == 0
    for source in (day1, day1, day2, day2):
        next_run(capsys, study, "P01", source)
    f1, f2 = func_dir(tmp_path, "P01", "01"), func_dir(tmp_path, "P01", "02")
    mask1 = nib.load(f1 / "sub-P01_ses-01_task-loc_run-1_desc-acclocalizer_mask.nii.gz")
    carried_path = f2 / "sub-P01_ses-02_task-loc_run-1_desc-acccarried_mask.nii.gz"
    carried = nib.load(carried_path)
    table = table_path(tmp_path, "P01", "02")
    prov = json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())
    assert prov["config"]["rois"]["acc"]["mask"] == str(carried_path)
    # truth: every voxel of the day-1 ROI lands where the head took it, within a third of a 3 mm voxel
    summary = json.loads(carried_path.with_name(carried_path.name.replace("_mask.nii.gz", "_transfer.json")).read_text())
    ijk = np.argwhere(np.asarray(mask1.dataobj) > 0)
    points = np.c_[ijk @ mask1.affine[:3, :3].T + mask1.affine[:3, 3], np.ones(len(ijk))]
    error = np.linalg.norm((points @ np.asarray(summary["day1_to_dayN"]).T - points @ rigid_matrix(pose).T)[:, :3], axis=1)
    assert error.max() < 1.0, error
    # ... and the carried mask is the day-1 mask moved by the true pose (same resampling)
    from rtnf.apps.roidef.transfer import carry_mask
    from rtnf.scanner.volume import Grid

    true_mask = carry_mask(np.asarray(mask1.dataobj) > 0, mask1.affine, Grid(carried.shape, carried.affine),
                           np.linalg.inv(rigid_matrix(pose)), interpolation="nearest")
    got = np.asarray(carried.dataobj) > 0
    assert 2 * (got & true_mask).sum() / (got.sum() + true_mask.sum()) >= 0.9
    assert summary["brain_dice"] > 0.9
    assert sum(r["feedback_value"] != "n/a" for r in read_tsv(table)) >= 20
