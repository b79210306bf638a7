"""Lateness of live volumes is judged against the scanner's clock (issue 15, point 10).

Acquisition k is expected at k * TR + offset, the offset being the smallest
t_detected - k * TR seen so far; a volume is late when it comes more than
max(0.5 * TR, 0.3 s) after that, however quickly it is sent once seen.
"""

from __future__ import annotations

import random

from rtnf.scanner.sequencer import LatenessJudge
from tests.helpers import pattern, run_processes, wait_until

TR = 1.0
T0 = 1000.0


def _judge_all(judge: LatenessJudge, arrivals: list[tuple[int, float]], send_s: float = 0.01) -> dict[int, bool]:
    return {k: judge.is_late(k, t, t + send_s) for k, t in arrivals}


def test_a_backlog_after_a_stall_is_late_and_the_next_on_time_volume_is_not():
    # Volumes 0-4 on time; rtnf stalls; 5-9 are all seen together 7 s after 5 was due,
    # each sent within 10 ms of being seen; 10 comes on time.
    arrivals = [(k, T0 + k * TR + 0.02) for k in range(5)]
    t_burst = T0 + 5 * TR + 7.0
    arrivals += [(k, t_burst + 0.001 * (k - 5)) for k in range(5, 10)]
    arrivals += [(10, T0 + 10 * TR + 0.03)]
    assert t_burst > T0 + 9 * TR + 0.5 * TR  # even the last of the backlog is well behind its slot
    late = _judge_all(LatenessJudge(TR), arrivals)
    assert [k for k, v in late.items() if v] == [5, 6, 7, 8, 9]


def test_a_stall_hides_behind_no_small_latency():
    # One volume seen 2.2 s after it was due (rtnf was SIGSTOPped) and sent 9 ms later: late.
    judge = LatenessJudge(2.0)
    for k in range(4):
        assert not judge.is_late(k, T0 + 2.0 * k, T0 + 2.0 * k + 0.009)
    assert judge.is_late(4, T0 + 2.0 * 4 + 2.2, T0 + 2.0 * 4 + 2.2 + 0.009)
    assert not judge.is_late(5, T0 + 2.0 * 5 + 0.01, T0 + 2.0 * 5 + 0.02)


def test_steady_arrivals_with_jitter_are_never_late():
    rng = random.Random(7)
    for tr in (0.5, 1.0, 2.0):
        judge = LatenessJudge(tr)
        arrivals = [(k, T0 + k * tr + rng.uniform(-0.05, 0.05)) for k in range(300)]
        assert not any(_judge_all(judge, arrivals).values()), tr


def test_a_late_first_volume_does_not_make_the_on_time_ones_late():
    # The first volume comes 1.5 s late (the export was slow to start); the rest on time.
    judge = LatenessJudge(TR)
    arrivals = [(0, T0 + 1.5)] + [(k, T0 + k * TR + 0.02) for k in range(1, 30)]
    late = _judge_all(judge, arrivals)
    assert not any(v for k, v in late.items() if k > 0)


def test_dummies_dropped_volumes_and_the_threshold_floor():
    # Acquisition indices count dummies and dropped volumes: gaps do not shift the expectation.
    judge = LatenessJudge(0.4)  # threshold max(0.2, 0.3) = 0.3 s
    assert not judge.is_late(3, T0 + 3 * 0.4, T0 + 3 * 0.4 + 0.01)
    assert not judge.is_late(5, T0 + 5 * 0.4 + 0.25, T0 + 5 * 0.4 + 0.26)  # 4 dropped; 0.25 s is jitter
    assert judge.is_late(6, T0 + 6 * 0.4 + 0.35, T0 + 6 * 0.4 + 0.36)


def test_replays_keep_their_own_rules():
    fast = LatenessJudge(TR, pace_s=0.0)
    assert not any(fast.is_late(k, T0, T0 + 0.05 * k) for k in range(50))
    paced = LatenessJudge(2.0, pace_s=0.5)  # judged against the replay's 0.5 s, not the 2 s TR
    assert not any(paced.is_late(k, T0 + 0.5 * k, T0 + 0.5 * k + 0.01) for k in range(10))
    assert paced.is_late(10, T0 + 0.5 * 10 + 0.4, T0 + 0.5 * 10 + 0.41)


def test_a_held_volume_is_not_late_for_its_wait():
    judge = LatenessJudge(2.0)
    for k in range(5):
        judge.is_late(k, T0 + 2.0 * k, T0 + 2.0 * k + 0.01)
    t6 = T0 + 2.0 * 6  # on time; held a TR while 5 was awaited, sent 10 ms after its release
    assert not judge.is_late(6, t6, t6 + 2.02, t_released=t6 + 2.01)


