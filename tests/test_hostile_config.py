"""Hostile configs (issue 15): one message on stderr, exit 2, never a traceback or a raw OS error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_config


def _not_nifti(tmp_path: Path) -> str:
    (tmp_path / "notes.nii").write_text("this is not a NIfTI image\n" * 20)
    return "notes.nii"


def _bad_n_volumes_1e9(tmp_path):
    return {"scanner.n_volumes": 1000000000}


def _bad_n_volumes_max(tmp_path):
    return {"scanner.n_volumes": 2**63 - 1}


def _bad_reference_volume(tmp_path):
    return {"scanner.reference_volume": _not_nifti(tmp_path)}


def _bad_motion_reference(tmp_path):
    return {"motion.reference": _not_nifti(tmp_path)}


def _bad_roi_mask(tmp_path):
    return {"rois.acc": {"mask": _not_nifti(tmp_path)}}


def _bad_sham_from(tmp_path):
    (tmp_path / "sham.tsv").write_text("a\tb\n1\t2\n")
    return {"feedback.sham_from": "sham.tsv"}


def _bad_sham_binary(tmp_path):
    (tmp_path / "sham.tsv").write_bytes(bytes(range(256)) * 8)
    return {"feedback.sham_from": "sham.tsv"}


def _output_dir_is_file(tmp_path):
    (tmp_path / "out").write_text("a file")
    return {}


def _output_dir_in_proc(tmp_path):
    return {"output.dir": "/proc/rtnf-out"}


def _export_dir_is_file(tmp_path):
    (tmp_path / "export").write_text("a file")
    return {}


def _long_subject(tmp_path):
    return {"session.subject": "a" * 300}


def _infinite_radius(tmp_path):
    return {"rois.acc.radius_mm": float("inf")}


def _nan_center(tmp_path):
    return {"rois.acc.center_mm": [float("nan"), 30.0, 15.0]}


def _huge_repeat(tmp_path):
    return {"protocol.pattern.repeat": 1000000000}


def _huge_threshold(tmp_path):
    return {"quality.fd_threshold_mm": 1e300}


BAD = {
    "n_volumes 1e9": (_bad_n_volumes_1e9, "scanner.n_volumes"),
    "n_volumes 2^63-1": (_bad_n_volumes_max, "scanner.n_volumes"),
    "reference_volume not NIfTI": (_bad_reference_volume, "scanner.reference_volume"),
    "motion.reference not NIfTI": (_bad_motion_reference, "motion.reference"),
    "ROI mask not NIfTI": (_bad_roi_mask, "rois.acc.mask"),
    "sham_from not a table": (_bad_sham_from, "feedback.sham_from"),
    "sham_from binary": (_bad_sham_binary, "feedback.sham_from"),
    "output.dir a file": (_output_dir_is_file, "output.dir"),
    "output.dir under /proc": (_output_dir_in_proc, "output.dir"),
    "export_dir a file": (_export_dir_is_file, "scanner.export_dir"),
    "subject of 300 characters": (_long_subject, "session.subject"),
    "radius inf": (_infinite_radius, "radius_mm"),
    "center nan": (_nan_center, "center_mm"),
    "pattern repeat 1e9": (_huge_repeat, "protocol.pattern.repeat"),
    "fd threshold 1e300": (_huge_threshold, "quality.fd_threshold_mm"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_check_refuses_a_hostile_config_with_one_message(tmp_path, name):
    make, key = BAD[name]
    path = make_config(tmp_path, make(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "rtnf", "check", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0], lines[0]


def test_run_refuses_a_missing_export_dir_unless_asked_to_create_it(tmp_path):
    path = make_config(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rtnf", "run", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "scanner.export_dir" in proc.stderr and "--create-export-dir" in proc.stderr
    assert not (tmp_path / "export").exists()  # an unmounted share never silently becomes a local folder


def test_the_message_for_existing_outputs_names_resume(tmp_path):
    from rtnf.config import load_config
    from rtnf.run.record import OutputExistsError, RunRecorder, func_dir, bids_prefix

    cfg = load_config(make_config(tmp_path))
    folder = func_dir(cfg)
    folder.mkdir(parents=True)
    (folder / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv").write_text("index\n")
    with pytest.raises(OutputExistsError) as info:
        RunRecorder(cfg, "", cfg.make_protocol(), ["acc"], "r")
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)


def test_check_into_a_closed_pipe_exits_quietly(tmp_path):
    path = make_config(tmp_path)
    proc = subprocess.run(f"'{sys.executable}' -m rtnf check '{path}' | head -1", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    # also with the reader gone before rtnf writes anything
    proc = subprocess.run([sys.executable, "-c", (
        "import os, subprocess, sys\n"
        "r, w = os.pipe(); os.close(r)\n"
        f"p = subprocess.run([sys.executable, '-m', 'rtnf', 'check', {str(path)!r}], stdout=w, stderr=subprocess.PIPE)\n"
        "sys.stderr.write(p.stderr.decode()); sys.exit(p.returncode)\n"
    )], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
