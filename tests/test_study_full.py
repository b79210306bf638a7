"""Issue 18's acceptance test: a whole simulated study run end to end by ``rtnf study``.

3 participants x 3 sessions x (localizer + 2 feedback runs + transfer run), two arms (real feedback and
yoked sham), the ROI carried from session 1 (``roi.strategy = "carried"``). Every run is a simulated series
(known ROI activity, growing from session to session) seen through the head position of its participant and
session (a known rigid transform, different for each), replayed as fast as it goes by ``rtnf study next
--replay``. Checked against the truth:

1. each later session's carried ROI is session 1's localizer ROI moved by the head's true move (centroid
   within one voxel, Dice >= 0.9), and session 1's ROI lies in the simulated active region;
2. each sham run's shown feedback equals its yoked source run's, volume by volume;
3. blinding: no arm's name in any output, log, state or console line; a sham participant's runs have a real
   participant's file names, columns, sidecars and config;
4. ``rtnf report longitudinal``'s per-participant session numbers and its by-arm-code numbers equal those
   recomputed with NumPy from the recorded tables. The transfer run has the feedback runs' task label (as in
   ``examples/study``): the report knows it from the kind the study recorded, without ``--transfer-task``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from rtnf.apps.demo import free_address, read_tsv, sim_spec
from rtnf.cli import main
from rtnf.config import load_config
from tests.helpers import make_config
from tests.longitudinal_data import read_rows, recompute_run
from tests.study_data import ARM_WORDS, func_dir, run_config, table_path

pytestmark = pytest.mark.slow

N_VOLUMES = 40  # 20 s at TR 0.5 s: rest/regulate blocks of 8 volumes, twice, then rest
LAG_S = 2.0  # feedback.hemodynamic_lag_s: 4 volumes
PARTICIPANTS = ("P01", "P02", "P03")
SESSIONS = ("01", "02", "03")
AMPLITUDE_PCT = {"01": 3.0, "02": 3.5, "03": 4.0}  # the ROI's true activation: a participant who learns
ROI_CENTER_MM, ROI_RADIUS_MM = np.array([0.0, 30.0, 15.0]), 8.0  # tests.helpers' default ROI, simulated active
RUNS = (("loc", 1), ("nf", 1), ("nf", 2), ("nf", 3))  # each session's runs, as the study numbers them (per task)
ROLES = {("loc", 1): "no feedback", ("nf", 1): "feedback", ("nf", 2): "feedback", ("nf", 3): "transfer"}

STUDY = """
[study]
name = "full"
output_dir = "derivatives"
participants = ["P01", "P02", "P03"]
sessions = ["01", "02", "03"]

[[runs]]
kind = "localizer"
config = "loc.toml"

[[runs]]
kind = "feedback"
config = "nf.toml"

[[runs]]
kind = "feedback"
config = "nf.toml"

[[runs]]
kind = "transfer"
config = "transfer.toml"

[roi]
strategy = "carried"
roi = "acc"
top_k = 30