def test_the_header_acquisition_time_is_the_scanners_clock():
    # A scanner clock 3600.5 s off ours; a simulation at speed 4 (TR 2 s, a volume every 0.5 s).
    judge = LatenessJudge(2.0)
    pace, skew = 0.5, 3600.5
    late = {}
    for k in range(20):
        t_acq = T0 + k * pace
        t_det = t_acq + skew + 0.6 + (0.02 * (k % 3))  # reconstruction and export: 0.6 s, jittered
        if k in (8, 9, 10):  # rtnf stalled: all three seen together after 10 was acquired
            t_det = T0 + 10 * pace + skew + 0.6 + 1.0
        late[k] = judge.is_late(k, t_det, t_det + 0.01, t_acquired=t_acq)
    assert [k for k, v in late.items() if v] == [8, 9, 10]


def test_untrustworthy_acquisition_times_fall_back_to_the_tr():
    # A time-of-day stamp wrapping at midnight: the wrapped volume is judged by the TR rule.
    judge = LatenessJudge(1.0)
    for k in range(5):
        assert not judge.is_late(k, T0 + k, T0 + k + 0.01, t_acquired=86396.0 + k)
    assert not judge.is_late(5, T0 + 5, T0 + 5.01, t_acquired=0.0)


STOP_CONFIG = {"session.subject": "stall", "session.task": "nf", "scanner.tr_s": 1.0, "scanner.n_volumes": 18,
               "scanner.dummy_volumes": 0, "scanner.filename_template": "rtsim_{series:03d}_{volume:05d}.nii",
               "scanner.series_number": 1, "scanner.watch": "polling", "scanner.poll_interval_s": 0.05,
               "protocol.pattern": pattern(rest=3, regulate=3, repeat=3), "output.dir": "outputs"}


def test_volumes_that_came_while_rtnf_was_stopped_are_late(tmp_path, monkeypatch):
    """Real processes: `rtnf run` is SIGSTOPped for 3 TRs; what the scanner wrote meanwhile is late."""
    import os
    import signal
    import threading
    import time

    import rtnf.apps.demo
    from rtnf.apps.demo import read_tsv
    from rtnf.run.record import bids_prefix, func_dir

    started: dict = {}
    start = rtnf.apps.demo.Processes.start

    def capture(self, name, cmd, log_dir):
        started[name] = proc = start(self, name, cmd, log_dir)
        return proc

    monkeypatch.setattr(rtnf.apps.demo.Processes, "start", capture)
    stall: dict = {}

    def stop_rtnf() -> None:
        export = tmp_path / "export"
        if not wait_until(lambda: export.exists() and len(list(export.glob("*.nii"))) >= 6, 120):
            return
        pid = started["rtnf"].pid
        os.kill(pid, signal.SIGSTOP)
        stall["stop"] = time.time()
        time.sleep(3.0)
        stall["cont"] = time.time()
        os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=stop_rtnf, daemon=True)
    thread.start()
    cfg, _ = run_processes(tmp_path, STOP_CONFIG, speed=1.0, timeout_s=120.0)
    thread.join(10)
    assert "cont" in stall, "rtnf was never stopped"
    rows = {int(r["index"]): r for r in read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")}
    files = read_tsv(tmp_path / "truth" / "files.tsv")
    finished = {int(r["volume"]): float(r["t_finished"]) for r in files}
    # how long after its acquisition time (the header's, rtnf's clock for lateness) the simulator wrote each file
    export_lag = {int(r["volume"]): float(r["t_finished"]) - float(r["t_acquired"]) for r in files}
    assert all(r["missing"] == "0" for r in rows.values())
    # written while rtnf was stopped (and not just before it went on): seen late, however fast it was sent then.
    # 0.7 s before it went on, not 0.5 s: late means more than 0.5 s (half this TR) behind the quickest volume's
    # lag, and that lag holds up to one polling interval (0.05 s) of detection, so a volume written 0.5 s before
    # rtnf went on was late or not by chance.
    during = [v for v, t in finished.items() if stall["stop"] <= t <= stall["cont"] - 0.7]
    assert len(during) >= 2, (stall, finished)
    assert all(rows[v]["late"] == "1" for v in during), {v: rows[v]["late"] for v in during}
    # written before the stop (early enough to be seen before it), or once rtnf had caught up: on time -- when the
    # simulator wrote it on schedule (within 0.2 s) and rtnf saw it within 0.2 s (together under the 0.5 s that
    # makes a volume late) and sent it within 0.5 s (a TR is allowed). On a loaded machine either process can be
    # held off the CPU (the simulator once wrote a file 0.87 s late; rtnf once stalled 2.2 s after the stop), and
    # such a volume is late, rightly.
    on_schedule = min(export_lag.values()) + 0.2

    def prompt(v: int) -> bool:
        t_detected, t_published = float(rows[v]["t_detected"]), float(rows[v]["t_published"])
        return export_lag[v] < on_schedule and t_detected - finished[v] < 0.2 and t_published - t_detected < 0.5

    on_time = [v for v, t in finished.items() if v >= 2 and prompt(v)
               and (t < stall["stop"] - 0.5 or t > stall["cont"] + 1.0)]
    assert any(finished[v] > stall["cont"] for v in on_time), (stall, finished)  # the judge after the backlog
    assert all(rows[v]["late"] == "0" for v in on_time), {v: rows[v]["late"] for v in on_time}
