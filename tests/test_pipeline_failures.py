"""Failures inside one volume's processing: what they cost, and that the recorded row says what the model used.

* A confound source that gives something that is not a row of numbers (text, None among the values, a nested
  or ragged list, a mapping) costs that source's terms for the volume, exactly as a source without a value
  does (one alarm, n/a in the table); the volume and its feedback go on.
* A step that raises once the ROI model has the volume (the feedback computation, shaping, building the
  messages) costs the volume's feedback only: its row keeps its ROI values, its feedback is null with a
  one-line reason, the model keeps it (the next volumes' values are those of a run without the failure) and
  a resume of that run reproduces what was recorded.

Runs are replays of a simulator run (``scanner_sim``) through the real run loop; the failing parts are rtnf's
own, subclassed and handed to the run through ``RunParts`` (or the processor's constructor).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtnf.analysis.confounds import ConfoundInput, ConfoundSource
from rtnf.analysis.feedback import FeedbackComputer
from rtnf.apps.demo import read_tsv
from rtnf.apps.replay import ReplayFeeder
from rtnf.config import load_config
from rtnf.run.pipeline import VolumeProcessor
from rtnf.run.record import bids_prefix, func_dir
from rtnf.run.session import RunParts, run_session
from rtnf.run.shaping_history import load_history
from tests.helpers import make_config, pattern, synthetic_run_4d

N = 22  # 2 dummies + 20 kept volumes
FAILED = 11  # the kept volume whose feedback step raises
ROI_COLUMNS = ("acc_raw", "acc_clean", "acc_psc")


@pytest.fixture(scope="module")
def run4d(tmp_path_factory) -> Path:
    """A simulated run (scanner_sim) as one 4D NIfTI, dummies included."""
    path = tmp_path_factory.mktemp("sim") / "run_bold.nii.gz"
    synthetic_run_4d(path, N, seed=5)
    return path


def _cfg(tmp_path: Path, name: str, overrides: dict[str, Any] | None = None):
    folder = tmp_path / name
    folder.mkdir()
    return load_config(make_config(folder, {
        "session.subject": "fail", "session.task": "nf", "scanner.n_volumes": N, "output.dir": "outputs",
        "protocol.pattern": pattern(rest=5, regulate=5), "model.motion_regressors": 6, **(overrides or {})}),
        {"publish.address": f"inproc://rtnf-pipeline-failures-{name}-{tmp_path.name}"})


def _run(cfg, source: Path, processor, resume: bool = False) -> tuple[Any, list[dict[str, str]], list]:
    """Replay ``source`` with ``processor``: (result, recorded rows, (volume, feedback) bodies sent)."""
    bodies: list[tuple[dict, dict]] = []

    def feeder(export, put) -> ReplayFeeder:
        return ReplayFeeder(source, export, put, 0.0, cfg.scanner.first_volume_number)

    result = run_session(cfg, "", feeder_factory=feeder, resume=resume, parts=RunParts(processor=processor),
                         on_volume=lambda v, f: bodies.append((v, f)))
    rows = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    return result, rows, bodies


def _alarms(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "alarm", None) == name]


# ------------------------------------------------------------------ 1. a confound source's bad values


BAD_VALUES: dict[int, Any] = {
    4: "not a number",
    5: [0.5, None],
    6: [[0.5, -0.5]],  # nested: the right count of numbers, not a row
    7: [[0.5], [1.0, 2.0]],  # ragged
    8: [0.5],  # too few
    9: {"a": 1.0, "b": 2.0},
}


class _Source(ConfoundSource):
    """Two smooth regressors of the volume's onset; at the volumes of ``gaps`` it gives what ``gaps`` holds
    (``None`` for "no value", as a stalled stream gives)."""

    names = ("wave_sin", "wave_cos")

    def __init__(self, gaps: dict[int, Any]) -> None:
        super().__init__("wave")
        self.gaps = gaps

    def row(self, volume: ConfoundInput) -> Any:
        if volume.index in self.gaps:
            self.reason = "stalled"
            return self.gaps[volume.index]
        t = volume.onset_s / 20.0
        return np.array([np.sin(2 * np.pi * t), np.cos(2 * np.pi * t)])


def test_a_confound_source_giving_non_numbers_costs_its_terms_like_a_missing_value(tmp_path, run4d, caplog):
    caplog.set_level(logging.INFO, logger="rtnf")
    bad = _cfg(tmp_path, "bad")
    result, rows, bodies = _run(bad, run4d, lambda c: VolumeProcessor(c, confounds=[_Source(BAD_VALUES)]))
    assert result.ok and (result.n_missing, result.n_errors) == (0, 0), [r["feedback_reason"] for r in rows]
    assert [r["missing"] for r in rows] == ["0"] * (N - 2)
    for volume, _ in bodies:
        gap = volume["index"] in BAD_VALUES
        assert (volume["confounds"] == {"wave_sin": None, "wave_cos": None}) == gap, volume["index"]
        if not gap:
            assert all(np.isfinite(v) for v in volume["confounds"].values())
    alarms = _alarms(caplog, "confound_wave")
    assert [(r.levelno, r.ok) for r in alarms] == [(logging.ERROR, False), (logging.INFO, True)]  # down once, up once

    # Ground truth: the same run with a source that has no value at those volumes (None, the documented way).
    caplog.clear()
    none = _cfg(tmp_path, "none")
    _, reference, _ = _run(none, run4d, lambda c: VolumeProcessor(c, confounds=[_Source(dict.fromkeys(BAD_VALUES))]))
    for column in (*ROI_COLUMNS, "feedback_value"):
        assert [r[column] for r in rows] == [r[column] for r in reference], column
    assert sum(r["feedback_value"] not in ("", "n/a") for r in rows) > N // 2  # the feedback went on

    # ... and the check can fail: with the source's values at those volumes the model differs.
    full = _cfg(tmp_path, "full")
    _, unbroken, _ = _run(full, run4d, lambda c: VolumeProcessor(c, confounds=[_Source({})]))
    assert [r["acc_clean"] for r in unbroken] != [r["acc_clean"] for r in reference]


# ------------------------------------------------------------------ 2. a step after the model update raises


class _FailingFeedback(FeedbackComputer):
    """rtnf's feedback, whose ``step`` (or ``shaping``) raises at the volumes ``fail``, as a bug or a value the
    step cannot handle would."""

    def __init__(self, *args: Any, fail: set[int], where: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail, self.where = fail, where

    def step(self, index, values, model, source=None):
        if self.where == "step" and index in self.fail:
            raise FloatingPointError(f"boom at {index}\nsecond line")
        return super().step(index, values, model, source)

    def shaping(self, index):
        if self.where == "shaping" and index in self.fail:
            raise FloatingPointError(f"boom at {index}\nsecond line")
        return super().shaping(index)


class _FailingProcessor(VolumeProcessor):
    """rtnf's processor with a feedback computer that raises at the volumes ``fail`` (a part a run may be given)."""

    def __init__(self, cfg, fail: set[int], where: str) -> None:
        super().__init__(cfg)
        self.feedback = _FailingFeedback(cfg.feedback, self.roi_names, self.protocol,
                                         shaping_history=load_history(cfg), fail=set(fail), where=where)


