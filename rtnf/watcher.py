"""Watch the scanner's export folder and hand over complete files, once each.

Scanners write a volume over several writes, sometimes reopening the file,
sometimes under a temporary name renamed at the end. The watcher reacts to
every creation, write, close and rename (inotify through watchdog, or
polling for network shares that send no events) and hands a file over only
when the format's completeness check passes: for NIfTI, when the file holds
all the bytes its header promises. Each path is handed over at most once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

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

OnReady = Callable[[Path, float], None]


class VolumeWatcher(FileSystemEventHandler):
    """Hands complete files of a folder to a callback.

    Parameters
    ----------
    folder : Path
        The export folder (created if missing).
    filename_regex : str
        Only file names this regular expression finds are considered;
        hidden files (starting with '.') never are.
    is_complete : callable
        ``is_complete(path) -> bool``; must never raise.
    on_ready : callable
        ``on_ready(path, t_detected)`` called once per complete file, from
        the watcher's thread; ``t_detected`` is ``time.time()`` when the file
        was found complete. It must return quickly (put into a queue).
    mode : {"inotify", "polling"}
        Kernel events, or periodic snapshots for network shares.
    poll_interval_s : float
        Time between snapshots in polling mode, in seconds.
    """

    def __init__(
        self,
        folder: Path,
        filename_regex: str,
        is_complete: Callable[[Path], bool],
        on_ready: OnReady,
        mode: str = "inotify",
        poll_interval_s: float = 0.05,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.pattern = re.compile(filename_regex)
        self.is_complete = is_complete
        self.on_ready = on_ready
        self.mode = check_value(mode, ("inotify", "polling"), "mode")
        self.poll_interval_s = check_positive(poll_interval_s, "poll_interval_s")
        self._handed: set[Path] = set()
        self._lock = threading.Lock()  # the initial scan and the observer thread both check files
        self._observer: Observer | PollingObserver | None = None

    def start(self) -> None:
        """Start watching, then hand over complete files already in the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.mode == "polling":
            observer = PollingObserver(timeout=self.poll_interval_s)
        else:
            observer = Observer()
        observer.schedule(
            self,
            str(self.folder),
            recursive=False,
            event_filter=[FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent],
        )
        observer.start()
        self._observer = observer
        for path in sorted(self.folder.iterdir()):
            self._consider(path)

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def on_any_event(self, event: FileSystemEvent) -> None:  # noqa: D102 (watchdog callback)
        if event.is_directory:
            return
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        self._consider(Path(path if isinstance(path, str) else path.decode()))

    def _consider(self, path: Path) -> None:
        name = path.name
        if name.startswith(".") or not self.pattern.search(name):
            return
        with self._lock:
            if path in self._handed or not path.is_file():
                return
            if not self.is_complete(path):
                return
            t_detected = time.time()
            self._handed.add(path)
        log.debug("complete: %s", name)
        self.on_ready(path, t_detected)
