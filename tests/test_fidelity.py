"""Feedback fidelity on real task runs: the shown value follows the region, not the model.

Each real run (studyforrest's visual localizer; pydecnef-sub1 runs 1 and 2,
trials from the stimulus logs) is replayed once to get its volumes; an ROI
is defined as a functional localizer on the run's first half (the 50 voxels
of highest t); the run is then replayed with that ROI, with the default
config and with motion regressors and despiking, and the second half is
judged against the task (see :mod:`rtnf.apps.fidelity`). Skipped without
../shared/data.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.config import load_config
from rtnf.apps.demo import read_tsv
from rtnf.apps.fidelity import assess
from tests.helpers import SHARED_DATA, make_config, requires_shared_data

TR_S = 2.0


def _forrest_blocks() -> list[tuple[float, float]]:
    """16 s image blocks starting every 24 s from 12 s (events.tsv lists the single images)."""
    rows = list(csv.DictReader(open(SHARED_DATA / "studyforrest-localizer" / "events.tsv"), delimiter="\t"))
    onsets = sorted({float(r["onset"]) for r in rows})
    starts = [onsets[0]] + [b for a, b in zip(onsets, onsets[1:]) if b - a > 4.0]
    return [(round(s), 16.0) for s in starts]


def _decnef_blocks(run: int) -> list[tuple[float, float]]:
    """Picture periods of pydecnef's trials, in s from the run's first volume.

    The log's ``trial_onset`` and ``start_wait_4_hrf`` are already relative to
    the run's start, in ms (the OpenSesame timestamps of the same events equal
    them plus ``run_start_time``); pictures last from the first to the second,
    then fixation until ``trial_offset``. A GLM with these onsets gives t 24
    and 20 in occipital cortex; subtracting ``run_start_time`` once more gives
    t 10 and 6.5 (the last row repeats the one before it).
    """
    rows = list(csv.DictReader(open(SHARED_DATA / "pydecnef-sub1" / "logs" / f"run_{run}.csv")))
    trials = {(float(r["trial_onset"]) / 1000, float(r["start_wait_4_hrf"]) / 1000) for r in rows}
    return sorted((on, off - on) for on, off in trials)


RUNS = {
    "forrest": ("studyforrest-localizer/dicom", 78, _forrest_blocks),
    "decnef1": ("pydecnef-sub1/func/run_1", 209, lambda: _decnef_blocks(1)),
    "decnef2": ("pydecnef-sub1/func/run_2", 209, lambda: _decnef_blocks(2)),
}

CONFIG = {"scanner.export_dir": "unused", "scanner.tr_s": TR_S, "scanner.dummy_volumes": 0, "protocol.units": "seconds",
          "protocol.pattern": None, "feedback.roi": "loc"}


def _config(path: Path, name: str, task: str, n: int, blocks, roi: dict, out: Path, *, motion=True, save=False,
            overrides: dict | None = None) -> Path:
    blocks = [{"condition": "image", "onset": round(o, 3), "duration": round(d, 3)} for o, d in blocks if o + d <= n * TR_S]
    return make_config(path.parent, {**CONFIG, "session.subject": name, "session.task": task, "scanner.n_volumes": n,
                                     "protocol.blocks": blocks, "rois": {"loc": roi}, "motion.enabled": motion,
                                     "output.dir": out, "output.save_volumes": save, **(overrides or {})},
                       name=path.name)


def _replay(cfg: Path, source: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def _localizer_roi(bold: Path, blocks, out: Path, top: int = 50) -> Path:
    """The ``top`` voxels of highest t for the task in the first half of the run (batch OLS, SPM HRF, 128 s drifts)."""
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix
    from nilearn.masking import compute_epi_mask

    img = nib.load(bold)
    data = np.asarray(img.dataobj, dtype=np.float64)
    n = data.shape[-1]
    mask = np.asarray(compute_epi_mask(nib.Nifti1Image(data.mean(-1), img.affine)).dataobj) > 0
    events = pd.DataFrame({"onset": [b[0] for b in blocks], "duration": [b[1] for b in blocks],
                           "trial_type": ["image"] * len(blocks)})
    X = make_first_level_design_matrix(np.arange(n) * TR_S, events, hrf_model="spm", drift_model="cosine",
                                       high_pass=1 / 128).to_numpy()[: n // 2]
    Y = data[mask][:, : n // 2].T
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    dof = X.shape[0] - np.linalg.matrix_rank(X)
    sigma2 = np.sum((Y - X @ beta) ** 2, axis=0) / dof
    t = beta[0] / np.sqrt(sigma2 * np.linalg.pinv(X.T @ X)[0, 0])
    chosen = np.zeros(mask.sum(), dtype=np.uint8)
    chosen[np.argsort(t)[-top:]] = 1
    roi = np.zeros(mask.shape, dtype=np.uint8)
    roi[mask] = chosen
    nib.save(nib.Nifti1Image(roi, img.affine), out)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Per real run: its volumes as rtnf received them (4D NIfTI), its blocks and its localizer ROI."""
    root = tmp_path_factory.mktemp("fidelity")
    runs = {}
    for name, (sub, n, blocks_of) in RUNS.items():
        if not (SHARED_DATA / sub).exists():
            continue
        blocks = blocks_of()
        out = root / f"raw_{name}"
        cfg = _config(root / f"{name}_raw.toml", name, "raw", n, blocks, {"center_mm": [0.0, 0.0, 0.0], "radius_mm": 30.0},
                      out, motion=False, save=True)
        _replay(cfg, SHARED_DATA / sub)
        bold = next(out.rglob("*_desc-rtnf_bold.nii"))
        roi = _localizer_roi(bold, blocks, root / f"{name}_localizer.nii.gz")
        runs[name] = (n, blocks, bold, roi)
    return root, runs


