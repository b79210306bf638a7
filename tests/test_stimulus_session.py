"""The feedback screen with real `rtnf run` processes: started after rtnf, and across an rtnf restart."""

from __future__ import annotations

import os
import signal
import sys

from rtnf.config import load_config
from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, screen_command, sim_spec, write_toml
from tests.helpers import make_config, pattern, requires_display

N = 14
CONFIG = {"session.subject": "screen", "session.task": "nf", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "protocol.pattern": pattern(rest=4, regulate=3), "feedback.min_baseline_volumes": 2,
          "publish.preview": False, "output.dir": "outputs"}


@requires_display()
def test_screen_started_after_rtnf_and_reconnecting_after_a_restart(tmp_path):
    address, ack = free_address(), free_address()
    listener = Listener([address, ack])
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    run_ids = []
    try:
        for run in (1, 2):
            cfg_path = make_config(tmp_path, {**CONFIG, "session.run": run, "scanner.export_dir": f"export{run}"},
                                   name=f"run{run}.toml")
            cfg = load_config(cfg_path, {"publish.address": address})
            write_toml(sim_spec(cfg, seed=run), tmp_path / f"spec{run}.toml")
            procs.start(f"rtnf{run}", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address",
                                       address], logs)
            if run == 1:  # the screen joins after rtnf is up
                listener.wait_for(lambda t, b: t == "heartbeat" and b.get("source") == "rtnf", 60, "rtnf")
                procs.start("screen", screen_command(address, ack, tmp_path, exit_after_end_s=None), logs)
            wait_ready(listener, procs, no_screen=False)
            procs.start(f"sim{run}", [sys.executable, "-m", "scanner_sim", "synth", str(tmp_path / f"spec{run}.toml"),
                                      "--export-dir", str(cfg.scanner.export_dir), "--truth-dir",
                                      str(tmp_path / f"truth{run}"), "--speed", "4"], logs)
            while procs.procs[f"rtnf{run}"].poll() is None:
                listener.poll(0.2)
            assert procs.procs[f"rtnf{run}"].returncode == 0
            run_ids.append(listener.of("run")[-1]["run_id"])
            listener.poll(1.0)
        beats = [b for b in listener.of("heartbeat") if b.get("source") == "stimulus"]
        os.kill(beats[-1]["pid"], signal.SIGTERM)  # the screen's own process, inside xvfb-run
        procs.procs["screen"].wait(20)
    finally:
        listener.close()
        procs.stop_all()
    assert procs.procs["screen"].returncode == 0, (logs / "screen.log").read_text()
    assert run_ids[0] != run_ids[1]
    for run_id in run_ids:
        acked = {d["index"] for d in listener.of("displayed") if d.get("run_id") == run_id and d.get("index") is not None}
        fed = {f["index"] for f in listener.of("feedback") if f["run_id"] == run_id}
        assert acked == fed and len(fed) == N, (run_id, sorted(acked))
