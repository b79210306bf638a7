"""Watch the scanner's export folder and hand over complete files, once each.

Scanners write a volume over several writes, sometimes reopening the file,
sometimes under a temporary name renamed at the end. The watcher reacts to
every creation, write, close and rename (inotify through watchdog, or
polling for network shares that send no events) and hands a file over only
when the format's check says it is complete (for NIfTI: all the bytes its
header promises; for DICOM: the full pixel data). Each path is handed over at
most once.

A small housekeeping thread re-checks files that were seen incomplete (so a
last write whose event was lost still counts), reports once a file whose
size has not changed for ``stale_after_s`` without it becoming complete
(truncated, corrupt or foreign), and notices when the folder vanishes (an
unmounted network share) and comes back, then watches it again.

Hostile input: only regular files are judged (``os.stat`` + ``S_ISREG``; the
checks open with ``O_NONBLOCK``), so a FIFO named like a volume is set aside
with one warning instead of blocking the watcher forever; a file the check
refuses (a gzip bomb, see :func:`rtnf.scanner.nifti.judge`) is set aside too. Files
are judged outside the watcher's lock, and their size and mtime are recorded
after the check, as they are when handed over (a plain copy finishing during
the check is not a "duplicate export"). Per-file warnings are aggregated
when they flood (:class:`rtnf.scanner.export.RepeatedWarnings`).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from rtnf._checks import check_positive, check_value
from .export import RepeatedWarnings
from .filenames import AS_IS, FileNames
from .nifti import file_kind

log = logging.getLogger(__name__)

Check = Callable[[Path], Any]
OnReady = Callable[[Path, float, Any], None]


def file_signature(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one state of a file from another: (type, size, mtime_ns)."""
    return stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns


