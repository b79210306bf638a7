"""A volume file written again while it waited to be read (a duplicate export truncates and rewrites it) is read
again once it settles, not recorded as missing.

Found by the soak (``rtnf bench soak``) on a loaded machine: the simulator's duplicate of volume 64 was rewritten
0.125 s after its first copy, the run read it mid-rewrite ("incomplete or truncated NIfTI file") and recorded the
volume missing though a complete copy was on disk a few milliseconds later.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from rtnf.apps.demo import read_tsv
from rtnf.config import load_config
from rtnf.run.session import END_OF_SOURCE, run_session
from rtnf.scanner.export import Arrival
from rtnf.scanner.nifti import VolumeReadError, read_nifti
from rtnf.scanner.rewrite import read_rewritten, written_after
from tests.helpers import make_config, pattern, synthetic_run_4d

N = 12
REWRITTEN = 5  # the volume whose file is truncated before it is read, and rewritten shortly after
CORRUPT = 8  # a volume whose file is cut short and stays so: missing, as before
TR = 0.5
CONFIG = {"session.subject": "rewrite", "session.task": "nf", "scanner.tr_s": TR, "scanner.n_volumes": N,
          "scanner.dummy_volumes": 0, "protocol.pattern": pattern(rest=3, regulate=3), "output.dir": "outputs",
          "output.save_volumes": False}


def _volume_files(source: Path, folder: Path) -> list[Path]:
    img = nib.load(source)
    paths = []
    for i in range(img.shape[3]):
        path = folder / f"vol_{i + 1:03d}.nii"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., i], dtype=np.float32), img.affine), path)
        paths.append(path)
    return paths


class _Feeder:
    """Hands over one complete volume file per TR, as the watcher would; two of them go wrong after hand-over."""

    def __init__(self, paths: list[Path], put) -> None:
        self.paths, self.put = paths, put
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()
        self.rewriters: list[threading.Thread] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for t in self.rewriters:
            t.join(10)

    def _run(self) -> None:
        t0 = time.time()
        for i, path in enumerate(self.paths):
            if self._stop.wait(max(0.0, t0 + i * TR - time.time())):
                break
            t_detected = time.time()
            if i in (REWRITTEN, CORRUPT):
                time.sleep(0.01)  # the file changes after it was judged complete (mtime after t_detected)
                payload = path.read_bytes()
                path.write_bytes(payload[: len(payload) // 3])  # truncated, as a rewrite in progress
                if i == REWRITTEN:  # the rest comes in two chunks, 0.1 s and 0.2 s later
                    rewriter = threading.Thread(target=_rewrite, args=(path, payload), daemon=True)
                    self.rewriters.append(rewriter)
                    rewriter.start()
            self.put(Arrival(i + 1, [path], t_detected, None, lambda p=path: read_nifti(p)))
        self.put(END_OF_SOURCE)


def _rewrite(path: Path, payload: bytes) -> None:
    time.sleep(0.1)
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(payload[len(payload) // 3 : 2 * len(payload) // 3])
    time.sleep(0.1)
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(payload[2 * len(payload) // 3 :])


def test_a_volume_rewritten_after_hand_over_is_read_again_and_a_corrupt_one_is_missing(tmp_path, caplog):
    source = tmp_path / "run.nii"
    synthetic_run_4d(source, N)
    (tmp_path / "files").mkdir()
    paths = _volume_files(source, tmp_path / "files")
    expected = read_nifti(paths[REWRITTEN]).data
    cfg_path = make_config(tmp_path, CONFIG)
    cfg = load_config(cfg_path, {"publish.address": f"inproc://rewrite-{uuid.uuid4().hex}"})
    with caplog.at_level(logging.INFO, logger="rtnf"):
        result = run_session(cfg, cfg_path.read_text(), feeder_factory=lambda export, put: _Feeder(paths, put))
    assert result.status == "ended"
    rows = {int(r["index"]): r for r in read_tsv(result.timeseries)}
    assert rows[REWRITTEN]["missing"] == "0", rows[REWRITTEN]
    assert rows[CORRUPT]["missing"] == "1" and result.n_missing == 1
    np.testing.assert_array_equal(read_nifti(paths[REWRITTEN]).data, expected)  # the copy read is the whole one
    messages = [r.getMessage() for r in caplog.records]
    assert any("written again while it waited" in m and f"volume {REWRITTEN + 1} of" in m for m in messages), messages


def test_read_rewritten_reads_only_files_changed_after_hand_over(tmp_path):
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
    t_after_write = time.time() + 0.01
    assert not written_after([path], t_after_write)
    assert read_rewritten(Arrival(1, [path], t_after_write, None, lambda: read_nifti(path)), limit_s=1.0) is None
    assert written_after([path], time.time() - 60) and not written_after([tmp_path / "gone.nii"], 0.0)
    # changed after hand-over and now settled: read again; still unreadable: the reader's error
    volume = read_rewritten(Arrival(1, [path], time.time() - 60, None, lambda: read_nifti(path)), limit_s=1.0)
    assert volume is not None and volume.data.shape == (4, 4, 4)
    path.write_bytes(path.read_bytes()[:200])
    try:
        read_rewritten(Arrival(1, [path], time.time() - 60, None, lambda: read_nifti(path)), limit_s=1.0)
    except VolumeReadError:
        pass
    else:
        raise AssertionError("a cut-short file read without error")


def test_read_rewritten_waits_no_longer_than_its_limit_for_a_file_that_keeps_changing(tmp_path):
    path = tmp_path / "v.nii"
    path.write_bytes(b"x")
    stop = threading.Event()

    def grow() -> None:
        while not stop.is_set():
            with open(path, "ab") as f:
                f.write(b"x")
            time.sleep(0.005)

    thread = threading.Thread(target=grow, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        read_rewritten(Arrival(1, [path], time.time() - 60, None, lambda: read_nifti(path)), limit_s=0.3)
    except VolumeReadError:
        pass
    finally:
        stop.set()
        thread.join(5)
    # bounded by its limit (plus one read), never by the file: generous for a loaded machine, far below forever
    assert time.monotonic() - t0 < 5.0