[arms]
arms = ["real", "sham"]
block_size = 2                # the first two participants: one per arm
"""


def _pose(participant: int, session: int) -> list[float]:
    """A different head position for every participant and session: mm and radians, up to 9 mm and 7 degrees."""
    rng = np.random.default_rng(1000 + 10 * participant + session)
    return [*rng.uniform(-9.0, 9.0, 3), *rng.uniform(-0.12, 0.12, 3)]


POSES = {(p, s): _pose(i, k) for i, p in enumerate(PARTICIPANTS) for k, s in enumerate(SESSIONS)}


def _make_study(root: Path) -> Path:
    address = free_address()
    common = {**run_config(address, N_VOLUMES), "feedback.hemodynamic_lag_s": LAG_S}
    # the transfer run's config has the feedback runs' task label: only the study knows its kind
    for name, task in (("loc", "loc"), ("nf", "nf"), ("transfer", "nf")):
        make_config(root, {**common, "session.task": task}, name=f"{name}.toml")
    (root / "study.toml").write_text(STUDY)
    return root / "study.toml"


def _source(root: Path, phantom, subject: str, session: str, seed: int) -> Path:
    """A simulated run of ``nf.toml`` (fresh noise, the session's activation) as a 4D NIfTI in the session's pose."""
    import nibabel as nib

    from scanner_sim.generate import as_spec
    from scanner_sim.synth import SyntheticRun, apply_motion

    cfg = load_config(root / "nf.toml")
    spec = as_spec(sim_spec(cfg, amplitude_pct=AMPLITUDE_PCT[session], noise_pct=1.0, seed=seed))
    run = SyntheticRun(spec, phantom=phantom)
    pose = POSES[subject, session]
    data = np.stack([apply_motion(run.volume(i), phantom.affine, pose, order=1) for i in range(spec.n_volumes)],
                    axis=-1)
    out = root / "sources" / f"{subject}_{session}_{seed}.nii"
    out.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), phantom.affine), out)
    return out


class _Console(logging.Handler):
    """Every log line of rtnf's loggers while the study runs (what the operator's console shows)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _study_cli(*args: str) -> str:
    """``rtnf ARGS`` in this process; asserts exit 0 and returns what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    assert code == 0, out.getvalue() + err.getvalue()
    return out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study run to its end: its folder, the allocation, each participant's arm, the console's lines."""
    from scanner_sim.generate import as_spec
    from scanner_sim.phantom import make_phantom

    root = tmp_path_factory.mktemp("study_full")
    study_file = _make_study(root)
    spec = as_spec(sim_spec(load_config(root / "nf.toml")))
    phantom = make_phantom(spec.shape, spec.voxel_mm)
    console = _Console()
    logger = logging.getLogger("rtnf")
    level = logger.level
    logger.addHandler(console)
    logger.setLevel(logging.INFO)
    try:
        printed = [_study_cli("study", "init", str(study_file))]
        codes = json.loads((root / "full.key").read_text())["codes"]
        allocation = json.loads((root / "full-state" / "study.json").read_text())["allocation"]
        arm = {p: codes[allocation[p]] for p in PARTICIPANTS}
        assert sorted(set(arm.values())) == ["real", "sham"]
        # every feedback run waits for the first participant's (P01, allocated to the real arm): it goes first
        order = sorted(PARTICIPANTS, key=lambda p: (arm[p] != "real", p))
        seed = 0
        for session in SESSIONS:
            for subject in order:
                for _ in RUNS:
                    seed += 1
                    source = _source(root, phantom, subject, session, seed)
                    printed.append(_study_cli("study", "next", subject, "--study", str(study_file),
                                              "--replay", str(source)))
                    source.unlink()  # 24 MB each
        printed.append(_study_cli("study", "status", "--study", str(study_file)))
    finally:
        logger.removeHandler(console)
        logger.setLevel(level)
    return root, allocation, arm, printed + console.lines


def _loc_file(root: Path, subject: str, session: str, desc: str) -> Path:
    """A file the session's localizer run (or the study beside it) wrote."""
    return func_dir(root, subject, session) / f"sub-{subject}_ses-{session}_task-loc_run-1_desc-{desc}"


def _provenance(table: Path) -> dict:
    """The provenance beside a recorded table."""
    return json.loads(table.with_name(table.name.replace("timeseries.tsv", "provenance.json")).read_text())