class VolumeWatcher(FileSystemEventHandler):
    """Hands complete files of a folder to a callback.

    Parameters
    ----------
    folder : Path
        The export folder (created if missing).
    matches : callable
        ``matches(path) -> bool``: whether a file name can belong to the run.
    check : callable
        ``check(path)`` returns a truthy probe when the file is complete, else
        a falsy value: None (incomplete: judged again when it changes), or an
        object with ``state == "refused"`` and a ``reason`` (never to be read:
        set aside with one warning). It must never raise, and should return
        quickly (it runs in the thread that receives file events).
    on_ready : callable
        ``on_ready(path, t_detected, probe)`` called once per complete file
        from a watcher thread; ``t_detected`` is ``time.time()`` when the file
        was found complete. It must return quickly (put into a queue).
    mode : {"inotify", "polling"}
        Kernel events, or periodic snapshots for network shares.
    poll_interval_s : float
        Time between snapshots in polling mode, in seconds.
    stale_after_s : float
        An incomplete file whose size stays the same this long is reported
        once and no longer checked (until it changes).
    """

    def __init__(
        self,
        folder: Path,
        matches: Callable[[Path], bool],
        check: Check,
        on_ready: OnReady,
        mode: str = "inotify",
        poll_interval_s: float = 0.05,
        stale_after_s: float = 5.0,
        names: FileNames = AS_IS,
    ) -> None:
        super().__init__()
        self.names = names
        self.folder = Path(folder)
        self.matches = matches
        self.check = check
        self.on_ready = on_ready
        self.mode = check_value(mode, ("inotify", "polling"), "mode")
        self.poll_interval_s = check_positive(poll_interval_s, "poll_interval_s")
        self.stale_after_s = check_positive(stale_after_s, "stale_after_s")
        self._handed: dict[Path, tuple[int, int, int]] = {}  # path -> (type, size, mtime_ns) when handed over
        self._rewritten: set[Path] = set()
        self._incomplete: dict[Path, tuple[int, float]] = {}  # path -> (size, since)
        self._stale: set[Path] = set()
        self._outside: set[Path] = set()  # symlinks out of the folder, refused and reported once
        self._busy: set[Path] = set()  # paths a thread is judging (outside the lock)
        self._again: set[Path] = set()  # paths with an event while judged: judge once more
        self._aside: dict[Path, tuple[int, int, int]] = {}  # set aside (not regular, refused) -> signature
        self._warned_aside: set[Path] = set()
        self.warnings = RepeatedWarnings(log)  # per-file warnings, aggregated when they flood
        self._lock = threading.Lock()  # event, scan and housekeeping threads all check files
        self._observer: Any = None
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start watching, then hand over complete files already in the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._inode = self.folder.stat().st_ino
        self._start_observer()
        self._scan()
        self._stop.clear()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="rtnf-watch-housekeeping", daemon=True)
        self._housekeeper.start()

    def stop(self) -> None:
        """Stop watching (idempotent); log the aggregated warnings still owed."""
        self._stop.set()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=5)
            self._housekeeper = None
        self._stop_observer()
        self.warnings.flush()

    def _start_observer(self) -> None:
        observer = PollingObserver(timeout=self.poll_interval_s) if self.mode == "polling" else Observer()
        observer.schedule(
            self,
            str(self.folder),
            recursive=False,
            event_filter=[FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent],
        )
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _scan(self) -> None:
        try:
            paths = sorted(self.folder.iterdir())
        except OSError:
            return
        for path in paths:
            self._consider(path)

    # ------------------------------------------------------------------ events

    def on_any_event(self, event: FileSystemEvent) -> None:  # noqa: D102 (watchdog callback)
        if event.is_directory:
            return
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        self._consider(Path(path if isinstance(path, str) else path.decode()))

    def _consider(self, path: Path) -> None:
        """Judge ``path`` and hand it over if complete; never while holding the lock.

        One thread at a time judges a path; an event for a path being judged
        makes that thread judge it once more when it is done (the file
        changed meanwhile). Only regular files are opened: anything else
        named like a volume (a FIFO would block the reader forever) is set
        aside with one warning, as is a file the check refuses.
        """
        if not self.matches(path) or not self._inside(path):
            return
        with self._lock:
            if path in self._handed:
                handed = self._handed[path]
            elif path in self._busy:
                self._again.add(path)
                return
            else:
                handed = None
                self._busy.add(path)
        if handed is not None:
            self._note_rewrite(path, handed)
            return
        try:
            while True:
                state, signature, probe, reason = self._judge(path)
                with self._lock:
                    if path in self._again and state != "complete":
                        self._again.discard(path)
                        continue  # written to while judged: judge the new state
                    self._again.discard(path)
                    self._busy.discard(path)
                    ready = self._record(path, state, signature, probe, reason)
                break
        except BaseException:
            with self._lock:
                self._busy.discard(path)
                self._again.discard(path)
            raise
        if ready is not None:
            log.debug("complete: %s", path.name)
            self.on_ready(path, ready, probe)

    def _judge(self, path: Path) -> tuple[str, Any, Any, str]:
        """(state, signature, probe, reason) of a file, without the lock.

        state: "gone", "aside" (not to be read), "changing" (written to
        during the check), "incomplete" or "complete". The signature (type,
        size, mtime) is taken after the check, so a file completed during
        the check is recorded as it is when handed over.
        """
        try:
            before = os.stat(path)
        except OSError:
            return "gone", None, None, ""
        if not stat.S_ISREG(before.st_mode):
            return "aside", file_signature(before), None, f"{file_kind(before.st_mode)}, not a regular file; never read"
        signature = file_signature(before)
        if signature == self._aside.get(path):
            return "aside", signature, None, ""  # set aside before and unchanged: not judged again
        probe = self.check(path)
        try:
            after = os.stat(path)
        except OSError:
            return "gone", None, None, ""
        signature = file_signature(after)
        reason = getattr(probe, "reason", "") if not probe else ""
        if not probe and getattr(probe, "state", None) == "refused":
            return "aside", signature, None, reason or "refused by the format check"
        if file_signature(before) != signature:
            return "changing", signature, None, ""
        return ("complete" if probe else "incomplete"), signature, probe, ""

    def _record(self, path: Path, state: str, signature: Any, probe: Any, reason: str) -> float | None:
        """Book-keep a judgement (lock held); return ``t_detected`` when the file is to be handed over."""
        if state == "gone":
            # Gone for now: a temporary name, or a share that vanished and
            # may come back. Housekeeping looks again until it is stale.
            self._incomplete.setdefault(path, (-1, time.monotonic()))
            return None
        if state == "aside":
            self._incomplete.pop(path, None)
            if reason and path not in self._warned_aside:
                self._warned_aside.add(path)
                self.warnings.warn("aside", f"{self.names.label(path.name)} set aside: {reason}", "files set aside (not read)",
                                   first=10)
            self._aside[path] = signature
            return None
        self._aside.pop(path, None)
        if state in ("incomplete", "changing"):
            size = signature[1]
            previous = self._incomplete.get(path)
            if previous is None or previous[0] != size:
                self._incomplete[path] = (size, time.monotonic())
                self._stale.discard(path)
            return None
        self._handed[path] = signature
        self._incomplete.pop(path, None)
        self._stale.discard(path)
        return time.time()

    def _inside(self, path: Path) -> bool:
        """Whether ``path`` (symlinks resolved) lies inside the export folder; logs a refusal once."""
        try:
            real = path.resolve()
            inside = real.is_relative_to(self.folder.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            real, inside = path, False
        if not inside and path not in self._outside:
            self._outside.add(path)
            self.warnings.warn("outside", f"{self.names.label(path.name)} resolves to {self.names.redact(str(real), real)}, outside the export folder {self.folder}; "
                               "refused (never read)", "files resolving outside the export folder refused", first=10)
        return inside

    def _note_rewrite(self, path: Path, handed: Any) -> None:
        """Report once a file written again after it was handed over (a duplicate export)."""
        if path in self._rewritten:
            return
        try:
            signature = file_signature(os.stat(path))
        except OSError:
            return
        if signature != handed:
            with self._lock:
                if path in self._rewritten:
                    return
                self._rewritten.add(path)
            log.warning("%s was written again after it was handed over (duplicate export); it is not handed over again",
                        self.names.label(path.name))

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        period = max(0.1, min(0.5, self.stale_after_s / 4))
        present = True
        while not self._stop.wait(period):
            try:
                inode = self.folder.stat().st_ino if self.folder.is_dir() else None
            except OSError:
                inode = None
            if inode is None:
                if present:
                    log.warning("export folder %s vanished (unmounted share?); waiting for it to return", self.folder)
                    present = False
                continue
            if not present or inode != self._inode:
                self._inode = inode
                log.warning("export folder %s is back; watching it again", self.folder)
                present = True
                self._stop_observer()
                try:
                    self._start_observer()
                except OSError as exc:
                    log.warning("cannot watch %s yet: %s", self.folder, exc)
                    present = False
                    continue
                self._scan()
            self._recheck()
            self.warnings.flush(due_only=True)

    def _recheck(self) -> None:
        now = time.monotonic()
        with self._lock:
            pending = [p for p in self._incomplete if p not in self._stale]
        for path in pending:
            self._consider(path)
            with self._lock:
                entry = self._incomplete.get(path)
                if entry is not None and now - entry[1] >= self.stale_after_s and path not in self._stale:
                    self._stale.add(path)
                    self.warnings.warn(
                        "stale",
                        f"{self.names.label(path.name)} has stayed incomplete for {now - entry[1]:.0f} s at {entry[0]} bytes "
                        "(truncated, corrupt or not a volume); skipped unless it changes",
                        "files stayed incomplete and were skipped (truncated, corrupt or not a volume)",
                    )
