"""Hostile tests of the reread of a volume whose files were written again after hand-over (``rtnf.scanner.rewrite``).

Each test builds the file situation a scanner, copy tool or network share can produce after the watcher handed a
volume over, and checks what ``read_rewritten`` does with it: stay within its bound, read only what the run may
read, and fail as before (``VolumeReadError``, the volume recorded missing) when there is nothing to read again.
Three defects found this way are fixed (an unbounded loop while a file kept changing, a future mtime taken for a
rewrite, a symlink out of the folder followed); their tests failed before the fix.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtnf.scanner.export import Arrival
from rtnf.scanner.nifti import VolumeReadError, read_nifti
from rtnf.scanner.rewrite import read_rewritten
from rtnf.scanner.volume import Volume

LIMIT_S = 0.3
"""The reread's bound in these tests (s)."""
JOIN_S = 3.0
"""How long a test waits for a reread to return (s): far above LIMIT_S plus a read on a loaded machine."""


def _save(path: Path, value: float, shape: tuple[int, int, int] = (4, 4, 4)) -> bytes:
    nib.save(nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4)), path)
    return path.read_bytes()


def _reread(arrival: Arrival, limit_s: float = LIMIT_S) -> tuple[bool, float, object]:
    """Run ``read_rewritten`` in a thread; (returned within JOIN_S, seconds taken, its result or exception)."""
    out: dict[str, object] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            out["result"] = read_rewritten(arrival, limit_s=limit_s)
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever came out
            out["result"] = exc
        out["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(JOIN_S)
    return not thread.is_alive(), out.get("seconds", time.monotonic() - t0), out.get("result")


class _Toucher:
    """Changes a file's mtime every ``period_s`` (a copy tool or scanner that keeps touching the file)."""

    def __init__(self, path: Path, period_s: float = 0.002) -> None:
        self.path, self.period_s = path, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.period_s):
            n += 1
            try:
                os.utime(self.path, ns=(time.time_ns(), time.time_ns() + n))  # always a new mtime
            except OSError:
                pass

    def __enter__(self) -> _Toucher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(JOIN_S)


def test_a_file_that_changes_during_every_read_is_given_up_within_the_bound(tmp_path):
    path = tmp_path / "v.nii"
    path.write_bytes(_save(path, 1.0)[:200])  # cut short, as a rewrite in progress

    def slow_load() -> Volume:
        time.sleep(0.01)  # a read on a loaded machine or a network share: longer than the toucher's period
        return read_nifti(path)

    with _Toucher(path):
        returned, seconds, result = _reread(Arrival(1, [path], time.time() - 60, None, slow_load))
    # the bound is LIMIT_S (plus one read); JOIN_S is generous for any load, far below "until the file stops"
    assert returned, f"read_rewritten still looping {JOIN_S} s after a {LIMIT_S} s limit"
    assert isinstance(result, VolumeReadError) and seconds < JOIN_S


def test_a_corrupt_file_stamped_in_the_future_but_never_rewritten_is_not_waited_for(tmp_path):
    path = tmp_path / "v.nii"
    path.write_bytes(_save(path, 1.0)[:200])
    future = time.time() + 3600  # the file server's clock is an hour ahead
    os.utime(path, (future, future))
    t_detected = time.time()  # handed over after its last (and only) write
    returned, seconds, result = _reread(Arrival(1, [path], t_detected, None, lambda: read_nifti(path)))
    assert returned
    assert result is None, f"a file unchanged since hand-over was waited for ({seconds:.2f} s) and read again: {result!r}"


@pytest.mark.parametrize("replacement", ["directory", "fifo", "gone"])
def test_a_file_replaced_by_a_non_file_during_the_wait_is_a_read_error_not_a_hang(tmp_path, replacement):
    path = tmp_path / "v.nii"
    path.write_bytes(_save(path, 1.0)[:200])
    t_detected = time.time() - 60  # handed over before the rewrite below

    def replace() -> None:
        time.sleep(0.05)
        path.unlink()
        if replacement == "directory":
            path.mkdir()
        elif replacement == "fifo":
            os.mkfifo(path)  # opening it for reading without O_NONBLOCK would block for ever

    if not hasattr(os, "mkfifo") and replacement == "fifo":
        pytest.skip("no FIFOs on this platform")
    swapper = threading.Thread(target=replace, daemon=True)
    swapper.start()
    returned, seconds, result = _reread(Arrival(1, [path], t_detected, None, lambda: read_nifti(path)))
    swapper.join(JOIN_S)
    assert returned, f"read_rewritten blocked on a {replacement} in the volume's place"
    # gone after a change: no complete copy came; either way the volume is missing, never an escaping OSError
    assert result is None or isinstance(result, VolumeReadError), repr(result)


def test_a_file_swapped_for_a_symlink_outside_the_export_folder_is_not_read(tmp_path):
    export, outside = tmp_path / "export", tmp_path / "elsewhere"
    export.mkdir()
    outside.mkdir()
    path = export / "v.nii"
    path.write_bytes(_save(path, 1.0)[:200])  # handed over, read midway: truncated
    t_detected = time.time() - 60
    _save(outside / "other.nii", 7.0)  # a complete NIfTI that is not this volume and not in the export folder
    path.unlink()
    path.symlink_to(outside / "other.nii")
    returned, _, result = _reread(Arrival(1, [path], t_detected, None, lambda: read_nifti(path)))
    assert returned
    assert not isinstance(result, Volume), "a file outside the export folder was read as the volume"


def test_a_slice_series_is_read_again_only_once_every_slice_has_settled(tmp_path):
    # several paths: one slice rewritten in two chunks; the reread waits for the last chunk, reads the whole set
    paths = [tmp_path / f"s{i}.nii" for i in range(3)]
    payloads = [_save(p, float(i)) for i, p in enumerate(paths)]
    t_detected = time.time() - 60
    paths[1].write_bytes(payloads[1][:200])

    def finish() -> None:
        time.sleep(0.1)
        with open(paths[1], "ab") as f:
            f.write(payloads[1][200:300])
        time.sleep(0.1)
        with open(paths[1], "ab") as f:
            f.write(payloads[1][300:])

    def load_all() -> Volume:
        vols = [read_nifti(p) for p in paths]
        return Volume(data=np.stack([v.data[..., 0] for v in vols], axis=2), affine=vols[0].affine,
                      t_acquired=None, path=paths[0])

    writer = threading.Thread(target=finish, daemon=True)
    writer.start()
    returned, _, result = _reread(Arrival(1, paths, t_detected, None, load_all), limit_s=1.0)
    writer.join(JOIN_S)
    assert returned and isinstance(result, Volume), repr(result)
    np.testing.assert_array_equal(result.data[0, 0, :], [0.0, 1.0, 2.0])


def test_an_error_other_than_a_read_error_from_the_reread_is_not_swallowed_as_missing(tmp_path):
    # a loader's own failure (a bug, a config mismatch) is not a truncated file: it comes out unchanged
    path = tmp_path / "v.nii"
    _save(path, 1.0)
    calls: list[int] = []

    def load() -> Volume:
        calls.append(1)
        raise RuntimeError("loader bug")

    returned, _, result = _reread(Arrival(1, [path], time.time() - 60, None, load))
    assert returned and isinstance(result, RuntimeError) and len(calls) == 1
