"""Issue 15: a run holds an exclusive lock on its outputs; a second writer is refused before it touches them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rtnf.config import load_config
from rtnf.apps.demo import Listener, Processes, wait_ready, free_address, read_tsv, sim_spec, write_toml
from rtnf.run.record import bids_prefix, func_dir
from rtnf.run.runlock import run_lock
from tests.helpers import make_config, pattern, synthetic_run_4d

N = 24
CONFIG = {"session.subject": "lock", "session.task": "nf", "scanner.n_volumes": N, "scanner.dummy_volumes": 0,
          "protocol.pattern": pattern(rest=6, regulate=6), "publish.preview": False, "output.dir": "outputs"}


def test_second_overwrite_run_is_refused_and_the_live_run_keeps_every_row(tmp_path):
    address = free_address()
    cfg_path = make_config(tmp_path, CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, seed=4), spec)
    listener = Listener([address])
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address], logs)
        wait_ready(listener, procs, no_screen=True)
        # Speed 1.5: the live run still has about 25 s to go when the second `rtnf run` starts, which took
        # 3 s to be refused here and 10.5 s on a loaded machine (at speed 3 the run had 12.7 s left: a second
        # run started after its end would not be refused)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(spec), "--export-dir",
                                    str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "1.5"], logs)
        deadline = time.time() + 60
        while len(listener.of("volume")) < 5 and time.time() < deadline:
            listener.poll(0.1)
        assert len(listener.of("volume")) >= 5, (logs / "rtnf.log").read_text()[-3000:]
        # the operator starts the same run again by mistake, with --overwrite
        second = subprocess.run(
            [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address, "--overwrite"],
            capture_output=True, text=True, timeout=120,
        )
        assert second.returncode == 2, second.stderr
        live_pid = procs.procs["rtnf"].pid
        assert f"pid {live_pid}" in second.stderr and socket.gethostname() in second.stderr, second.stderr
        assert "started" in second.stderr
        rtnf = procs.procs["rtnf"]
        deadline = time.time() + 120
        while rtnf.poll() is None and time.time() < deadline:
            listener.poll(0.2)
        assert rtnf.returncode == 0, (logs / "rtnf.log").read_text()[-3000:]
    finally:
        listener.close()
        procs.stop_all()
    func = func_dir(cfg)
    prefix = bids_prefix(cfg)
    rows = read_tsv(func / f"{prefix}_desc-rtnf_timeseries.tsv")
    assert [int(r["index"]) for r in rows] == list(range(N))
    for name in ("desc-rtnf_log.tsv", "desc-rtnf_timeseries.tsv", "desc-rtnf_provenance.json"):
        assert b"\0" not in (func / f"{prefix}_{name}").read_bytes(), name
    provenance = json.loads((func / f"{prefix}_desc-rtnf_provenance.json").read_text())
    assert provenance["status"] == "ended" and provenance["n_rows"] == N
    assert not run_lock(cfg).path.exists()  # released at the end


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _replay(cfg_path: Path, source: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg_path), str(source), *extra],
                          capture_output=True, text=True, timeout=300)


def test_stale_lock_is_reported_and_taken_a_held_one_refuses_replay(tmp_path):
    cfg_path = make_config(tmp_path, {**CONFIG, "scanner.n_volumes": 12, "protocol.pattern": pattern(rest=3, regulate=3)})
    cfg = load_config(cfg_path)
    cfg = load_config(cfg_path, {"output.dir": str(cfg.output.dir / "replay")})  # where a replay writes
    source = tmp_path / "run.nii.gz"
    synthetic_run_4d(source, 12)
    lock = run_lock(cfg).path
    lock.parent.mkdir(parents=True)

    # held by a live process on this host (this test's): refused, nothing written
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
    proc = _replay(cfg_path, source)
    assert proc.returncode == 2, proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr
    assert sorted(p.name for p in lock.parent.iterdir()) == [lock.name]

    # left by a process that is gone: a warning, the lock is taken, the replay runs and releases it
    dead = _dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": time.time() - 3600}))
    proc = _replay(cfg_path, source)
    assert proc.returncode == 0, proc.stderr
    assert "stale lock" in proc.stderr and f"pid {dead}" in proc.stderr
    rows = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    assert len(rows) == 12
    assert not lock.exists()

    # its PID taken again by a process that started later (a reboot after a power cut): stale too
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time() - 86400}))
    proc = _replay(cfg_path, source, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "stale lock" in proc.stderr and not lock.exists()
