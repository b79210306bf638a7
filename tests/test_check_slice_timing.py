"""``rtnf check`` says whether slice-timing correction is on and prints the slice times the run will use (from the
config or a volume's header), how many are distinct and the reference time: checked against the simulator's
truth, a real Siemens mosaic's ``MosaicRefAcqTimes`` read with nibabel, and the config's own list."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SHARED_DATA, make_config, requires_shared_data

TIMES = re.compile(r"^  slice times from (?P<source>.+?): (?P<n>\d+) slices, (?P<distinct>\d+) distinct times? from "
                   r"(?P<low>\S+) to (?P<high>\S+) s, by slice index: (?P<times>.+) \(along axis (?P<axis>\d)\)$",
                   re.MULTILINE)
REFERENCE = re.compile(r"^  slice timing: on, (?P<method>\w+) interpolation .*; every slice moved to (?P<ref>\S+) s",
                       re.MULTILINE)


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", "check", *args], capture_output=True, text=True, timeout=120)


def _printed_times(stdout: str) -> dict:
    match = TIMES.search(stdout)
    assert match, stdout
    out = match.groupdict()
    out["times"] = [float(t) for t in out["times"].split(", ")]
    return out


def _assert_times(printed: dict, truth: list[float]) -> None:
    np.testing.assert_allclose(printed["times"], truth, atol=1e-6)
    assert int(printed["n"]) == len(truth) == len(printed["times"])
    assert int(printed["distinct"]) == len(set(np.round(truth, 6)))
    assert float(printed["low"]) == pytest.approx(min(truth), abs=1e-6)
    assert float(printed["high"]) == pytest.approx(max(truth), abs=1e-6)


@pytest.fixture(scope="module")
def sim_mosaic(tmp_path_factory):
    """A short simulated Siemens mosaic series whose truth holds each slice's acquisition time (24 slices)."""
    from scanner_sim.generate import generate_run

    out = tmp_path_factory.mktemp("check_stc")
    spec = dict(tr_s=1.5, n_volumes=3, seed=3, noise_pct=0.2, drift_pct=0.0, blocks=[], regions=[],
                shape=[32, 32, 24], format="siemens-mosaic",
                physio={"cardiac_pct": 0.0, "resp_pct": 1.0, "resp_hz": 0.3, "sampling": "slice"})
    g = generate_run(spec, out)
    truth = json.loads((g.truth_dir / "nuisance.json").read_text())["slice_times_s"]
    return Path(g.files[0]), truth


def test_check_prints_the_header_slice_times_of_a_simulated_series(sim_mosaic, tmp_path):
    first, truth = sim_mosaic
    assert len(set(truth)) > 1  # the truth is real slice times, not the zeros of a run without them
    cfg = make_config(tmp_path, {"scanner.tr_s": 1.5, "scanner.format": "dicom", "slice_timing.enabled": True,
                                 "slice_timing.method": "cubic"})
    proc = _check(str(cfg), "--volume", str(first))
    assert proc.returncode == 0, proc.stderr
    printed = _printed_times(proc.stdout)
    assert printed["source"] == f"the header of {first.name}" and printed["axis"] == "2"
    _assert_times(printed, truth)
    ref = REFERENCE.search(proc.stdout)
    assert ref and ref["method"] == "cubic" and float(ref["ref"]) == pytest.approx(min(truth), abs=1e-6)
    assert "slice times" not in proc.stderr  # the config asks for nothing the header contradicts


def test_check_warns_when_the_configured_order_contradicts_the_header(sim_mosaic, tmp_path):
    first, truth = sim_mosaic
    n, tr = len(truth), 1.5
    cfg = make_config(tmp_path, {"scanner.tr_s": tr, "scanner.format": "dicom", "slice_timing.enabled": True,
                                 "slice_timing.order": "descending", "slice_timing.reference": 0.75})
    proc = _check(str(cfg), "--volume", str(first))
    assert proc.returncode == 0, proc.stderr
    printed = _printed_times(proc.stdout)
    assert printed["source"] == "slice_timing.order (descending)"
    _assert_times(printed, [(n - 1 - k) * tr / n for k in range(n)])  # index 0 last
    assert float(REFERENCE.search(proc.stdout)["ref"]) == 0.75
    assert "warning: slice_timing.order (descending) differ from the slice times in the header" in proc.stderr


