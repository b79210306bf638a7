"""Confound regressors that arrive with each volume (issue 19): their columns in the design, in the ROI model,
in the table and on the wire, and a source that stalls costs its terms, never the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtnf.analysis.confounds import ConfoundSource
from rtnf.analysis.design import DesignRows, make_design
from rtnf.analysis.protocol import Block, Protocol
from rtnf.analysis.roi_model import RoiModel
from rtnf.config import load_config
from rtnf.run.pipeline import VolumeProcessor
from rtnf.run.record import row_from_messages, timeseries_columns
from rtnf.scanner.export import Arrival
from rtnf.scanner.volume import Volume
from rtnf.wire.topics import VolumeMessage
from tests.helpers import make_config, pattern

N = 120
TR = 2.0


def _protocol() -> Protocol:
    blocks = tuple(Block("regulate", 20.0 + 40.0 * k, 20.0, f"b{k}") for k in range(N * 2 // 40))
    return Protocol(blocks=blocks, baseline="rest", conditions=("rest", "regulate"), tr_s=TR, n_volumes=N)


def test_confound_columns_sit_between_motion_and_drifts_and_are_filled_by_each_models_rows():
    design = make_design(_protocol(), "spm", 128.0, n_motion=6, confounds=("card_cos1", "card_sin1"))
    assert design.names[design.n_core : design.n_core + 8][-2:] == ("card_cos1", "card_sin1")
    np.testing.assert_array_equal(design.online_columns, np.arange(design.n_core, design.n_core + 8))
    assert set(design.confound_columns) <= set(design.nuisance_columns)
    rows = DesignRows(design)
    with pytest.raises(ValueError, match="motion or confound"):
        rows.row(0)
    row = rows.row(3, np.arange(8.0))
    np.testing.assert_array_equal(row[design.online_columns], np.arange(8.0))
    assert np.isnan(design.matrix[3, design.online_columns]).all()  # the shared design is untouched
    with pytest.raises(ValueError, match="unique"):
        make_design(_protocol(), "spm", 128.0, confounds=("regulate",))


def test_a_known_confound_is_removed_from_the_cleaned_signal_and_the_fit_meets_batch_ols():
    """A large nuisance oscillation in the ROI: with it as a confound column the cleaned signal follows the task
    (r > 0.9) and the final coefficients equal a batch least-squares fit; without it, it does not (r < 0.6)."""
    protocol = _protocol()
    rng = np.random.default_rng(7)
    t = np.arange(N) * TR
    nuisance = np.cos(2 * np.pi * 0.11 * t + 0.3)  # a standardised, aliased physiological term
    plain = make_design(protocol, "spm", 128.0)
    task = plain.matrix[:, 0]
    y = 1000 + 4.0 * task + 6.0 * nuisance + rng.normal(scale=0.5, size=N)
    with_c = make_design(protocol, "spm", 128.0, confounds=("physio",))

    def cleaned(design, online):
        model = RoiModel(design, protocol, 1, 128.0)
        for i in range(N):
            model.update(i, y[i : i + 1], None if online is None else online[i])
        return model, model.clean_at(np.arange(N))[:, 0]

    model, clean = cleaned(with_c, nuisance[:, None])
    _, clean_plain = cleaned(plain, None)
    assert np.corrcoef(clean, task)[0, 1] > 0.9
    assert np.corrcoef(clean_plain, task)[0, 1] < 0.6
    X = with_c.with_motion(nuisance[:, None]).matrix
    batch, *_ = np.linalg.lstsq(X, y, rcond=None)
    online = model.glm.ridge_coefficients(np.zeros(with_c.n_regressors))[:, 0]
    np.testing.assert_allclose(online, batch, rtol=1e-6, atol=1e-6)


class _Known(ConfoundSource):
    """A source that knows the nuisance of each volume, and stalls for volumes 10-14."""

    names = ("known",)

    def __init__(self) -> None:
        super().__init__("known")
        self.fitted = self.closed = False

    def fit(self, context) -> None:
        assert context.n_volumes == 30 and context.tr_s == 2.0
        self.fitted = True

    def row(self, volume):
        if 10 <= volume.index < 15:
            self.reason = "stream stalled"
            return None
        return np.array([np.sin(volume.index)])

    def close(self) -> None:
        self.closed = True


def _arrival(data: np.ndarray, number: int) -> Arrival:
    volume = Volume(data=data, affine=np.diag([3.0, 3.0, 3.0, 1.0]), t_acquired=None, path=Path(f"v{number}.nii"))
    return Arrival(number=number, paths=[Path(f"v{number}.nii")], t_detected=0.0, load=lambda: volume)


def test_processor_records_confounds_and_a_stalled_source_costs_its_terms_with_one_alarm(tmp_path, caplog):
    cfg = load_config(make_config(tmp_path, {"scanner.n_volumes": 30, "scanner.dummy_volumes": 0,
                                             "protocol.pattern": pattern(rest=5, regulate=5, repeat=3),
                                             "motion.enabled": False}))
    source = _Known()
    processor = VolumeProcessor(cfg, confounds=[source])
    assert processor.design.confounds == ("known",)
    rng = np.random.default_rng(0)
    base = 100 + rng.normal(size=(16, 16, 10)).astype(np.float32)
    rows = []
    with caplog.at_level("INFO", logger="rtnf"):
        for i in range(30):
            result = processor.process(i, i + 1, _arrival(base + rng.normal(size=base.shape).astype(np.float32), i + 1))
            body = result.volume.to_body()
            assert VolumeMessage.from_body(body).confounds == body["confounds"]  # valid on the wire
            rows.append(row_from_messages(body, result.feedback.to_body(), processor.roi_names))
            assert "confound_known" in result.stage_s
    processor.close()
    assert source.fitted and source.closed
    values = [r["confound_known"] for r in rows]
    assert values[:10] == pytest.approx([np.sin(i) for i in range(10)])
    assert values[10:15] == [None] * 5
    assert values[15:] == pytest.approx([np.sin(i) for i in range(15, 30)])
    alarms = [r for r in caplog.records if getattr(r, "alarm", None) == "confound_known"]
    assert [r.ok for r in alarms] == [False, True]  # once when it stalls, once when it recovers
    assert "stream stalled" in alarms[0].getMessage()
    assert all(r["feedback_value"] is not None or r["feedback_reason"] for r in rows)
    assert "confound_known" in timeseries_columns(processor.roi_names, None, processor.design.confounds)