@pytest.mark.parametrize("where", ["step", "shaping"])
def test_a_volume_whose_feedback_raised_after_the_model_update_keeps_its_row_and_its_place(
        tmp_path, run4d, caplog, where):
    caplog.set_level(logging.INFO, logger="rtnf")
    cfg = _cfg(tmp_path, "failed")
    result, rows, _ = _run(cfg, run4d, lambda c: _FailingProcessor(c, {FAILED}, where))
    assert result.ok and (result.n_processed, result.n_missing, result.n_errors) == (N - 2, 0, 0)
    row = rows[FAILED]
    assert row["missing"] == "0" and row["feedback_value"] in ("", "n/a")
    assert row["feedback_reason"] == f"feedback failed: FloatingPointError: boom at {FAILED} second line"
    assert all(row[c] not in ("", "n/a") for c in ROI_COLUMNS)
    alarms = _alarms(caplog, "feedback_failed")
    assert len(alarms) == 1 and alarms[0].levelno == logging.ERROR

    # Ground truth: a run without the failure (the model holds the volume: every ROI value is the same) ...
    clean = _cfg(tmp_path, "clean")
    _, reference, _ = _run(clean, run4d, VolumeProcessor)
    for column in ROI_COLUMNS:
        assert [r[column] for r in rows] == [r[column] for r in reference], column
    assert reference[FAILED]["feedback_value"] not in ("", "n/a")  # the failure, not the run, nulled it
    # ... unlike a run in which that volume is missing (the check can fail).
    gone = _cfg(tmp_path, "gone")
    _, without, _ = _run(gone, run4d, lambda c: _RefusingProcessor(c, {FAILED}))
    assert without[FAILED]["missing"] == "1"
    after = slice(FAILED + 1, None)
    assert [r["acc_clean"] for r in without[after]] != [r["acc_clean"] for r in reference[after]]

    # A resume of the failed run (the same parts: the failure comes back) reproduces what was recorded.
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="rtnf")
    resumed, again, _ = _run(cfg, run4d, lambda c: _FailingProcessor(c, {FAILED}, where), resume=True)
    assert resumed.ok
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume:")]
    assert again == rows


class _RefusingProcessor(VolumeProcessor):
    """rtnf's processor whose ROI model raises at the volumes ``fail``: before taking them (missing volumes),
    or, ``after``, once it has taken them; ``shaping``: the feedback's shaping raises there too."""

    def __init__(self, cfg, fail: set[int], after: bool = False, shaping: bool = False) -> None:
        super().__init__(cfg)
        self.model = _RaisingModel(self.model, fail, after)
        if shaping:
            self.feedback = _FailingFeedback(cfg.feedback, self.roi_names, self.protocol,
                                             shaping_history=load_history(cfg), fail=set(fail), where="shaping")


