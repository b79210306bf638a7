"""Honest flags in replays: lateness judged against the replay's pace; no sliver blocks at a run's end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rtnf.config import load_config
from rtnf.apps.demo import read_tsv, sim_spec, write_toml
from rtnf.analysis.protocol import Block, Protocol, ProtocolError
from rtnf.run.record import bids_prefix
from rtnf.scanner.sequencer import LatenessJudge
from tests.helpers import make_config, replay_func_dir

N = 42
# A short TR: an unpaced replay's volumes all arrive at once and wait their
# turn, so their queueing time soon exceeds a TR.
FAST_CONFIG = {"session.subject": "flags", "session.task": "nf", "scanner.format": "nifti", "scanner.tr_s": 0.2,
               "scanner.n_volumes": N, "output.dir": "outputs"}


def test_an_unpaced_replay_flags_no_volume_late(tmp_path):
    cfg_path = make_config(tmp_path, FAST_CONFIG)
    cfg = load_config(cfg_path)
    spec = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, seed=5), spec)
    sim = subprocess.run(
        [sys.executable, "-m", "scanner_sim", "synth", str(spec), "--export-dir", str(cfg.scanner.export_dir),
         "--truth-dir", str(tmp_path / "truth"), "--speed", "50", "--mode", "atomic"],
        capture_output=True, text=True, timeout=120,
    )
    assert sim.returncode == 0, sim.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "rtnf", "replay", str(cfg_path), str(cfg.scanner.export_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_tsv(replay_func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    assert len(rows) == N - 2 and not any(r["missing"] == "1" for r in rows)
    assert sum(r["late"] == "1" for r in rows) == 0


def _protocol(blocks: list[Block], tr_s: float = 2.0, n_volumes: int = 70) -> Protocol:
    conditions = ("rest",) + tuple(dict.fromkeys(b.condition for b in blocks))
    return Protocol(blocks=tuple(blocks), baseline="rest", conditions=conditions, tr_s=tr_s, n_volumes=n_volumes)


def test_a_block_clipped_by_the_end_of_the_run_leaves_no_sliver():
    # 70 volumes at TR 2 s: the run ends at 140 s. A block in seconds that
    # starts a few milliseconds before the end covers no volume: it must
    # not reach the design (or the simulator) as a 4 ms block.
    protocol = _protocol([Block("regulate", 20.0, 20.0, "b0"), Block("regulate", 139.996, 0.004, "b1")])
    assert [(b.onset_s, b.duration_s) for b in protocol.task_blocks()] == [(20.0, 20.0)]
    assert all(b.duration_s >= 0.5 * protocol.tr_s for b in protocol.blocks)
    # a floating-point remainder past the end is clipped to the end exactly
    protocol = _protocol([Block("regulate", 120.0, 20.0 + 5e-10, "b0")])
    assert protocol.blocks[-1].end_s == 140.0
    # the events file follows whole volumes: no sliver there either
    assert [(s.start, s.stop) for s in protocol.segments()] == [(0, 60), (60, 70)]


def test_a_condition_whose_only_block_is_a_sliver_is_an_error():
    with pytest.raises(ProtocolError, match="covers no volume"):
        _protocol([Block("regulate", 20.0, 20.0, "b0"), Block("other", 139.5, 0.5, "protocol.blocks[1]")])


def test_a_config_with_a_sliver_block_at_the_end_loads_without_it(tmp_path):
    config = {**FAST_CONFIG, "protocol.units": "seconds", "protocol.pattern": None,
              "protocol.blocks": [{"condition": "regulate", "onset": 2.0, "duration": 2.0},
                                  {"condition": "regulate", "onset": 7.996, "duration": 0.004}]}
    cfg = load_config(make_config(tmp_path, config))
    assert cfg.protocol.units == "seconds"
    protocol = cfg.make_protocol()  # the run ends at 40 x 0.2 s = 8 s
    assert [(b.onset_s, b.duration_s) for b in protocol.task_blocks()] == [(2.0, 2.0)]


def test_lateness_is_judged_against_the_pace_volumes_are_fed_at():
    # Live (TR 2 s): on time, then one volume 3 s late; a dropped volume (7) does not make the next late.
    live = LatenessJudge(2.0)
    times = [100.0 + 2.0 * k for k in range(6)] + [100.0 + 2.0 * 6 + 3.0, 100.0 + 2.0 * 8]
    acqs = [0, 1, 2, 3, 4, 5, 6, 8]
    assert [live.is_late(a, t, t + 0.01) for a, t in zip(acqs, times)] == [False] * 6 + [True, False]
    assert live.is_late(9, 100.0 + 2.0 * 9, 100.0 + 2.0 * 9 + 2.5)  # on time, but waited longer than a TR

    # A replay at 4x speed: volumes 0.5 s apart; judged against 0.5 s, not the config's 2 s.
    paced = LatenessJudge(2.0, pace_s=0.5)
    assert not any(paced.is_late(k, 10.0 + 0.5 * k, 10.0 + 0.5 * k + 0.3) for k in range(2, 10))
    assert paced.is_late(10, 10.0 + 0.5 * 10 + 0.4, 10.0 + 0.5 * 10 + 0.41)  # behind the replay's schedule
    assert paced.is_late(11, 10.0 + 0.5 * 11, 10.0 + 0.5 * 11 + 0.6)  # waited longer than the replay's interval

    # A replay as fast as possible: every file at once, each waiting its turn; none is late.
    fast = LatenessJudge(0.2, pace_s=0.0)
    assert not any(fast.is_late(k, 5.0, 5.0 + 0.05 * k) for k in range(2, 60))
