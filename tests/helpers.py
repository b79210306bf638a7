"""Helpers to write test configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BASE_CONFIG = """
[session]
subject = "01"
task = "test"

[scanner]
export_dir = "export"
tr_s = 2.0
n_volumes = 42
dummy_volumes = 2

[protocol]
baseline = "rest"
pattern = {{ steps = [{{ condition = "rest", duration = 10 }}, {{ condition = "regulate", duration = 10 }}], repeat = 2 }}

[rois.acc]
center_mm = [0.0, 30.0, 15.0]
radius_mm = 8.0

[feedback]
roi = "acc"

[output]
dir = "out"
{extra}
"""


def write_config(folder: Path, text: str | None = None, extra: str = "", name: str = "session.toml") -> Path:
    """Write a config file (the base config plus ``extra`` unless ``text`` is given)."""
    path = folder / name
    path.write_text(text if text is not None else BASE_CONFIG.format(extra=extra))
    return path


def replay_func_dir(cfg, label: str = "replay") -> Path:
    """Folder of a run's files written by ``rtnf replay`` (its own derivatives folder ``<output.dir>/<label>``)."""
    from rtnf.run.record import func_dir

    return Path(cfg.output.dir) / label / Path(func_dir(cfg)).relative_to(cfg.output.dir)


def run_processes(
    tmp_path: Path,
    config_text: str,
    with_screen: bool = False,
    speed: float = 4.0,
    sim_args: list[str] | None = None,
    silent_rois: list[str] | None = None,
    mode: str = "reopen",
    timeout_s: float = 240.0,
):
    """Run scanner-sim, `rtnf run` (and the screen) as real processes; return (cfg, listener).

    The listener has every message rtnf (and the screen) published. The
    simulator starts only once rtnf (and the screen) publish heartbeats.
    """
    import sys
    import time

    from rtnf.config import load_config
    from rtnf.apps.demo import Listener, Processes, _wait_ready, free_address, screen_command, sim_spec, write_toml

    address, ack_address = free_address(), free_address()
    cfg_path = write_config(tmp_path, config_text)
    cfg = load_config(cfg_path, {"publish.address": address})
    spec = sim_spec(cfg, amplitude_pct=1.5, noise_pct=1.0, seed=3)
    spec["regions"] = [r for r in spec["regions"] if r["name"] not in (silent_rois or [])]
    spec_path = tmp_path / "spec.toml"
    write_toml(spec, spec_path)
    listener = Listener([address] + ([ack_address] if with_screen else []))
    procs = Processes()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    try:
        if with_screen:
            procs.start("screen", screen_command(address, ack_address, tmp_path, exit_after_end_s=1.0), logs)
        screen_set = ["--set", f'publish.screen_address="{ack_address}"'] if with_screen else []
        procs.start("rtnf", [sys.executable, "-m", "rtnf", "run", str(cfg_path), "--create-export-dir", "--publish-address", address,
                             *screen_set], logs)
        _wait_ready(listener, procs, no_screen=not with_screen)
        procs.start(
            "scanner_sim",
            [sys.executable, "-m", "scanner_sim", "synth", str(spec_path), "--export-dir", str(cfg.scanner.export_dir),
             "--truth-dir", str(tmp_path / "truth"), "--speed", str(speed), "--mode", mode, *(sim_args or [])],
            logs,
        )
        rtnf = procs.procs["rtnf"]
        deadline = time.time() + timeout_s
        while rtnf.poll() is None:
            listener.poll(0.2)
            if time.time() > deadline:
                raise AssertionError("rtnf run did not finish:\n" + (logs / "rtnf.log").read_text()[-3000:])
        assert rtnf.returncode == 0, (logs / "rtnf.log").read_text()
        if with_screen:
            procs.procs["screen"].wait(30)
            assert procs.procs["screen"].returncode == 0, (logs / "screen.log").read_text()
        procs.procs["scanner_sim"].wait(30)
        listener.poll(0.5)
    finally:
        listener.close()
        procs.stop_all()
    return cfg, listener


def synthetic_run_4d(path: Path, n_volumes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Write a synthetic run (scanner_sim, no activation) as one 4D NIfTI; return (data, affine).

    ``data`` has shape (nx, ny, nz, n_volumes), float32; volume 0 is motion-free.
    """
    import nibabel as nib

    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    spec = RunSpec.from_dict({"tr_s": 2.0, "n_volumes": n_volumes, "seed": seed, "noise_pct": 1.0,
                              "blocks": [], "regions": []})
    run = SyntheticRun(spec)
    data = np.stack([run.volume(i) for i in range(n_volumes)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(data, run.affine), path)
    return data, run.affine
