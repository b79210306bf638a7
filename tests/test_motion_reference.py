"""motion.reference: accepted in any voxel order of the functional grid, refused at start on another grid.

A template stored in another voxel order (LAS, flipped or permuted axes, as
SPM or OpenNFT write them) is reoriented to the functional grid; one on a
truly different grid stops `rtnf check` (when scanner.reference_volume gives
the grid) and `rtnf run` / `rtnf replay` at the first volume with one
message and exit code 2, never a traceback or a failure repeated per volume.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.config import ConfigError, load_config
from rtnf.apps.demo import read_tsv
from rtnf.run.record import bids_prefix
from rtnf.analysis.reference import check_motion_reference, load_motion_reference
from rtnf.scanner.volume import Grid
from tests.helpers import make_config, pattern, replay_func_dir, synthetic_run_4d

N = 14  # 2 dummies + 12 kept volumes
CONFIG = {"session.subject": "ref", "session.task": "nf", "scanner.n_volumes": N,
          "protocol.pattern": pattern(rest=3, regulate=3), "output.dir": "outputs"}

# Voxel orders of the same world grid (nibabel orientation arrays: axis, flip).
OTHER_ORDERS = {
    "LAS (x flipped)": [[0, -1], [1, 1], [2, 1]],
    "y and z flipped": [[0, 1], [1, -1], [2, -1]],
    "x and y swapped, z flipped": [[1, 1], [0, 1], [2, -1]],
    "axes permuted and flipped": [[2, -1], [0, 1], [1, -1]],
}


@pytest.fixture(scope="module")
def run4d(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A synthetic run as one 4D NIfTI (dummies included): (path, data, affine)."""
    path = tmp_path_factory.mktemp("run") / "run_bold.nii.gz"
    data, affine = synthetic_run_4d(path, N)
    return path, data, affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