VARIANTS = {
    "default": {},
    "nuisance": {"feedback.despike": True, "model.motion_regressors": 6, "model.drift_cutoff_s": 128.0},
}


@requires_shared_data("pydecnef-sub1")
@requires_shared_data("studyforrest-localizer")
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(RUNS))
def test_feedback_follows_the_region_on_real_runs(prepared, name, variant):
    root, runs = prepared
    n, blocks, bold, roi = runs[name]
    out = root / f"out_{name}_{variant}"
    cfg = _config(root / f"{name}_{variant}.toml", name, variant, n, blocks, {"mask": roi}, out,
                  overrides=VARIANTS[variant])
    _replay(cfg, bold)
    rows = read_tsv(next(out.rglob("*_desc-rtnf_timeseries.tsv")))
    f = assess(load_config(cfg), rows, first_index=n // 2)
    print(name, variant, {k: round(v, 3) for k, v in f.as_dict().items()})
    assert f.n_volumes >= 0.9 * (n - n // 2)
    # Every stage tracks the task at least as well as the raw ROI mean does ...
    floor = f.r_raw - 0.03
    if f.r_raw >= 0.83:
        floor = max(floor, 0.8)
    for stage in ("r_clean", "r_psc", "r_displayed"):
        assert getattr(f, stage) >= floor, f"{stage} {getattr(f, stage):.3f} < {floor:.3f} (raw {f.r_raw:.3f})"
    # ... the online cleaned signal agrees with the offline whole-run analysis (with motion regressors
    # pydecnef run 2 reaches 0.939: the motion terms' effect changes over the run, see the issue 13 note) ...
    assert f.r_online_offline >= (0.95 if variant == "default" else 0.93)
    # ... a model change never makes the cleaned signal jump ...
    assert f.max_entry_step_sd <= 0.1
    # ... and the bar is not pinned at either end.
    assert f.saturated_fraction <= 0.2
    if variant == "default":  # the command prints the same figures
        import json

        table = next(out.rglob("*_desc-rtnf_timeseries.tsv"))
        proc = subprocess.run([sys.executable, "-m", "rtnf", "fidelity", str(cfg), str(table), "--from-volume", str(n // 2)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        printed = json.loads(proc.stdout)
        assert printed["r_psc"] == pytest.approx(f.r_psc, abs=1e-4)
        assert printed["saturated_fraction"] == pytest.approx(f.saturated_fraction, abs=1e-4)
