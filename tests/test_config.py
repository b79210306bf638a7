"""Config loading: every example loads, every kind of mistake gets a precise message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.config import ConfigError, load_config
from tests.helpers import CONFIG_DIR, make_config

EXAMPLES = sorted(CONFIG_DIR.glob("*.toml"))


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"demo_acc.toml", "insula.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    protocol = cfg.make_protocol()
    assert protocol.n_volumes == cfg.scanner.n_volumes - cfg.scanner.dummy_volumes
    assert cfg.feedback.roi in cfg.rois
    assert len(protocol.task_conditions) >= 1


def test_demo_config_targets_the_anterior_cingulate():
    cfg = load_config(CONFIG_DIR / "demo_acc.toml")
    center = cfg.rois[cfg.feedback.roi].center_mm
    assert abs(center[0]) <= 5 and 20 <= center[1] <= 40 and 5 <= center[2] <= 30


def test_paths_resolve_relative_to_the_file(tmp_path):
    cfg = load_config(make_config(tmp_path))
    assert cfg.scanner.export_dir == (tmp_path / "export").resolve()
    assert cfg.output.dir == (tmp_path / "out").resolve()


def _error(tmp_path: Path, overrides: dict | None = None, **options) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(make_config(tmp_path, overrides, **options))
    return str(info.value)


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    msg = _error(tmp_path, unknown_keys={"scanner.tr": 2.0})
    assert "unknown key 'scanner.tr'" in msg
    assert "tr_s" in msg and "n_volumes" in msg  # the allowed keys


def test_unknown_key_in_roi_table(tmp_path):
    msg = _error(tmp_path, unknown_keys={"rois.acc.radius": 8})
    assert "unknown key 'rois.acc.radius'" in msg and "radius_mm" in msg


def test_wrong_type_names_key_value_and_type(tmp_path):
    msg = _error(tmp_path, {"scanner.n_volumes": "42"})
    assert "scanner.n_volumes" in msg and "'42'" in msg and "integer" in msg


def test_out_of_range_value(tmp_path):
    msg = _error(tmp_path, {"scanner.tr_s": -1.0})
    assert "scanner.tr_s" in msg and "-1.0" in msg and "greater than 0" in msg


def test_bad_literal_lists_allowed_values(tmp_path):
    msg = _error(tmp_path, {"model.hrf": "gamma"})
    assert "model.hrf" in msg and "'gamma'" in msg and "'spm'" in msg and "'glover'" in msg


def test_missing_required_key(tmp_path):
    msg = _error(tmp_path, {"scanner.n_volumes": None})
    assert "missing key 'scanner.n_volumes'" in msg


def test_missing_mask_file(tmp_path):
    msg = _error(tmp_path, {"rois.ins.mask": "nowhere/ins.nii.gz"})
    assert "rois.ins.mask" in msg and "file not found" in msg and "nowhere/ins.nii.gz" in msg


def test_overlapping_blocks(tmp_path):
    msg = _error(tmp_path, {"protocol.pattern": None, "protocol.blocks": [
        {"condition": "regulate", "onset": 5, "duration": 10}, {"condition": "regulate", "onset": 12, "duration": 5}]})
    assert "protocol.blocks[1]" in msg and "overlaps" in msg and "protocol.blocks[0]" in msg


def test_protocol_longer_than_run(tmp_path):
    msg = _error(tmp_path, {"protocol.pattern.repeat": 3})
    # 40 kept volumes at TR 2 s = 80 s; the third repeat's rest block starts at 80 s.
    assert "ends after the run" in msg and "80 s" in msg and "protocol.pattern" in msg


def test_feedback_roi_must_exist(tmp_path):
    msg = _error(tmp_path, {"feedback.roi": "insula"})
    assert "feedback.roi" in msg and "'insula'" in msg and "'acc'" in msg


def test_dummies_fewer_than_volumes(tmp_path):
    msg = _error(tmp_path, {"scanner.dummy_volumes": 42})
    assert "scanner.dummy_volumes" in msg and "42" in msg


def _reference(tmp_path: Path) -> Path:
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-96, -116, -45]
    path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 36), np.int16), affine), path)
    return path


def test_roi_outside_field_of_view(tmp_path):
    _reference(tmp_path)
    msg = _error(tmp_path, {"scanner.reference_volume": "ref.nii.gz", "rois.acc.center_mm": [0.0, 300.0, 15.0]})
    assert "rois.acc.center_mm" in msg and "300.0" in msg and "outside the field of view" in msg
    assert "y -117.5 to 74.5 mm" in msg


def test_roi_inside_field_of_view_loads(tmp_path):
    _reference(tmp_path)
    path = make_config(tmp_path, {"scanner.reference_volume": "ref.nii.gz"})
    assert load_config(path).scanner.reference_volume.name == "ref.nii.gz"


def test_not_toml(tmp_path):
    (tmp_path / "session.toml").write_text("[session\nsubject = 1")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "session.toml")
    msg = str(info.value)
    assert "not valid TOML" in msg


def test_cli_exits_2_with_one_message_and_no_traceback(tmp_path):
    path = make_config(tmp_path, {"scanner.tr_s": 0})
    proc = subprocess.run([sys.executable, "-m", "rtnf", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "scanner.tr_s" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rtnf", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "scanner.tr_s" in proc.stderr


# ---------------------------------------------------------------- implausible values (issue 16)


def test_a_drift_cutoff_that_looks_like_a_frequency_is_refused(tmp_path):
    msg = _error(tmp_path, {"model.drift_cutoff_s": 0.0078})
    assert "drift_cutoff_s is a period in seconds; 0.0078 looks like a frequency in Hz: did you mean 128?" in msg
    msg = _error(tmp_path, {"model.drift_cutoff_s": 3.0})  # TR 2 s
    assert "'model.drift_cutoff_s': 3 s is shorter than two TRs" in msg
    assert load_config(make_config(tmp_path, {"model.drift_cutoff_s": 100.0})).model.drift_cutoff_s == 100.0


def test_rtnf_check_stops_on_the_frequency_with_exit_code_2(tmp_path):
    path = make_config(tmp_path, {"model.drift_cutoff_s": 0.0078})
    proc = subprocess.run([sys.executable, "-m", "rtnf", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "did you mean 128?" in proc.stderr


@pytest.mark.parametrize("scale_range, word", [([-0.05, 0.1], "overflows"), ([-10.0, 30.0], "never fill")],
                         ids=["narrow", "wide"])
def test_rtnf_check_warns_about_a_fixed_range_the_signal_cannot_fill(tmp_path, scale_range, word):
    from rtnf.config import plausibility_warnings

    path = make_config(tmp_path, {"feedback.scaling": "fixed", "feedback.scale_range": scale_range})
    (warning,) = plausibility_warnings(load_config(path))
    assert "feedback.scale_range" in warning and word in warning and "between 0.2 and 20 %" in warning
    proc = subprocess.run([sys.executable, "-m", "rtnf", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "rtnf check: warning: feedback.scale_range" in proc.stderr and word in proc.stderr
    # adaptive scaling stretches the same range to the signal: nothing to warn about
    adaptive = load_config(make_config(tmp_path, {"feedback.scaling": "adaptive", "feedback.scale_range": scale_range}))
    assert plausibility_warnings(adaptive) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_raise_no_plausibility_warning(path):
    from rtnf.config import plausibility_warnings

    assert plausibility_warnings(load_config(path)) == []


def test_rtnf_check_stops_on_a_sphere_outside_the_reference_field_of_view(tmp_path):
    _reference(tmp_path)
    path = make_config(tmp_path, {"scanner.reference_volume": "ref.nii.gz", "rois.acc.center_mm": [0.0, 300.0, 15.0]})
    proc = subprocess.run([sys.executable, "-m", "rtnf", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "rois.acc.center_mm" in proc.stderr and "outside the field of view" in proc.stderr