def _world(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Points (n, 3) through a 4x4 affine (voxel indices to mm, or mm to mm)."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def test_carried_rois_lie_within_a_voxel_of_the_truly_moved_first_session_roi(study):
    import nibabel as nib

    from rtnf.apps.roidef.transfer import carry_mask
    from rtnf.scanner.volume import Grid
    from scanner_sim.synth import rigid_matrix

    root, _, _, _ = study
    for subject in PARTICIPANTS:
        day1 = nib.load(_loc_file(root, subject, "01", "acclocalizer_mask.nii.gz"))
        mask1 = np.asarray(day1.dataobj) > 0
        points1 = _world(np.argwhere(mask1), day1.affine)
        # known ROI activity: session 1's localizer ROI is the simulated active sphere, where the head put it
        at_rest = _world(points1, np.linalg.inv(rigid_matrix(POSES[subject, "01"])))
        inside = np.linalg.norm(at_rest - ROI_CENTER_MM, axis=1) <= ROI_RADIUS_MM + 3.0
        assert mask1.sum() == 30 and inside.mean() >= 0.8, (subject, inside.mean())
        for task, run in RUNS[1:]:  # session 1's runs feed back its own localizer's ROI
            prov = _provenance(table_path(root, subject, "01", task, run))
            own = _loc_file(root, subject, "01", "acclocalizer_mask.nii.gz")
            assert prov["config"]["rois"]["acc"]["mask"] == str(own)
        for session in SESSIONS[1:]:
            path = _loc_file(root, subject, session, "acccarried_mask.nii.gz")
            carried = nib.load(path)
            got = np.asarray(carried.dataobj) > 0
            # truth: the head moved from session 1's pose to this session's; a voxel of session N is in the moved
            # ROI when its centre came from a voxel of session 1's ROI (nearest neighbour)
            day1_to_day_n = rigid_matrix(POSES[subject, session]) @ np.linalg.inv(rigid_matrix(POSES[subject, "01"]))
            truth = carry_mask(mask1, day1.affine, Grid(carried.shape, carried.affine), np.linalg.inv(day1_to_day_n),
                               interpolation="nearest")
            # the registration put every voxel of the day-1 ROI where the head took it (within 1 mm)
            summary = json.loads(path.with_name(path.name.replace("_mask.nii.gz", "_transfer.json")).read_text())
            homogeneous = np.c_[points1, np.ones(len(points1))]
            difference = np.asarray(summary["day1_to_dayN"]) - day1_to_day_n
            error = np.linalg.norm((homogeneous @ difference.T)[:, :3], axis=1)
            assert error.max() < 1.0, (subject, session, error.max())
            # the localizer's top-k voxels lie scattered: carrying must keep each of them, not only the clumps
            assert abs(int(got.sum()) - int(mask1.sum())) <= 3, (subject, session, int(got.sum()))
            dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
            true_centroid = _world(points1.mean(axis=0)[None], day1_to_day_n)[0]
            shift = np.linalg.norm(_world(np.argwhere(got), carried.affine).mean(axis=0) - true_centroid)
            voxel = float(np.linalg.norm(carried.affine[:3, :3], axis=0).min())
            assert dice >= 0.9 and shift < voxel, (subject, session, dice, shift)
            # ... and it is the ROI every later run of the session fed back and recorded
            for task, run in RUNS[1:]:
                prov = _provenance(table_path(root, subject, session, task, run))
                assert prov["config"]["rois"]["acc"]["mask"] == str(path)


def test_each_sham_run_shows_its_yoked_source_runs_feedback(study):
    root, _, arm, _ = study
    real = [p for p in PARTICIPANTS if arm[p] == "real"]
    sham = [p for p in PARTICIPANTS if arm[p] == "sham"]
    source = real[0]  # the earliest real participant to complete the matched run (the real arm ran first)
    for subject in sham:
        for session in SESSIONS:
            for run in (1, 2):
                src = read_tsv(table_path(root, source, session, "nf", run))
                yoked = read_tsv(table_path(root, subject, session, "nf", run))
                assert len(src) == len(yoked) == N_VOLUMES
                shown = [(s, y) for s, y in zip(src, yoked) if y["feedback_value"] != "n/a"]
                assert len(shown) >= 20, (subject, session, run)
                assert all(s["feedback_value"] == y["feedback_value"] for s, y in shown), (subject, session, run)
                assert all(s["feedback_signal"] == y["feedback_signal"] for s, y in shown)
                # ... while its own ROI (carried or its own localizer's) was computed from its own data
                assert all(y["acc_raw"] != "n/a" for y in yoked)
                assert sum(s["acc_raw"] != y["acc_raw"] for s, y in zip(src, yoked)) == N_VOLUMES
    # the real participants' feedback is their own: another real participant's differs
    if len(real) > 1:
        a, b = (read_tsv(table_path(root, p, "01", "nf", 1)) for p in real[:2])
        assert [r["feedback_value"] for r in a] != [r["feedback_value"] for r in b]


def test_blinding_holds_in_every_output_log_and_console_line(study):
    root, _, arm, console = study
    assert any("carried from session 01" in line for line in console)  # the console's log lines were seen
    assert not [line for line in console if ARM_WORDS.search(line)]
    texts = [p for folder in (root / "derivatives", root / "full-state") for p in folder.rglob("*")
             if p.suffix in (".tsv", ".json", ".jsonl", ".toml", ".txt", ".log", ".html")]
    assert len(texts) > 36 * 4
    for path in texts:
        assert not ARM_WORDS.search(path.read_text(encoding="utf-8").replace("n/a", "")), path
    # a sham participant's runs look like a real participant's: the same files, columns, sidecars and config
    real = next(p for p in PARTICIPANTS if arm[p] == "real")
    for sham in (p for p in PARTICIPANTS if arm[p] == "sham"):
        for session in SESSIONS:
            rf, sf = func_dir(root, real, session), func_dir(root, sham, session)
            assert ({p.name.replace(real, "SUBJECT") for p in rf.iterdir()}
                    == {p.name.replace(sham, "SUBJECT") for p in sf.iterdir()}), (sham, session)
            for task, run in RUNS:
                r, s = (table_path(root, p, session, task, run) for p in (real, sham))
                assert read_rows(r)[0].keys() == read_rows(s)[0].keys()
                for suffix in ("timeseries.json", "config.toml"):
                    assert (r.with_name(r.name.replace("timeseries.tsv", suffix)).read_text()
                            == s.with_name(s.name.replace("timeseries.tsv", suffix)).read_text()), (task, suffix)
                events = [t.with_name(t.name.replace("desc-rtnf_timeseries.tsv", "events.tsv")) for t in (r, s)]
                assert events[0].read_text() == events[1].read_text()


@pytest.fixture(scope="module")
def report(study):
    root, _, _, _ = study
    out = root / "reports" / "study.html"
    _study_cli("report", "longitudinal", str(root / "derivatives"), "-o", str(out), "--arms", str(root / "full-state"))
    return out


LAG = round(LAG_S / 0.5)


def _close(got, want, tol=1e-9) -> bool:
    got = math.nan if got is None else float(got)  # the report's JSON writes NaN as null
    want = float(want)
    return (math.isnan(got) and math.isnan(want)) or abs(got - want) <= tol * max(1.0, abs(want))


def _recomputed_session(root: Path, subject: str, session: str) -> dict[str, float]:
    """A session's numbers from its four recorded tables, with NumPy (see tests.longitudinal_data.recompute_run)."""
    runs = {(task, run): recompute_run(table_path(root, subject, session, task, run), LAG) for task, run in RUNS}
    fb = [runs["nf", 1], runs["nf", 2]]
    tr = [runs["nf", 3]]
    out = {
        "success_rate": np.mean([x for w in fb for x in w["success"]]),
        "toward_goal": np.mean([x for w in fb for x in w["toward"]]),
        "transfer_success_rate": np.mean([x for w in tr for x in w["success"]]),
        "transfer_toward_goal": np.mean([x for w in tr for x in w["toward"]]),
        "psc_regulate_acc": np.mean([w["psc_regulate"] for w in fb + tr]),
        "psc_rest_acc": np.mean([w["psc_rest"] for w in fb + tr]),
        "tsnr_acc": np.mean([w["tsnr"] for w in fb + tr]),
        "fd_mean_mm": np.mean([w["fd_mean"] for w in runs.values()]),
    }
    out["transfer_effect"] = out["transfer_toward_goal"] - out["toward_goal"]
    return out


def test_longitudinal_report_per_run_and_per_session_numbers_equal_the_recorded_tables(study, report):
    root, _, _, _ = study
    summary = json.loads(report.with_name("study_summary.json").read_text())
    written = read_rows(report.with_name("study_runs.tsv"))
    assert len(written) == len(PARTICIPANTS) * len(SESSIONS) * len(RUNS)
    by_key = {(r["participant"], r["session"], r["task"], r["run"]): r for r in written}
    for (subject, session, task, run), got in by_key.items():
        want = recompute_run(table_path(root, subject, session, task, int(run)), LAG)
        assert got["role"] == ROLES[task, int(run)]
        assert int(got["n_blocks"]) == len(want["success"]) and int(got["n_success"]) == sum(want["success"])
        for key, value in (("mean_toward_goal", np.mean(want["toward"]) if want["toward"] else math.nan),
                           ("psc_regulate_acc", want["psc_regulate"]), ("psc_rest_acc", want["psc_rest"]),
                           ("fd_mean_mm", want["fd_mean"]), ("tsnr_acc", want["tsnr"])):
            assert _close(got[key] if got[key] != "n/a" else None, value), (subject, session, task, run, key)
    assert [p["participant"] for p in summary["participants"]] == list(PARTICIPANTS)
    for p in summary["participants"]:
        subject = p["participant"]
        assert [s["session"] for s in p["sessions"]] == list(SESSIONS)
        for s in p["sessions"]:
            assert (s["n_feedback_runs"], s["n_transfer_runs"]) == (2, 1)
            want = _recomputed_session(root, subject, s["session"])
            for key, value in want.items():
                assert _close(s[key], value), (subject, s["session"], key, s[key], value)
        per_run = [np.mean(recompute_run(table_path(root, subject, session, "nf", run), LAG)["toward"])
                   for session in SESSIONS for run in (1, 2)]
        assert _close(p["learning_slope_toward_goal"], np.polyfit(np.arange(6), per_run, 1)[0])


def test_longitudinal_report_by_arm_code_equals_the_recomputation(study, report):
    from rtnf.apps.report.longitudinal import ARM_SESSION_KEYS

    root, allocation, _, _ = study
    summary = json.loads(report.with_name("study_summary.json").read_text())
    codes = sorted(set(allocation.values()))
    assert [a["arm"] for a in summary["arms"]] == codes  # codes only: what they mean stays in the key
    for path in report.parent.iterdir():
        if path.suffix in (".html", ".json", ".tsv"):
            assert not ARM_WORDS.search(path.read_text(encoding="utf-8").replace("n/a", "")), path
    sessions = {(p, s): _recomputed_session(root, p, s) for p in PARTICIPANTS for s in SESSIONS}
    for entry in summary["arms"]:
        members = [p for p in PARTICIPANTS if allocation[p] == entry["arm"]]
        assert entry["participants"] == members
        assert [s["position"] for s in entry["sessions"]] == [1, 2, 3]
        for k, session in enumerate(SESSIONS):
            for key in ARM_SESSION_KEYS:
                values = np.array([sessions[p, session][key] for p in members])
                got = entry["sessions"][k][key]
                assert got["n"] == len(members)
                assert _close(got["mean"], values.mean()), (entry["arm"], session, key)
                assert _close(got["sd"], values.std(ddof=1) if len(values) > 1 else math.nan), (entry["arm"], key)
