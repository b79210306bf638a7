"""One NaN voxel never costs the run its feedback (issue 15, point 7)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from rtnf.apps.demo import read_tsv
from tests.helpers import make_config, synthetic_run_4d


@pytest.mark.parametrize("motion", ["false", "true"])
def test_a_nan_voxel_in_the_roi_is_replaced_counted_and_never_shown(tmp_path, motion):
    data, affine = synthetic_run_4d(tmp_path / "clean.nii", 42, seed=6)
    # One NaN and one infinite voxel at the ACC sphere's centre (0, 30, 15) mm in volume 20.
    ijk = np.round(np.linalg.solve(affine, [0.0, 30.0, 15.0, 1.0])[:3]).astype(int)
    data[tuple(ijk) + (20,)] = np.nan
    data[tuple(ijk + [1, 0, 0]) + (21,)] = np.inf
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "run.nii")
    cfg = make_config(tmp_path, {"motion.enabled": motion == "true", "feedback.despike": True,
                                 "feedback.smoothing_alpha": 0.5})
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(tmp_path / "run.nii")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    func = next((tmp_path / "out").rglob("func"))
    table = next(func.glob("*_desc-rtnf_timeseries.tsv"))
    rows = read_tsv(table)
    assert len(rows) == 40 and all(r["missing"] == "0" for r in rows)
    assert "nan" not in table.read_text().lower().replace("n/a", "")
    # The feedback goes on after the bad volumes (index = volume - 2 dummies), with values that move.
    after = [float(r["feedback_value"]) for r in rows[20:] if r["feedback_value"] != "n/a"]
    assert len(after) >= 15 and np.ptp(after) > 0.05
    assert all(r["acc_raw"] != "n/a" for r in rows)
    log = " | ".join(r["message"] for r in read_tsv(next(func.glob("*_desc-rtnf_log.tsv"))))
    assert "1 non-finite voxels" in log


def _replay(tmp_path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "run.nii")
    cfg = make_config(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(tmp_path / "run.nii")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    return read_tsv(next((tmp_path / "out").rglob("*_desc-rtnf_timeseries.tsv")))


def test_a_volume_without_one_finite_voxel_is_missing_not_made_up(tmp_path):
    """Found by the hostile test: an all-NaN volume was 'processed' from the first volume's values."""
    data, affine = synthetic_run_4d(tmp_path / "clean.nii", 42, seed=7)
    data[..., 10] = np.nan
    rows = _replay(tmp_path, data, affine)
    assert rows[8]["missing"] == "1" and rows[8]["feedback_reason"] == "no finite voxel"
    assert sum(r["missing"] == "1" for r in rows) == 1


def test_a_first_volume_with_nan_voxels_never_becomes_the_reference(tmp_path):
    """Found by the hostile test: half a NaN first kept volume became the realignment reference and the
    fill values: every later volume 'moved' by 16 mm and the bar sat at the top for the whole run."""
    data, affine = synthetic_run_4d(tmp_path / "clean.nii", 42, seed=8)
    data[:32, :, :, 2] = np.nan  # the first kept volume (2 dummies)
    rows = _replay(tmp_path, data, affine)
    assert rows[0]["missing"] == "1" and "non-finite" in rows[0]["feedback_reason"]
    assert all(r["missing"] == "0" for r in rows[1:])
    trans = [abs(float(r["trans_x"])) for r in rows[1:]]
    assert max(trans) < 1.0, max(trans)
