"""An exclusive lock on a run's outputs, held from the run's start to its end.

Everything that writes a run's outputs (``rtnf run``, ``--resume``,
``--overwrite``, ``rtnf replay``, ``rtnf session``) takes the lock of the
run's BIDS prefix first: ``<func>/.<prefix>.lock``, a small JSON file with
the holder's PID, host and start time, created with ``O_EXCL``. A second
writer is refused with :class:`RunLockedError` (exit code 2 in the commands)
naming the holder, before it touches any output. A lock left by a process
that is gone (same host) is stale: it is reported with a warning and taken.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from .record import OutputExistsError

log = logging.getLogger(__name__)


class RunLockedError(OutputExistsError):
    """Another process holds the lock of the run's outputs (exit code 2 in the commands)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _process_start(pid: int) -> float | None:
    """UNIX time the process ``pid`` started (Linux ``/proc``), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: start time after boot, in clock ticks
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


class RunLock:
    """The lock file ``path``; :meth:`acquire` takes it, :meth:`release` gives it back.

    Parameters
    ----------
    path : Path
        The lock file (its folder is created).
    what : str
        What the lock protects, for messages (the run's outputs).
    """

    def __init__(self, path: Path, what: str = "") -> None:
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self._held = False

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`RunLockedError` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:  # being written by its creator this instant, or empty: look again
                    time.sleep(0.05)
                    holder = self._read()
                if not self._stale(holder):
                    raise RunLockedError(
                        f"the outputs of this run are in use by another rtnf process "
                        f"({_describe(holder or {})}): {self.what}. Nothing was written. "
                        f"If that process is really gone, remove {self.path}."
                    ) from None
                log.warning("taking a stale lock of %s: its holder (%s) is gone", self.what, _describe(holder or {}))
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, json.dumps(me).encode())
            finally:
                os.close(fd)
            self._held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: another process keeps taking it")

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict | None) -> bool:
        if holder == {}:  # removed meanwhile
            return True
        if holder is None:  # unreadable after a second look: left half-written by a crash
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 1e9
            return age > 5.0
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process cannot be checked: never taken
        pid = holder.get("pid")
        if not (isinstance(pid, int) and _pid_alive(pid)):
            return True
        # The PID taken again by a later process (after a power cut and reboot, say): the holder is gone.
        started, began = holder.get("started"), _process_start(pid)
        return isinstance(started, (int, float)) and began is not None and began > started + 2.0

    def release(self) -> None:
        """Give the lock back (idempotent); only the holder removes the file."""
        if not self._held:
            return
        self._held = False
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError) as exc:
            if getattr(exc, "errno", None) != errno.ENOENT:
                log.warning("could not remove the lock %s: %s", self.path, exc)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(cfg) -> RunLock:
    """The lock of a run's outputs: ``<func>/.<bids prefix>.lock``."""
    from .record import bids_prefix, func_dir

    folder = func_dir(cfg)
    prefix = bids_prefix(cfg)
    return RunLock(folder / f".{prefix}.lock", f"{folder / prefix}_*")
