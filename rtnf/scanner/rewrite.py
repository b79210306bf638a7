"""A volume's files written again after they were handed over: wait until they settle, read them once more.

A scanner or copy tool that exports a volume twice truncates and rewrites its file (the watcher reports the
duplicate and hands the file over only once). When the run reads the file during that rewrite -- a rewrite soon
after the first copy, a loaded machine -- it sees a truncated file; the complete copy is on disk moments later.
Only files modified after their hand-over are read again, so a file that was corrupt from the start costs nothing
more than before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from .export import Arrival
from .nifti import VolumeReadError
from .volume import Volume
from .watcher import file_signature

SETTLE_S = 0.02
"""Files unchanged for this long (s) count as written."""


def written_after(paths: Sequence[Path], t: float) -> bool:
    """Whether any of ``paths`` was modified after ``t`` (s, epoch) and not in the future.

    A file that is gone counts as not; so does one stamped ahead of this machine's clock (a share whose clock
    runs ahead stamps every file so: it would make every corrupt file wait).
    """
    now = time.time()
    for path in paths:
        try:
            if t < os.stat(path).st_mtime <= now:
                return True
        except OSError:
            continue
    return False


def _outside_its_folder(path: Path) -> bool:
    """Whether ``path`` is a symlink that resolves outside its folder (the watcher never reads such files)."""
    try:
        return path.is_symlink() and not path.resolve().is_relative_to(path.parent.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return True


def _signatures(paths: Sequence[Path]) -> list[tuple[int, int, int] | None]:
    """Each path's :func:`~rtnf.scanner.watcher.file_signature`, None for one that cannot be stat'ed."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            out.append(file_signature(os.stat(path)))
        except OSError:
            out.append(None)
    return out


def wait_settled(paths: Sequence[Path], limit_s: float, settle_s: float = SETTLE_S) -> bool:
    """Wait until ``paths`` stay unchanged for ``settle_s`` seconds; False when ``limit_s`` seconds pass first."""
    deadline = time.monotonic() + limit_s
    before = _signatures(paths)
    while True:
        time.sleep(settle_s)
        now = _signatures(paths)
        if now == before:
            return True
        if time.monotonic() >= deadline:
            return False
        before = now


def read_rewritten(arrival: Arrival, limit_s: float) -> Volume | None:
    """Read ``arrival`` again when its files were modified after it was handed over.

    Read once the files settle, and again after each further change (a rewrite may pause between its
    chunks), until the read succeeds or ``limit_s`` seconds pass.

    Parameters
    ----------
    arrival : Arrival
        A volume whose read failed.
    limit_s : float
        Longest time (s) spent waiting for a readable copy.

    Returns
    -------
    Volume or None
        The volume read again; None when no file changed after ``arrival.t_detected`` (nothing to read again)
        or a file is now a symlink out of its folder.

    Raises
    ------
    VolumeReadError
        No readable copy within ``limit_s``.
    """
    if not written_after(arrival.paths, arrival.t_detected) or any(map(_outside_its_folder, arrival.paths)):
        return None
    deadline = time.monotonic() + limit_s
    while True:
        wait_settled(arrival.paths, max(0.0, deadline - time.monotonic()))
        seen = _signatures(arrival.paths)
        try:
            return arrival.load()
        except VolumeReadError:
            while _signatures(arrival.paths) == seen and time.monotonic() < deadline:
                time.sleep(SETTLE_S)  # the rest of the rewrite, if it comes
            if time.monotonic() >= deadline or _signatures(arrival.paths) == seen:
                raise
