"""The output folder fills up mid-run: a loud alarm, the feedback goes on, no row is lost or doubled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtnf.config import load_config
from rtnf.demo import Listener, Processes, _wait_ready, free_address, read_tsv, sim_spec, write_toml
from rtnf.record import bids_prefix, func_dir
from tests.helpers import write_config

N = 40
CONFIG = f"""
[session]
subject = "full"
task = "nf"

[scanner]
export_dir = "export"
tr_s = 2.0
n_volumes = {N}

[protocol]
baseline = "rest"
pattern = {{ steps = [{{ condition = "rest", duration = 10 }}, {{ condition = "regulate", duration = 10 }}], repeat = 2 }}

[rois.acc]
center_mm = [0.0, 30.0, 15.0]
radius_mm = 8.0

[feedback]
roi = "acc"

[publish]
preview = false

[output]
dir = "outputs"
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs for the outputs: a real 'no space left on device'."""
    mount = tmp_path / "outputs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_output_disk_raises_the_alarm_and_loses_no_row(tmp_path, small_disk):
    address = free_address()
    cfg_path = write_config(tmp_path, CONFIG)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, seed=2), spec)
    listener = Listener([address])
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir()
    filler = small_disk / "filler.bin"
    try:
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--publish-address", address], logs)
        _wait_ready(listener, procs, no_screen=True)
        procs.start("scanner_sim", [sys.executable, "-m", "scanner_sim", "synth", str(spec), "--export-dir",
                                    str(cfg.scanner.export_dir), "--truth-dir", str(tmp_path / "truth"),
                                    "--speed", "4"], logs)
        deadline = time.time() + 60
        while len(listener.of("volume")) < 8 and time.time() < deadline:
            listener.poll(0.1)
        # fill the disk to the last byte
        with open(filler, "wb", buffering=0) as f:
            for chunk in (65536, 4096, 256, 16, 1):  # to the last byte: no room left even for one row
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        while len(listener.of("volume")) < 20 and time.time() < deadline:
            listener.poll(0.1)
        os.remove(filler)  # space again
        while procs.procs["rtnf"].poll() is None and time.time() < deadline + 60:
            listener.poll(0.2)
        assert procs.procs["rtnf"].returncode == 0, (logs / "rtnf.log").read_text()
    finally:
        listener.close()
        procs.stop_all()
    feedback = listener.of("feedback")
    assert [f["index"] for f in feedback] == list(range(N)), "the feedback went on through the failure"
    alarms = [m for m in listener.of("log") if m["level"] == "ERROR" and "RECORDING FAILED" in m["message"]]
    assert len(alarms) == 1
    assert any("buffered rows written" in m["message"] for m in listener.of("log"))
    rows = read_tsv(func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv")
    assert [int(r["index"]) for r in rows] == list(range(N)), "every row exactly once, in order"
    published = {f["index"]: f["value"] for f in feedback}
    for r in rows:
        v = published[int(r["index"])]
        assert r["feedback_value"] == ("n/a" if v is None else repr(v))