class _RaisingModel:
    """The run's ROI model, raising before (or, ``after``, once) it takes the volumes ``fail``."""

    def __init__(self, model, fail: set[int], after: bool) -> None:
        self._model, self.fail, self.after = model, fail, after

    def update(self, index, *args, **kwargs):
        if index in self.fail and not self.after:
            raise RuntimeError(f"refused {index}")
        values = self._model.update(index, *args, **kwargs)
        if index in self.fail:
            raise RuntimeError(f"raised after taking {index}")
        return values

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def test_a_volume_the_model_took_before_it_raised_is_recorded_with_its_raw_values(tmp_path, run4d):
    cfg = _cfg(tmp_path, "model")
    result, rows, _ = _run(cfg, run4d, lambda c: _RefusingProcessor(c, {FAILED}, after=True))
    assert result.ok and (result.n_missing, result.n_errors) == (0, 0)
    row = rows[FAILED]
    assert row["missing"] == "0" and row["feedback_value"] in ("", "n/a")
    assert row["feedback_reason"] == f"the ROI model failed: RuntimeError: raised after taking {FAILED}"
    clean = _cfg(tmp_path, "clean")
    _, reference, _ = _run(clean, run4d, VolumeProcessor)
    assert row["acc_raw"] == reference[FAILED]["acc_raw"] and row["acc_clean"] in ("", "n/a")
    for column in ROI_COLUMNS:  # the model holds it: the next volumes are those of the run without the failure
        assert [r[column] for r in rows[FAILED + 1:]] == [r[column] for r in reference[FAILED + 1:]], column


def test_a_missing_volume_whose_messages_cannot_read_the_feedback_state_keeps_its_row(tmp_path, run4d, caplog):
    """Before: the missing volume's messages raised again in the run loop, and the run died with a traceback."""
    caplog.set_level(logging.INFO, logger="rtnf")
    cfg = _cfg(tmp_path, "missing")
    result, rows, _ = _run(cfg, run4d, lambda c: _RefusingProcessor(c, {FAILED}, shaping=True))
    assert result.ok and (result.n_processed, result.n_missing, result.n_errors) == (N - 3, 1, 1)
    assert rows[FAILED]["missing"] == "1"
    assert rows[FAILED]["feedback_reason"] == f"processing error: RuntimeError: refused {FAILED}"
    assert len(_alarms(caplog, "feedback_failed")) == 1


def test_a_volume_that_failed_after_preprocessing_leaves_no_trace_in_motion_or_quality():
    """Regression (review): a volume whose processing raised after Preprocessor.run was forgotten by the slice timer
    only; the quality monitor and the realigner's warm start kept it, so the next volume's framewise displacement
    was measured against a volume the table records as missing (6 mm here instead of 0: a motion outlier, censored)
    and a resume, which never runs it, gave other values. Now skip(index) rolls both back."""
    from types import SimpleNamespace

    from scipy.ndimage import gaussian_filter
    from scipy.ndimage import shift as nd_shift

    from rtnf.analysis.preprocess import Preprocessor
    from rtnf.scanner.volume import Volume

    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.normal(size=(32, 32, 20)), 2).astype(np.float32)
    g = np.indices(base.shape) - np.array(base.shape)[:, None, None, None] / 2
    head = (g[0] / 13) ** 2 + (g[1] / 13) ** 2 + (g[2] / 8) ** 2 < 1
    base = np.where(head, 1000 + 300 * base / base.std(), 0).astype(np.float32)
    moves = {0: 0.0, 1: 0.0, 2: 2.0, 3: 0.0}  # volume 2 moved 2 voxels (6 mm) along x
    vols = [Volume(data=nd_shift(base, (moves[k], 0, 0), order=1).astype(np.float32), affine=np.diag([3.0, 3, 3, 1]),
                   t_acquired=None, path=Path(f"v{k}.nii")) for k in range(4)]
    motion = SimpleNamespace(enabled=True, fwhm_mm=0.0, sigma_vox=1.0, reference="first")
    quality = SimpleNamespace(fd_threshold_mm=0.5, spike_z=5.0)

    def third(volume_2: str):
        p = Preprocessor([], motion, quality).fit(vols[0])
        for k in range(3):
            if k == 2 and volume_2 == "never came":
                p.skip(2)
                continue
            p.run(vols[k], k)
            if k == 2 and volume_2 == "raised after preprocessing":
                p.skip(2)  # what VolumeProcessor.missing does once the run loop caught the raise
        return p.run(vols[3], 3)

    missing, failed, ran = (third(v) for v in ("never came", "raised after preprocessing", "ran"))
    assert ran.quality.framewise_displacement > 5.0  # the control: volume 2 really is 6 mm away
    assert failed.quality.framewise_displacement == pytest.approx(missing.quality.framewise_displacement, abs=1e-9)
    assert failed.quality.framewise_displacement < 0.1 and not failed.quality.censored
    np.testing.assert_allclose(failed.motion, missing.motion, atol=1e-9)  # the same warm start
    assert failed.quality.dvars == pytest.approx(missing.quality.dvars)