def test_check_prints_the_configured_list_and_off(tmp_path):
    times = [0.0, 1.0, 0.25, 1.25, 0.5, 1.5, 0.75, 1.75]  # multiband 2 would repeat; here interleaved, 8 distinct
    cfg = make_config(tmp_path, {"scanner.tr_s": 2.0, "slice_timing.enabled": True,
                                 "slice_timing.slice_times_s": times})
    proc = _check(str(cfg))
    assert proc.returncode == 0, proc.stderr
    printed = _printed_times(proc.stdout.replace(" (their count is checked against the first volume's slices)",
                                                 " (along axis 2)"))
    assert printed["source"] == "slice_timing.slice_times_s"
    _assert_times(printed, times)
    assert float(REFERENCE.search(proc.stdout)["ref"]) == 0.0

    multiband = [0.0, 0.5, 1.0, 1.5] * 2
    cfg = make_config(tmp_path, {"scanner.tr_s": 2.0, "slice_timing.enabled": True,
                                 "slice_timing.slice_times_s": multiband}, name="mb.toml")
    printed = _printed_times(_check(str(cfg)).stdout.replace(
        " (their count is checked against the first volume's slices)", " (along axis 2)"))
    assert (printed["n"], printed["distinct"]) == ("8", "4")

    off = _check(str(make_config(tmp_path, {"scanner.tr_s": 2.0}, name="off.toml")))
    assert off.returncode == 0 and "  slice timing: off (slice_timing.enabled = false)" in off.stdout.splitlines()


def test_check_stops_on_a_series_the_run_would_stop_on(sim_mosaic, tmp_path):
    first, truth = sim_mosaic
    cfg = make_config(tmp_path, {"scanner.tr_s": 1.5, "scanner.format": "dicom", "slice_timing.enabled": True,
                                 "slice_timing.slice_times_s": [0.0, 0.5, 1.0]})
    proc = _check(str(cfg), "--volume", str(first))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"'slice_timing.slice_times_s': 3 slice times, but the first volume {first.name} has {len(truth)} slices" \
        in proc.stderr
    unreadable = _check(str(cfg), "--volume", str(tmp_path / "missing.dcm"))
    assert unreadable.returncode == 2 and "missing.dcm" in unreadable.stderr and "Traceback" not in unreadable.stderr


MOSAIC = SHARED_DATA / "pydecnef-sub1" / "func" / "run_1" / "001_000005_000001.dcm"


@requires_shared_data("pydecnef-sub1/func/run_1")
def test_check_prints_the_mosaic_ref_acq_times_of_a_real_siemens_series(tmp_path):
    import pydicom

    with warnings.catch_warnings():  # nibabel calls its DICOM readers experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader

    ds = pydicom.dcmread(MOSAIC)
    ms = [float(v) for v in csareader.get_csa_header(ds, "image")["tags"]["MosaicRefAcqTimes"]["items"]]
    truth = [t / 1000.0 for t in ms[:34]]  # 34 tiles; Siemens may pad the list
    cfg = make_config(tmp_path, {"scanner.tr_s": 2.0, "scanner.format": "dicom", "slice_timing.enabled": True})
    proc = _check(str(cfg), "--volume", str(MOSAIC))
    assert proc.returncode == 0, proc.stderr
    printed = _printed_times(proc.stdout)
    _assert_times(printed, truth)
    assert printed["distinct"] == "34" and float(REFERENCE.search(proc.stdout)["ref"]) == 0.0

    off = make_config(tmp_path, {"scanner.tr_s": 2.0, "scanner.format": "dicom"}, name="off.toml")
    proc = _check(str(off), "--volume", str(MOSAIC))
    assert "  slice timing: off (slice_timing.enabled = false)" in proc.stdout.splitlines()
    header = re.search(r"^  slice times in the header of \S+: (.+) \(along axis 2\)$", proc.stdout, re.MULTILINE)
    assert header and [float(t) for t in header[1].split("by slice index: ")[1].split(", ")] == pytest.approx(
        truth, abs=1e-6)


GE_SLICES = SHARED_DATA / "dicom-zoo" / "ge_discovery_mr750_epi_slices"


@requires_shared_data("dicom-zoo/ge_discovery_mr750_epi_slices")
def test_check_refuses_some_of_a_volumes_slice_files(tmp_path):
    """Regression (review): one GE slice file of a 15-slice volume was read as a 1-slice volume, so check stopped a
    correct 15-time config with a false error (and printed '1 slices' for an order). Now some of a volume's slice
    files are refused with one line (ImagesInAcquisition says 15); all 15 are read as the run reads them."""
    files = sorted(GE_SLICES.glob("*.dcm"))[:15]
    times = [round(k * 2.0 / 15, 6) for k in range(15)]
    cfg = make_config(tmp_path, {"scanner.tr_s": 2.0, "scanner.format": "dicom", "slice_timing.enabled": True,
                                 "slice_timing.slice_times_s": times})
    one = _check(str(cfg), "--volume", str(files[0]))
    assert one.returncode == 2 and "Traceback" not in one.stderr, one.stderr
    assert "1 of the 15 slice files of a volume" in one.stderr and "give all the slice files of one volume" in one.stderr
    some = _check(str(cfg), "--volume", *map(str, files[:7]))
    assert some.returncode == 2 and "7 of the 15 slice files" in some.stderr
    whole = _check(str(cfg), "--volume", *map(str, files))
    assert whole.returncode == 0, whole.stderr
    _assert_times(_printed_times(whole.stdout), times)
