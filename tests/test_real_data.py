"""Real scanner data through the whole pipeline (skipped without ../shared/data)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np

from rtnf.apps.demo import read_tsv
from tests.helpers import SHARED_DATA, make_config, pattern, requires_shared_data

FORREST = SHARED_DATA / "studyforrest-localizer"

# Visual localizer: 16 s image blocks at 12, 36, ... 132 s (events.tsv), rest in between; 78 volumes, TR 2 s.
FORREST_CONFIG = {"session.subject": "forrest", "session.task": "localizer", "scanner.export_dir": "unused",
                  "scanner.n_volumes": 78, "scanner.dummy_volumes": 0, "protocol.units": "seconds",
                  "protocol.pattern": pattern(image=16, rest=8, repeat=6, onset=12.0),
                  "rois": {"voc": {"center_mm": [24.0, -72.0, -9.0], "radius_mm": 8.0}}, "feedback.roi": "voc",
                  "model.hrf": "spm", "model.drift_cutoff_s": 128.0, "model.whole_brain": True,
                  "model.motion_regressors": 6}


@requires_shared_data("studyforrest-localizer/dicom")
def test_studyforrest_replay_finds_the_visual_activation(tmp_path):
    """Replay of the 2730 Philips slice files (35 per volume): t-map peak near (+24, -72, -9) mm, t well above 10."""
    onsets = sorted({round(float(r["onset"])) for r in read_tsv(FORREST / "events.tsv")})
    assert onsets[0] == 12  # the protocol below starts at the first block
    out = tmp_path / "out"
    cfg = make_config(tmp_path, {**FORREST_CONFIG, "output.dir": out}, name="forrest.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "rtnf", "replay", str(cfg), str(FORREST / "dicom")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    func = out / "replay" / "sub-forrest" / "ses-01" / "func"
    rows = read_tsv(func / "sub-forrest_ses-01_task-localizer_run-1_desc-rtnf_timeseries.tsv")
    assert [int(r["index"]) for r in rows] == list(range(78))
    assert all(r["missing"] == "0" for r in rows)
    img = nib.load(func / "sub-forrest_ses-01_task-localizer_run-1_desc-rtnf_stat-t_statmap.nii.gz")
    t = np.nan_to_num(np.asarray(img.dataobj))
    peak = np.unravel_index(np.argmax(t), t.shape)
    peak_mm = img.affine[:3, :3] @ np.array(peak) + img.affine[:3, 3]
    # The data's README: peaks at t of about 18 (74 dof) near (+24, -72, -9) mm in ventral occipital cortex.
    assert t.max() > 12, f"max t {t.max():.1f}"
    assert peak_mm[1] < -50 and peak_mm[2] < 15, f"peak at {np.round(peak_mm, 1)} mm is not occipital"
    t_near = t[tuple(np.round(np.linalg.solve(img.affine, [24, -72, -9, 1])[:3]).astype(int))]
    assert t_near > 5, f"t at (+24, -72, -9) mm is {t_near:.1f}"
    # the ROI's percent signal change follows the blocks
    psc = np.array([float(r["voc_psc"]) if r["voc_psc"] != "n/a" else np.nan for r in rows])
    cond = np.array([r["condition"] for r in rows])
    lagged = np.roll(cond == "image", 3)  # about 6 s of hemodynamic lag
    assert np.nanmean(psc[lagged]) - np.nanmean(psc[~lagged]) > 0.3

    # the report of the real run: every figure written and not blank
    from PIL import Image

    from rtnf.apps.report import write_report

    html = write_report(func / "sub-forrest_ses-01_task-localizer_run-1_desc-rtnf_timeseries.tsv", tmp_path / "report")
    pngs = sorted(html.parent.glob("*.png"))
    assert {p.name.split("_desc-")[1].split("_")[0] for p in pngs} == {"timecourses", "motion", "latency"}
    for png in pngs:
        assert png.name in html.read_text()
        assert len(Image.open(png).convert("RGB").getcolors(1 << 20)) > 20


PYNEAL = SHARED_DATA / "pyneal-series" / "siemens-prisma-e11-mosaic"
ZOO = SHARED_DATA / "dicom-zoo" / "siemens_mosaic_prisma_VD13_ep2d"

MOSAIC_CONFIG = {"session.subject": "pyneal", "session.task": "rest", "scanner.export_dir": "unused",
                 "scanner.tr_s": 1.0, "scanner.n_volumes": 60, "scanner.dummy_volumes": 0,
                 "protocol.pattern": pattern(task=10, rest=10, onset=10), "feedback.roi": "center"}


@requires_shared_data("pyneal-series/siemens-prisma-e11-mosaic")
def test_mixed_series_folder_takes_the_configured_series(tmp_path):
    """A folder with the Siemens mosaic run (series 13, 64x64x18) and another series (2, 64x64x36)."""
    import shutil

    from rtnf.scanner.dicom import read_volume

    mixed = tmp_path / "export"
    mixed.mkdir()
    for f in sorted(PYNEAL.glob("*.dcm")) + sorted(ZOO.glob("*.dcm")):
        shutil.copy(f, mixed / f.name)
    first = read_volume([PYNEAL / "001_000013_000001.dcm"])
    center = first.affine @ np.array([32, 32, 9, 1.0])
    for key, value in (("series_number", 13), ("expected_matrix", [64, 64, 18])):
        out = tmp_path / key
        roi = {"center_mm": [round(float(x), 2) for x in center[:3]], "radius_mm": 10.0}
        cfg = make_config(tmp_path, {**MOSAIC_CONFIG, f"scanner.{key}": value, "rois": {"center": roi}, "output.dir": out},
                          name=f"{key}.toml")
        proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(mixed)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = read_tsv(out / "replay" / "sub-pyneal" / "ses-01" / "func" / "sub-pyneal_ses-01_task-rest_run-1_desc-rtnf_timeseries.tsv")
        assert [int(r["index"]) for r in rows] == list(range(60))
        assert all(r["missing"] == "0" for r in rows)
        assert all(r["file"].startswith("001_000013_") for r in rows)
        assert "series 2" in proc.stderr  # the other series is reported to the operator
        # real head motion of this run stays small and is estimated on every volume
        fd = np.array([float(r["framewise_displacement"]) for r in rows])
        assert np.all(np.isfinite(fd)) and fd.max() < 2.0
