"""A session file: localizer (no feedback, whole-brain t-map) -> localizer ROI -> feedback run -> transfer run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.config import ConfigError
from rtnf.apps.demo import read_tsv, sim_spec, write_toml
from rtnf.run.study_session import load_study_session
from tests.helpers import make_config, pattern

RUN = {"session.subject": "x", "scanner.n_volumes": 40, "scanner.dummy_volumes": 0,
       "protocol.pattern": pattern(rest=8, regulate=8), "publish.preview": False, "output.dir": "unused"}

SESSION = """
[session]
subject = "07"
session = "02"
output_dir = "derivatives"

[[runs]]
config = "localizer.toml"
feedback = false

[[runs]]
config = "nf.toml"
roi_from_localizer = {{ run = 1, roi = "acc", top_k = 30 }}

[[runs]]
config = "nf.toml"
feedback = false
{extra}
"""


def _write(tmp_path: Path, extra: str = "") -> Path:
    make_config(tmp_path, {**RUN, "session.task": "localizer", "model.whole_brain": True}, name="localizer.toml")
    make_config(tmp_path, {**RUN, "session.task": "nf", "model.whole_brain": False}, name="nf.toml")
    path = tmp_path / "session.toml"
    path.write_text(SESSION.format(extra=extra))
    return path


def test_session_file_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"runs\[2\]\.colour"):
        load_study_session(_write(tmp_path, "colour = 1"))
    path = _write(tmp_path)
    path.write_text(path.read_text().replace("run = 1,", "run = 3,"))
    with pytest.raises(ConfigError, match=r"roi_from_localizer.run': 3. Allowed: an earlier run, 1 to 1"):
        load_study_session(path)


def test_localizer_roi_feedback_and_transfer_runs(tmp_path):
    path = _write(tmp_path)
    study = load_study_session(path)
    sources = []
    for k in range(3):
        folder = tmp_path / f"scan{k}"
        from rtnf.config import load_config

        cfg = load_config(tmp_path / "nf.toml")
        spec = sim_spec(cfg, amplitude_pct=2.0, seed=10 + k)
        write_toml(spec, tmp_path / f"spec{k}.toml")
        proc = subprocess.run([sys.executable, "-m", "scanner_sim", "synth", str(tmp_path / f"spec{k}.toml"),
                               "--export-dir", str(folder), "--truth-dir", str(tmp_path / f"truth{k}"),
                               "--speed", "100", "--recon-delay-s", "0"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        sources.append(folder)
    proc = subprocess.run([sys.executable, "-m", "rtnf", "session", str(path), "--replay", *map(str, sources)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    func = tmp_path / "derivatives" / "sub-07" / "ses-02" / "func"
    loc = read_tsv(func / "sub-07_ses-02_task-localizer_run-1_desc-rtnf_timeseries.tsv")
    nf1 = read_tsv(func / "sub-07_ses-02_task-nf_run-1_desc-rtnf_timeseries.tsv")
    nf2 = read_tsv(func / "sub-07_ses-02_task-nf_run-2_desc-rtnf_timeseries.tsv")
    assert len(loc) == len(nf1) == len(nf2) == 40
    # localizer and transfer runs: computed and recorded, never shown
    for rows in (loc, nf2):
        assert {r["feedback_value"] for r in rows} == {"n/a"}
        assert {r["feedback_reason"] for r in rows} == {"no feedback in this run"}
    assert sum(r["feedback_value"] != "n/a" for r in nf1) > 25
    # the localizer ROI: 30 voxels around the simulated activation, used by the feedback run
    mask_path = func / "sub-07_ses-02_task-localizer_run-1_desc-acclocalizer_mask.nii.gz"
    mask = nib.load(mask_path)
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    assert len(ijk) == 30
    com = mask.affine[:3, :3] @ ijk.mean(axis=0) + mask.affine[:3, 3]
    assert np.linalg.norm(com - [0.0, 30.0, 15.0]) < 8.0
    prov = json.loads((func / "sub-07_ses-02_task-nf_run-1_desc-rtnf_provenance.json").read_text())
    assert prov["config"]["rois"]["acc"]["mask"] == str(mask_path)
    assert prov["config"]["rois"]["acc"]["center_mm"] is None


def test_outputs_form_a_bids_derivatives_dataset(tmp_path):
    """Structural check of what a session writes: dataset description, names, sidecars, events."""
    import re

    test_localizer_roi_feedback_and_transfer_runs(tmp_path)
    root = tmp_path / "derivatives"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"] and desc["GeneratedBy"][0]["Name"] == "rtnf"
    func = root / "sub-07" / "ses-02" / "func"
    entity = r"sub-07_ses-02_task-[a-zA-Z0-9]+_run-[0-9]+"
    allowed = re.compile(
        entity + r"_(events\.tsv|desc-rtnf_(timeseries\.(tsv|json)|bold\.(nii|json)|config\.toml|provenance\.json"
        r"|log\.tsv|stat-t_statmap\.nii\.gz)|desc-screen_events\.(tsv|json)|desc-[a-zA-Z0-9]+_mask\.nii\.gz)$"
    )
    names = sorted(p.name for p in func.iterdir())
    assert all(allowed.match(n) for n in names), [n for n in names if not allowed.match(n)]
    for table in func.glob("*_desc-rtnf_timeseries.tsv"):
        prefix = table.name.removesuffix("_desc-rtnf_timeseries.tsv")
        for suffix in ("_events.tsv", "_desc-rtnf_timeseries.json", "_desc-rtnf_bold.nii", "_desc-rtnf_config.toml",
                       "_desc-rtnf_provenance.json", "_desc-rtnf_log.tsv"):
            assert (func / (prefix + suffix)).is_file(), prefix + suffix
        columns = table.read_text().splitlines()[0].split("\t")
        sidecar = json.loads((func / f"{prefix}_desc-rtnf_timeseries.json").read_text())
        assert set(columns) == set(sidecar), set(columns) ^ set(sidecar)
        assert all(sidecar[c].get("Description") for c in columns)
        events = read_tsv(func / f"{prefix}_events.tsv")
        assert list(events[0]) == ["onset", "duration", "trial_type"]
        assert sum(float(e["duration"]) for e in events) == 40 * 2.0
        assert nib.load(func / f"{prefix}_desc-rtnf_bold.nii").shape[3] == 40
