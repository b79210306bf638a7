"""The command line at the scanner: help texts, option names, per-run overrides, the progress line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from rtnf.cli import _parser
from rtnf.config import load_config
from rtnf.apps.demo import Listener, free_address, read_tsv, sim_spec, write_toml
from rtnf.run.record import bids_prefix, func_dir
from rtnf.run.session import progress_line
from tests.helpers import CONFIG_DIR, make_config, pattern


def _rtnf(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtnf", *args], capture_output=True, text=True, timeout=timeout)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (sub-)command parser under ``parser``, with its command path."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _commands(sub, path + (name,))


def test_every_command_help_has_a_description_and_an_example():
    commands = dict(_commands(_parser()))
    assert {("run",), ("replay",), ("check",), ("roi", "mni"), ("bench", "glm"), ("console",)} <= set(commands)
    for path, parser in commands.items():
        name = " ".join(path)
        assert parser.description and len(parser.description.split()) >= 8, f"rtnf {name}: no description"
        text = parser.format_help()
        assert "example" in text, f"rtnf {name} --help has no example"
        assert f"rtnf {name}" in (parser.epilog or ""), f"rtnf {name}: the example is not a command line"


def test_the_screen_help_has_a_description_and_an_example():
    from stimulus.cli import build_parser

    text = build_parser().format_help()
    assert "example: rtnf-screen" in text and "--ack-address" in text


def test_run_help_shows_run_and_set_and_the_address_option():
    proc = _rtnf("run", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "--run N" in out and "--set KEY=VALUE" in out and "--address ADDRESS" in out
    assert "example" in out and "volume N of M" in out
    assert "--publish-address" not in out  # the old spelling is a hidden alias


@pytest.mark.parametrize("command", ["run", "replay"])
def test_address_is_named_alike_and_the_old_spelling_still_works(command):
    extra = ["src"] if command == "replay" else []
    for option in ("--address", "--publish-address"):
        args = _parser().parse_args([command, "x.toml", *extra, option, "tcp://127.0.0.1:7777"])
        assert args.publish_address == "tcp://127.0.0.1:7777"


def test_replay_and_check_take_run_and_set_too():
    for command, extra in (("replay", ["src"]), ("check", [])):
        args = _parser().parse_args([command, "x.toml", *extra, "--run", "5", "--set", "feedback.smoothing_alpha=0.5"])
        assert args.run == 5 and args.sets == ["feedback.smoothing_alpha=0.5"]


def test_check_with_run_and_set_and_no_numexpr_line(tmp_path):
    proc = _rtnf("check", str(CONFIG_DIR / "demo_acc.toml"), "--run", "4", "--set", "model.drift_cutoff_s=0.01")
    assert proc.returncode == 2 and "did you mean 100?" in proc.stderr, proc.stderr  # --set reaches validation
    assert "numexpr" not in proc.stdout + proc.stderr.lower()


def test_progress_line_counts_from_one_and_says_why_a_value_is_null():
    volume = {
        "index": 13, "acquisition": 16, "n_volumes": 70, "condition": "regulate", "framewise_displacement": 0.084,
        "flags": {"missing": False, "censored": False, "late": True, "out_of_order": False},
        "timing": {"t_detected": 100.0, "t_published": 100.0072},
    }
    line = progress_line(volume, {"value": 0.625, "reason": None})
    assert line.startswith("volume 14 of 70 (acq 16)")
    assert "regulate" in line and "feedback 0.62" in line and "FD 0.08 mm" in line and "latency 7.2 ms" in line
    assert line.endswith("[late]")
    missing = {**volume, "index": 0, "acquisition": 3, "framewise_displacement": None,
               "flags": {"missing": True, "censored": False, "late": False, "out_of_order": False},
               "timing": {"t_detected": None, "t_published": 5.0}}
    line = progress_line(missing, {"value": None, "reason": "missing volume"})
    assert line.startswith("volume  1 of 70 (acq 3)")
    assert "feedback — (missing volume)" in line and "FD —" in line and "latency —" in line


N = 16
RUN_CONFIG = {"session.subject": "cli", "session.task": "nf", "scanner.format": "nifti", "scanner.n_volumes": N,
              "protocol.pattern": pattern(rest=4, regulate=3), "feedback.min_baseline_volumes": 2,
              "output.dir": "outputs"}


def test_run_takes_run_and_set_prints_a_progress_line_per_volume_and_no_numexpr(tmp_path):
    cfg_path = make_config(tmp_path, RUN_CONFIG)
    address = free_address()
    cfg = load_config(cfg_path, {"publish.address": address, "session.run": 3, "feedback.smoothing_alpha": 0.5})
    spec = tmp_path / "spec.toml"
    write_toml(sim_spec(cfg, seed=4), spec)
    listener = Listener([address])
    out, err = open(tmp_path / "rtnf.out", "w"), open(tmp_path / "rtnf.err", "w")
    rtnf = subprocess.Popen(
        [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--address", address, "--run", "3",
         "--set", "feedback.smoothing_alpha=0.5"],
        stdout=out, stderr=err, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.time() + 90
        while not any(topic == "heartbeat" for topic, _ in listener.poll(0.2)):
            assert rtnf.poll() is None and time.time() < deadline, (tmp_path / "rtnf.err").read_text()
        sim = subprocess.run(
            [sys.executable, "-m", "scanner_sim", "synth", str(spec), "--export-dir", str(cfg.scanner.export_dir),
             "--truth-dir", str(tmp_path / "truth"), "--speed", "8", "--mode", "atomic"],
            capture_output=True, text=True, timeout=120,
        )
        assert sim.returncode == 0, sim.stderr
        rtnf.wait(120)
    finally:
        listener.close()
        if rtnf.poll() is None:
            rtnf.terminate()
            rtnf.wait(10)
        out.close()
        err.close()
    stdout, stderr = (tmp_path / "rtnf.out").read_text(), (tmp_path / "rtnf.err").read_text()
    assert rtnf.returncode == 0, stderr

    # the outputs are run 3's, and the run used the --set value
    table = func_dir(cfg) / f"{bids_prefix(cfg)}_desc-rtnf_timeseries.tsv"
    assert "_run-3_" in table.name and table.is_file()
    assert not list(func_dir(cfg).glob("*_run-1_*"))
    rows = read_tsv(table)
    assert len(rows) == N - 2
    provenance = json.loads(table.with_name(f"{bids_prefix(cfg)}_desc-rtnf_provenance.json").read_text())
    assert provenance["config"]["feedback"]["smoothing_alpha"] == 0.5
    assert provenance["config"]["session"]["run"] == 3

    # one progress line per volume, counted from 1, with the file number, value or reason, FD and latency
    lines = [line for line in stdout.splitlines() if line.startswith("volume ")]
    kept = N - 2
    assert len(lines) == kept, stdout
    assert lines[0].startswith(f"volume  1 of {kept} (acq 3)") and lines[-1].startswith(f"volume {kept} of {kept}")
    assert "feedback — (waiting for baseline)" in lines[0]
    assert all("FD " in line and "latency " in line and " ms" in line for line in lines)
    assert any(row["feedback_value"] != "n/a" for row in rows)
    assert any(f"feedback {float(rows[k]['feedback_value']):.2f}" in lines[k]
               for k in range(kept) if rows[k]["feedback_value"] != "n/a")
    assert "numexpr" not in (stdout + stderr).lower()
