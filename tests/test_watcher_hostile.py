"""Hostile and careless input on the reading side (issue 15): plain copies, FIFOs, gzip bombs, floods.

Every test uses real files in a real folder (and real processes where the
behaviour is a run's); none needs ../shared/data.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.config import load_config
from rtnf.apps.demo import read_tsv
from rtnf.scanner.export import ExportReader
from rtnf.scanner.watcher import VolumeWatcher
from tests.helpers import make_config, pattern, run_processes, wait_until

N = 14  # acquisitions of the small runs below (2 dummies)
CONFIG = {"session.subject": "hostile", "session.task": "nf", "scanner.n_volumes": N,
          "protocol.pattern": pattern(rest=3, regulate=3), "output.dir": "outputs"}


def _table(root: Path) -> list[dict[str, str]]:
    return read_tsv(next(root.rglob("*_desc-rtnf_timeseries.tsv")))


def _volumes_gz(folder: Path, n: int, shape=(128, 128, 80), seed: int = 0) -> list[Path]:
    """``n`` real .nii.gz volumes (smooth signal plus noise, int16: about 2.5 MB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    base = 1000 * np.exp(-(x**2 + y**2 + z**2) * 2)
    out = []
    for i in range(n):
        data = (base + rng.normal(0, 200, shape)).astype(np.int16)
        path = folder / f"vol_{i + 1:05d}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
        out.append(path)
    return out


def gzip_bomb(path: Path, shape: tuple[int, ...], total_bytes: int, dtype=np.int16) -> Path:
    """A .nii.gz whose NIfTI header promises ``shape`` but whose stream decompresses to ``total_bytes`` of zeros."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_data_offset(352)
    head = hdr.binaryblock + b"\0" * 4
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(head)
        left = total_bytes - len(head)
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path


def _reader(tmp_path: Path) -> ExportReader:
    cfg = load_config(make_config(tmp_path, name="reader.toml"))
    return ExportReader(cfg.scanner, t_start=time.time(), accept_old=True)


# ------------------------------------------------------------------ 11: plain copies


def test_plain_copies_are_not_reported_as_duplicate_exports(tmp_path, caplog):
    """Files copied with shutil.copy while the watcher runs: each handed over once, whole, no false
    "written again" warning (the size and mtime are recorded as the file is when handed over)."""
    sources = _volumes_gz(tmp_path / "src", 24)
    export = tmp_path / "export"
    reader = _reader(tmp_path)
    handed: dict[str, str] = {}

    def on_ready(path: Path, t: float, probe) -> None:
        handed.setdefault(path.name, hashlib.sha256(path.read_bytes()).hexdigest())

    watcher = VolumeWatcher(export, reader.matches, reader.check, on_ready, stale_after_s=2.0)
    with caplog.at_level(logging.WARNING, logger="rtnf"):
        watcher.start()
        try:
            for src in sources:
                shutil.copy(src, export / src.name)
            wait_until(lambda: len(handed) >= len(sources), 20)
            time.sleep(0.5)  # the last events of the last copies: no "written again" warning may follow
        finally:
            watcher.stop()
    assert sorted(handed) == sorted(s.name for s in sources)
    for src in sources:
        assert handed[src.name] == hashlib.sha256(src.read_bytes()).hexdigest(), f"{src.name} handed over partial"
    rewritten = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]
    assert rewritten == [], rewritten


# ------------------------------------------------------------------ 8: FIFO, gzip bombs


def test_fifo_named_like_a_volume_does_not_stop_a_live_run(tmp_path):
    """`rtnf run` with scanner-sim writing: a FIFO named like a volume appears in the export folder mid-run.
    It is never opened (opening it would block the reader forever); the run completes, with one warning."""
    export = tmp_path / "export"
    fifo = export / "rtsim_001_00900.nii"
    made = threading.Event()

    def plant() -> None:
        if wait_until(lambda: export.is_dir() and len(list(export.glob("rtsim_*.nii"))) >= 3, 120, interval_s=0.05):
            os.mkfifo(fifo)
            made.set()

    planter = threading.Thread(target=plant, daemon=True)
    planter.start()
    try:
        cfg, _ = run_processes(tmp_path, CONFIG, speed=8.0, timeout_s=60.0)
    finally:
        planter.join(timeout=1)
        if fifo.exists():  # a reader blocked on it (old behaviour) is released before the test ends
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert made.is_set(), "the FIFO was never planted"
    rows = _table(tmp_path / "outputs")
    assert len(rows) == N - 2 and all(r["missing"] == "0" for r in rows)
    log_text = (tmp_path / "logs" / "rtnf.log").read_text()
    warnings = [line for line in log_text.splitlines() if fifo.name in line and "WARNING" in line]
    assert len(warnings) == 1 and "FIFO" in warnings[0], warnings


_BOMB_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
from rtnf.config import load_config
from rtnf.scanner.export import ExportReader
from rtnf.scanner.nifti import VolumeReadError, read_nifti

cfg = load_config(Path(sys.argv[1]))
reader = ExportReader(cfg.scanner, t_start=0.0, accept_old=True)
out = {}
for name in sys.argv[2:]:
    path = Path(name)
    t0 = time.perf_counter()
    probe = reader.check(path)
    t_check = time.perf_counter() - t0
    bound = getattr(reader, "max_volume_bytes", None)
    try:
        read_nifti(path, bound()) if bound else read_nifti(path)
        read = "read"
    except VolumeReadError as exc:
        read = str(exc)
    out[path.name] = {"check": type(probe).__name__, "reason": getattr(probe, "reason", ""), "t_check": t_check,
                      "read": read}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the RSS of the
# pytest process that started this one (1.6 GB late in a full run), not this process's own peak.
out["maxrss_mb"] = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps(out))
"""


def test_gzip_bombs_are_refused_quickly_with_bounded_memory(tmp_path):
    """Two .nii.gz bombs named like volumes, checked and read in a fresh process: one with the run's header
    and 512 MiB of zeros behind it, one whose header promises 600 MiB. Both are refused by the check in
    well under a second and by the reader, and the process never holds more than a few hundred MB."""
    import json

    cfg_path = make_config(tmp_path, CONFIG)
    small = gzip_bomb(tmp_path / "rtsim_001_00005.nii.gz", (64, 64, 30), 512 << 20)
    large = gzip_bomb(tmp_path / "rtsim_001_00006.nii.gz", (1024, 1024, 300), 600 << 20)
    assert small.stat().st_size < 2 << 20 and large.stat().st_size < 2 << 20
    proc = subprocess.run([sys.executable, "-c", _BOMB_PROBE, str(cfg_path), str(small), str(large)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in (small.name, large.name):
        assert out[name]["check"] == "Refused", out[name]
        assert out[name]["t_check"] < 0.5, out[name]
        assert out[name]["read"] != "read", out[name]
    assert "decompresses to more than" in out[small.name]["reason"]
    assert "more than the bound" in out[large.name]["reason"]
    assert out["maxrss_mb"] < 400, out


def test_gzip_bomb_in_a_replay_costs_only_its_volume(tmp_path):
    """A recorded run of .nii.gz volumes where volume 5 is a gzip bomb: the replay refuses it with one
    warning (never decompressed past its header's promise) and processes every other volume."""
    cfg_path = make_config(tmp_path, CONFIG)
    folder = tmp_path / "recorded"
    from scanner_sim.spec import RunSpec
    from scanner_sim.synth import SyntheticRun

    spec = RunSpec.from_dict({"tr_s": 2.0, "n_volumes": N, "noise_pct": 1.0, "seed": 4})
    run = SyntheticRun(spec)
    folder.mkdir()
    for i in range(N):
        volume = nib.Nifti1Image(run.volume(i).astype(np.float32), run.affine)
        nib.save(volume, folder / f"rtsim_001_{i + 1:05d}.nii.gz")
    shape = run.volume(0).shape
    bomb = gzip_bomb(folder / "rtsim_001_00005.nii.gz", shape, 512 << 20, dtype=np.float32)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rtnf", "replay", str(cfg_path), str(folder),
                           "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = _table(tmp_path / "out")
    assert len(rows) == N - 2
    missing = [int(r["index"]) for r in rows if r["missing"] == "1"]
    assert missing == [2], missing  # acquisition 5 is kept volume 3 (index 2) after 2 dummies
    mentions = [line for line in proc.stderr.splitlines() if bomb.name in line and "WARNING" in line]
    assert len(mentions) == 1 and "decompresses to more than" in mentions[0], mentions
    assert time.perf_counter() - t0 < 120


# ------------------------------------------------------------------ 9: floods


def _counted(records: list[logging.LogRecord], first: str, more: str) -> tuple[int, int]:
    """(records about one flood, files they account for): individual lines count 1, summaries their N."""
    n_records = n_files = 0
    for r in records:
        text = r.getMessage()
        m = re.match(r"(\d+) more " + re.escape(more), text)
        if m:
            n_records, n_files = n_records + 1, n_files + int(m.group(1))
        elif first in text:
            n_records, n_files = n_records + 1, n_files + 1
    return n_records, n_files


def test_floods_of_foreign_files_are_aggregated(tmp_path, caplog):
    """2,000 files of another series and 2,000 junk files named like volumes in the export folder, watched
    live: fewer than 20 warning records in all, and the counts they give add up to 2,000 each."""
    export = tmp_path / "export"
    export.mkdir()
    tiny = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    first = export / "rtsim_007_00001.nii"
    nib.save(tiny, first)
    data = first.read_bytes()
    for i in range(2, 2001):
        (export / f"rtsim_007_{i:05d}.nii").write_bytes(data)
    rng = np.random.default_rng(0)
    for i in range(2000):
        (export / f"rtsim_001_{10000 + i:05d}.nii").write_bytes(rng.bytes(200))
    selection = {"scanner.series_number": 1, "scanner.filename_template": "rtsim_{series:03d}_{volume:05d}.nii"}
    cfg = load_config(make_config(tmp_path, {**CONFIG, **selection}, name="flood.toml"))
    reader = ExportReader(cfg.scanner, t_start=time.time(), accept_old=True)
    probes: list = []
    lock = threading.Lock()

    def on_ready(path: Path, t: float, probe) -> None:
        with lock:
            probes.append((probe, t))

    watcher = VolumeWatcher(export, reader.matches, reader.check, on_ready, stale_after_s=0.5)
    with caplog.at_level(logging.WARNING, logger="rtnf"):
        watcher.start()
        try:
            wait_until(lambda: len(probes) >= 2000 and len(watcher._stale) >= 2000, 60, interval_s=0.1)
        finally:
            watcher.stop()
        for probe, t in probes:
            assert reader.accept(probe, t) == []
        getattr(reader, "close", lambda: None)()  # the run's end: summaries still owed
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    series = _counted(records, "series 7 is not the configured series 1", "files of series 7 skipped")
    stale = _counted(records, "has stayed incomplete", "files stayed incomplete")
    assert series[1] == 2000 and stale[1] == 2000, (series, stale, [r.getMessage() for r in records][:30])
    assert len(records) < 20, [r.getMessage() for r in records]
    assert series[0] + stale[0] == len(records)
