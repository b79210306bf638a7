"""The NIfTI reader against what the simulator wrote."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from rtnf.scanner.nifti import VolumeReadError, is_complete, read_nifti
from scanner_sim.writer import to_nifti_bytes


def _affine():
    a = np.diag([-3.0, 3.0, 3.5, 1.0])
    a[:3, 3] = [90, -120, -40]
    return a


def test_reads_values_affine_and_acquisition_time(tmp_path):
    data = np.arange(8 * 9 * 7, dtype=np.float32).reshape(8, 9, 7)
    path = tmp_path / "vol_00001.nii"
    path.write_bytes(to_nifti_bytes(data, _affine(), tr_s=2.0, acq_time=1764126000.125))
    vol = read_nifti(path)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, _affine())
    assert vol.t_acquired == pytest.approx(1764126000.125)
    assert vol.data.dtype == np.float32 and vol.grid.shape == (8, 9, 7)


def test_gzip_files_and_their_truncation(tmp_path):
    raw = to_nifti_bytes(np.ones((4, 4, 4), np.float32), np.eye(4), tr_s=1.0, acq_time=0.0)
    path = tmp_path / "vol_00001.nii.gz"
    path.write_bytes(gzip.compress(raw))
    assert is_complete(path) and read_nifti(path).data.shape == (4, 4, 4)
    path.write_bytes(gzip.compress(raw)[:-30])
    assert not is_complete(path)


def test_4d_file_with_several_volumes_is_refused(tmp_path):
    import nibabel as nib

    path = tmp_path / "run.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), path)
    with pytest.raises(VolumeReadError, match="expected one 3D volume"):
        read_nifti(path)
