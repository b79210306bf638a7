"""`rtnf fidelity` and `rtnf import-opennft` on tables and settings they cannot use: one line, exit 2
(each case found by a hostile test of this change)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import make_config, synthetic_run_4d


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity_cli")
    synthetic_run_4d(root / "run.nii", 42, seed=9)
    cfg = make_config(root)
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(root / "run.nii")],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, cfg, next((root / "out").rglob("*_desc-rtnf_timeseries.tsv"))


def _fidelity(*args):
    return subprocess.run([sys.executable, "-m", "rtnf", "fidelity", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_a_recorded_table_gives_valid_json(recorded):
    root, cfg, table = recorded
    proc = _fidelity(cfg, table, "--from-volume", "1000")  # nothing left to evaluate: nulls, not NaN
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_volumes"] == 0 and out["r_raw"] is None


@pytest.mark.parametrize("case", ["not_a_number", "not_rtnf", "binary", "negative_start", "other_roi"])
def test_unusable_input_is_one_line_and_exit_2(recorded, tmp_path, case):
    root, cfg, table = recorded
    args = [cfg, table]
    if case == "not_a_number":
        lines = table.read_text().splitlines()
        cells = lines[5].split("\t")
        cells[lines[0].split("\t").index("acc_raw")] = "abc"
        lines[5] = "\t".join(cells)
        (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n")
        args = [cfg, tmp_path / "t.tsv"]
    elif case == "not_rtnf":
        (tmp_path / "t.tsv").write_text("a\tb\n1\t2\n")
        args = [cfg, tmp_path / "t.tsv"]
    elif case == "binary":
        (tmp_path / "t.tsv").write_bytes(b"\xff\xfe\x00bin")
        args = [cfg, tmp_path / "t.tsv"]
    elif case == "negative_start":
        args = [cfg, table, "--from-volume", "-1"]
    else:
        other = make_config(tmp_path, {"rois": {"ins": {"center_mm": [0.0, 30.0, 15.0], "radius_mm": 8.0}},
                                       "feedback.roi": "ins", "output.dir": tmp_path / "o",
                                       "scanner.export_dir": root / "export"}, name="other.toml")
        args = [other, table]
    proc = _fidelity(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_opennft_settings_with_a_non_finite_count_are_refused(tmp_path, value):
    ini = tmp_path / "s.ini"
    ini.write_text(f"[General]\nNrOfVolumes={value}\nTR=2000\n")
    protocol = tmp_path / "p.json"
    protocol.write_text('{"ConditionIndex": [{"ConditionName": "NFBREG", "OnOffsets": [[11, 20]]}]}')
    proc = subprocess.run([sys.executable, "-m", "rtnf", "import-opennft", str(ini), str(protocol),
                           "-o", str(tmp_path / "x.toml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not a finite number" in proc.stderr
