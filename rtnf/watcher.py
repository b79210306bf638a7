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
"""

from __future__ import annotations

import logging
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

from ._checks import check_positive, check_value

log = logging.getLogger(__name__)

Check = Callable[[Path], Any]
OnReady = Callable[[Path, float, Any], None]


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
        None; it must never raise.
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
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.matches = matches
        self.check = check
        self.on_ready = on_ready
        self.mode = check_value(mode, ("inotify", "polling"), "mode")
        self.poll_interval_s = check_positive(poll_interval_s, "poll_interval_s")
        self.stale_after_s = check_positive(stale_after_s, "stale_after_s")
        self._handed: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) when handed over
        self._rewritten: set[Path] = set()
        self._incomplete: dict[Path, tuple[int, float]] = {}  # path -> (size, since)
        self._stale: set[Path] = set()
        self._outside: set[Path] = set()  # symlinks out of the folder, refused and reported once
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
        """Stop watching (idempotent)."""
        self._stop.set()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=5)
            self._housekeeper = None
        self._stop_observer()

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
        if not self.matches(path) or not self._inside(path):
            return
        with self._lock:
            if path in self._handed:
                self._note_rewrite(path)
                return
            try:
                stat = path.stat()
                size = stat.st_size
            except OSError:
                # Gone for now: a temporary name, or a share that vanished and
                # may come back. Housekeeping looks again until it is stale.
                self._incomplete.setdefault(path, (-1, time.monotonic()))
                return
            probe = self.check(path)
            if not probe:
                previous = self._incomplete.get(path)
                if previous is None or previous[0] != size:
                    self._incomplete[path] = (size, time.monotonic())
                    self._stale.discard(path)
                return
            t_detected = time.time()
            self._handed[path] = (size, stat.st_mtime_ns)
            self._incomplete.pop(path, None)
            self._stale.discard(path)
        log.debug("complete: %s", path.name)
        self.on_ready(path, t_detected, probe)

    def _inside(self, path: Path) -> bool:
        """Whether ``path`` (symlinks resolved) lies inside the export folder; logs a refusal once."""
        try:
            real = path.resolve()
            inside = real.is_relative_to(self.folder.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            real, inside = path, False
        if not inside and path not in self._outside:
            self._outside.add(path)
            log.warning("%s resolves to %s, outside the export folder %s; refused (never read)",
                        path.name, real, self.folder)
        return inside

    def _note_rewrite(self, path: Path) -> None:
        """Report once a file written again after it was handed over (a duplicate export)."""
        if path in self._rewritten:
            return
        try:
            stat = path.stat()
        except OSError:
            return
        if (stat.st_size, stat.st_mtime_ns) != self._handed[path]:
            self._rewritten.add(path)
            log.warning("%s was written again after it was read (duplicate export); the new copy is ignored", path.name)

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
                    log.warning(
                        "%s has stayed incomplete for %.0f s at %d bytes (truncated, corrupt or not a volume); "
                        "skipped unless it changes", path.name, now - entry[1], entry[0],
                    )