def _reordered(path: Path, data: np.ndarray, affine: np.ndarray, ornt: list[list[int]]) -> Path:
    """The same image stored in another voxel order (same world grid)."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine).as_reoriented(np.array(ornt))
    nib.save(img, path)
    return path


def _other_grids(data: np.ndarray, affine: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """References on truly different grids: (data, affine, words the message must hold)."""
    scaled = affine.copy()
    scaled[:3, :3] *= 2.0 / 3.0
    shifted = affine.copy()
    shifted[:3, 3] += [6.0, 0.0, 0.0]
    angle = np.deg2rad(10.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotated = affine.copy()
    rotated[:3, :3] = rot @ affine[:3, :3]
    return {
        "other shape": (data[:-2], affine, "shape (62, 64, 36)"),
        "other voxel size": (data, scaled, "voxel size 2 x 2 x 2 mm, expected 3 x 3 x 3 mm"),
        "shifted field of view": (data, shifted, "field of view shifted by (6, 0, 0) mm"),
        "rotated axes": (data, rotated, "axes rotated by 10 degrees"),
    }


# ---------------------------------------------------------------- in-process


@pytest.mark.parametrize("order", OTHER_ORDERS)
def test_a_reference_in_another_voxel_order_is_reoriented_to_the_functional_grid(tmp_path, run4d, order):
    _, data, affine = run4d
    reference = data[..., 2]
    path = _reordered(tmp_path / "ref.nii.gz", reference, affine, OTHER_ORDERS[order])
    assert not np.allclose(nib.load(path).affine, affine)  # really stored in another order
    grid = Grid(reference.shape, affine)
    check_motion_reference(path, grid)  # the header alone passes
    out = load_motion_reference(path, grid)
    assert out.shape == reference.shape and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference)


def test_an_oblique_grid_and_spm_nans_are_handled(tmp_path, run4d):
    """An oblique acquisition (45 degrees about x: no axis is nearest RAS) stored flipped, NaN outside the brain."""
    _, data, affine = run4d
    angle = np.deg2rad(45.0)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    oblique = affine.copy()
    oblique[:3, :] = rot @ affine[:3, :]
    reference = data[..., 2].copy()
    reference[reference < 0.05 * reference.max()] = np.nan
    path = _reordered(tmp_path / "ref.nii", reference, oblique, OTHER_ORDERS["axes permuted and flipped"])
    out = load_motion_reference(path, Grid(reference.shape, oblique))
    np.testing.assert_array_equal(out, np.nan_to_num(reference, nan=0.0))


@pytest.mark.parametrize("case", ["other shape", "other voxel size", "shifted field of view", "rotated axes"])
def test_a_reference_on_another_grid_is_refused_with_what_differs(tmp_path, run4d, case):
    _, data, affine = run4d
    ref_data, ref_affine, words = _other_grids(data[..., 2], affine)[case]
    # stored in another voxel order too: the message speaks of the functional order
    path = _reordered(tmp_path / "ref.nii.gz", ref_data, ref_affine, OTHER_ORDERS["LAS (x flipped)"])
    grid = Grid(data.shape[:3], affine)
    for call in (check_motion_reference, load_motion_reference):
        with pytest.raises(ConfigError) as err:
            call(path, grid)
        msg = str(err.value)
        assert msg.startswith("invalid value for 'motion.reference': ")
        assert str(path) in msg and words in msg and "Allowed:" in msg
        assert "\n" not in msg


def test_a_reference_that_is_not_one_3d_nifti_is_refused(tmp_path, run4d):
    _, data, affine = run4d
    grid = Grid(data.shape[:3], affine)
    garbage = tmp_path / "ref.nii"
    garbage.write_bytes(b"not a nifti" * 100)
    four_d = _save(tmp_path / "ref4d.nii.gz", data[..., :3], affine)
    for path, words in ((garbage, "not a readable NIfTI"), (four_d, "3 volumes")):
        for g in (grid, None):
            with pytest.raises(ConfigError, match=f"'motion.reference'.*{words}"):
                check_motion_reference(path, g)


def test_load_config_checks_the_reference_against_scanner_reference_volume(tmp_path, run4d):
    _, data, affine = run4d
    _save(tmp_path / "func_ref.nii.gz", data[..., 2], affine)
    _reordered(tmp_path / "las.nii.gz", data[..., 2], affine, OTHER_ORDERS["LAS (x flipped)"])
    shifted = affine.copy()
    shifted[:3, 3] += [6.0, 0.0, 0.0]
    _save(tmp_path / "shifted.nii.gz", data[..., 2], shifted)
    both = {**CONFIG, "scanner.reference_volume": "func_ref.nii.gz"}
    load_config(make_config(tmp_path, {**both, "motion.reference": "las.nii.gz"}))
    with pytest.raises(ConfigError, match=r"'motion.reference'.*shifted.nii.gz.*scanner.reference_volume.*shifted by"):
        load_config(make_config(tmp_path, {**both, "motion.reference": "shifted.nii.gz"}))
    # without the functional grid, the header is read but the grid is checked at the first volume
    load_config(make_config(tmp_path, {**CONFIG, "motion.reference": "shifted.nii.gz"}))
    # motion correction off: the reference is not used, so not checked
    load_config(make_config(tmp_path, {**both, "motion.reference": "shifted.nii.gz", "motion.enabled": False}))


# ---------------------------------------------------------------- real processes


def _rtnf(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", *args], capture_output=True, text=True, timeout=timeout)


def _table(cfg) -> list[dict[str, str]]:  # a replay's
    return read_tsv(replay_func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")


def _config(folder: Path, reference: str, reference_volume: str | None = None) -> Path:
    overrides = {**CONFIG, "motion.reference": reference, "scanner.reference_volume": reference_volume}
    folder.mkdir(parents=True, exist_ok=True)
    return make_config(folder, overrides)


def test_check_accepts_a_flipped_reference_and_refuses_another_grid(tmp_path, run4d):
    _, data, affine = run4d
    _save(tmp_path / "func_ref.nii.gz", data[..., 2], affine)
    _reordered(tmp_path / "las.nii.gz", data[..., 2], affine, OTHER_ORDERS["LAS (x flipped)"])
    small = affine.copy()
    small[:3, :3] *= 2.0 / 3.0
    _reordered(tmp_path / "small.nii.gz", data[..., 2], small, OTHER_ORDERS["LAS (x flipped)"])
    ok = _rtnf("check", str(_config(tmp_path / "a", "../las.nii.gz", "../func_ref.nii.gz")))
    assert ok.returncode == 0, ok.stderr
    bad = _rtnf("check", str(_config(tmp_path / "b", "../small.nii.gz", "../func_ref.nii.gz")))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert lines[0].startswith("rtnf check: config error: ")
    assert "'motion.reference'" in lines[0] and "small.nii.gz" in lines[0] and "voxel size 2 x 2 x 2 mm" in lines[0]


def test_replay_with_a_flipped_reference_gives_the_values_of_the_reference_in_scanner_order(tmp_path, run4d):
    source, data, affine = run4d
    _save(tmp_path / "ras.nii.gz", data[..., 2], affine)
    _reordered(tmp_path / "flipped.nii.gz", data[..., 2], affine, OTHER_ORDERS["axes permuted and flipped"])
    tables = []
    for name in ("ras", "flipped"):
        cfg_path = _config(tmp_path / name, f"../{name}.nii.gz")
        proc = _rtnf("replay", str(cfg_path), str(source))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        tables.append(_table(load_config(cfg_path)))
    ras, flipped = tables
    assert len(ras) == N - 2 and all(r["missing"] == "0" for r in ras)
    timing = {"t_acquired", "t_detected", "t_read", "t_preprocessed", "t_modelled", "t_published", "late"}
    for a, b in zip(ras, flipped):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


@pytest.mark.parametrize("case", ["other voxel size", "shifted field of view"])
def test_replay_with_a_reference_on_another_grid_stops_at_the_first_volume(tmp_path, run4d, case):
    source, data, affine = run4d
    ref_data, ref_affine, words = _other_grids(data[..., 2], affine)[case]
    _reordered(tmp_path / "other.nii.gz", ref_data, ref_affine, OTHER_ORDERS["LAS (x flipped)"])
    cfg_path = _config(tmp_path / "cfg", "../other.nii.gz")
    proc = _rtnf("replay", str(cfg_path), str(source))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "other.nii.gz" in line]
    assert len(errors) == 1, proc.stderr  # one message, not one per volume
    assert errors[0].startswith("rtnf replay: config error: invalid value for 'motion.reference': ")
    assert words in errors[0] and "run_bold.nii.gz" in errors[0]
    assert "could not be processed" not in proc.stderr
    cfg = load_config(cfg_path)
    assert _table(cfg) == []  # nothing processed, nothing recorded as if it had been
    log = (replay_func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_log.tsv").read_text()
    assert "motion.reference" in log and "ERROR" in log
