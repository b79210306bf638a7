"""The watcher hands over every file once, complete, while the simulator writes it in pieces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rtnf.scanner.nifti import IncompleteFileError, is_complete, read_nifti
from rtnf.scanner.watcher import VolumeWatcher


def _nifti_watcher(folder: Path, on_ready, **kwargs) -> VolumeWatcher:
    def matches(p: Path) -> bool:
        return not p.name.startswith(".") and p.name.endswith(".nii")

    return VolumeWatcher(folder, matches, lambda p: is_complete(p) or None, on_ready, **kwargs)
from scanner_sim.spec import RunSpec
from scanner_sim.synth import SyntheticRun
from scanner_sim.writer import ScannerWriter

from rtnf.apps.demo import read_tsv
from tests.helpers import wait_until


def _spec(n: int) -> RunSpec:
    return RunSpec.from_dict({"tr_s": 1.0, "n_volumes": n, "shape": [32, 32, 20], "voxel_mm": 6.0, "noise_pct": 1.0})


def _watch_while_writing(tmp_path: Path, n: int, mode: str, watch: str, speed: float) -> tuple[dict, list]:
    export, truth = tmp_path / "export", tmp_path / "truth"
    handed: dict[str, tuple[str, int]] = {}
    order: list[str] = []

    def on_ready(path: Path, t_detected: float, probe) -> None:
        # Read at once, as the pipeline would: a partial file would show here.
        data = path.read_bytes()
        handed.setdefault(path.name, (hashlib.sha256(data).hexdigest(), len(data)))
        order.append(path.name)

    spec = _spec(n)
    watcher = _nifti_watcher(export, on_ready, mode=watch, poll_interval_s=0.02)
    watcher.start()
    try:
        writer = ScannerWriter(export, spec, mode=mode, n_chunks=4, chunk_delay_s=0.005, speed=speed, recon_delay_s=0.0)
        writer.write_run(SyntheticRun(spec), truth)
        wait_until(lambda: len(order) >= n, 60)  # the backlog of a loaded machine (the test asserts the count)
    finally:
        watcher.stop()
    return handed, order, read_tsv(truth / "files.tsv")


@pytest.mark.parametrize("mode, n", [("reopen", 500), ("chunked", 200)])
def test_never_hands_over_a_partial_file(tmp_path, mode, n):
    """500 files closed several times while partial (reopen), 200 written in one open: no partial read."""
    handed, order, files = _watch_while_writing(tmp_path, n, mode, "inotify", speed=40.0 if n > 200 else 25.0)
    assert len(files) == n
    assert len(order) == n, f"{n - len(order)} files never handed over"
    assert len(set(order)) == n, "a file was handed over twice"
    for row in files:
        name = Path(row["path"]).name
        sha, size = handed[name]
        assert size == int(row["n_bytes"]), f"{name} handed over with {size} of {row['n_bytes']} bytes"
        assert sha == row["sha256"], f"{name} handed over with other content than written"


def test_polling_mode_and_atomic_renames(tmp_path):
    handed, order, files = _watch_while_writing(tmp_path, 30, "atomic", "polling", speed=10.0)
    assert sorted(order) == sorted(Path(r["path"]).name for r in files)
    assert all(handed[Path(r["path"]).name][0] == r["sha256"] for r in files)


def test_files_present_before_start_are_handed_over(tmp_path):
    spec = _spec(3)
    ScannerWriter(tmp_path, spec, speed=100.0, recon_delay_s=0.0).write_run(SyntheticRun(spec), tmp_path / "truth")
    got: list[str] = []
    watcher = _nifti_watcher(tmp_path, lambda p, t, probe: got.append(p.name))
    watcher.start()
    watcher.stop()
    assert sorted(got) == [spec.filename(i) for i in range(3)]


def test_truncated_file_is_incomplete_and_reader_says_so(tmp_path):
    spec = _spec(1)
    ScannerWriter(tmp_path, spec, speed=100.0, recon_delay_s=0.0).write_run(SyntheticRun(spec), tmp_path / "truth")
    path = tmp_path / spec.filename(0)
    assert is_complete(path)
    full = path.read_bytes()
    cut = tmp_path / "cut_00001.nii"
    cut.write_bytes(full[: len(full) // 2])
    assert not is_complete(cut)
    with pytest.raises(IncompleteFileError, match="cut_00001.nii"):
        read_nifti(cut)
    foreign = tmp_path / "foreign_00002.nii"
    foreign.write_bytes(b"not a nifti file at all" * 100)
    assert not is_complete(foreign)
