"""A replay source that cannot be replayed is one message and exit 2, before any run starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo_acc.toml"


@pytest.mark.parametrize("kind", ["3d", "not_nifti", "missing"])
def test_replay_of_a_source_that_is_no_4d_nifti_or_folder_exits_2_with_one_line(tmp_path, kind):
    source = tmp_path / "source.nii.gz"
    if kind == "3d":  # before: a traceback in the feeder's thread, then "0 volumes" and exit 1
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8), dtype=np.float32), np.eye(4)), source)
    elif kind == "not_nifti":
        source.write_bytes(b"not a nifti file")
    proc = subprocess.run(
        [sys.executable, "-m", "rtnf", "replay", str(CONFIG), str(source), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("rtnf replay: ") and "source" in proc.stderr or "NIfTI" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written
