"""The study's state on disk, crash-safe: one file written atomically, and an append-only journal.

``<state_dir>/study.json`` is written once by ``rtnf study init`` (the
allocation of participants to arm codes, the blinding key's SHA-256, the
study file's path) through a temporary file, ``fsync`` and ``rename``: it is
either absent or whole. ``<state_dir>/journal.jsonl`` gets one line per event
(a run started, a run ended, the study unblinded), each appended with
``O_APPEND`` and ``fsync``ed before the run goes on: after a crash (power,
``kill -9``) the journal says which run was under way, and ``rtnf study next``
resumes it. A line cut short by the crash is skipped when read. The state
holds arm codes only, never the arms.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtnf.config import ConfigError

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
JOURNAL = "journal.jsonl"


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StudyRecord:
    """What ``rtnf study init`` fixed: the allocation (codes only) and the key's hash."""

    name: str
    allocation: dict[str, str]  # participant -> arm code
    key_sha256: str
    created: str


class StudyState:
    """The state folder of one study.

    Parameters
    ----------
    folder : Path
        ``study.state_dir``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def journal_path(self) -> Path:
        """The journal's path."""
        return self.folder / JOURNAL

    def exists(self) -> bool:
        """Whether ``rtnf study init`` has made this state."""
        return (self.folder / STUDY_FILE).is_file()

    def create(self, record: StudyRecord) -> None:
        """Write the study record and an empty journal (refused when the state exists)."""
        if self.exists():
            raise ConfigError(f"the study's state exists already in {self.folder}: `rtnf study init` runs once "
                              "per study")
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {"name": record.name, "allocation": record.allocation, "key_sha256": record.key_sha256,
                "created": record.created}
        self.journal_path.touch()
        atomic_write_text(self.folder / STUDY_FILE, json.dumps(body, indent=2) + "\n")

    def record(self) -> StudyRecord:
        """The study record.

        Raises
        ------
        ConfigError
            When ``rtnf study init`` has not run.
        """
        path = self.folder / STUDY_FILE
        if not path.is_file():
            raise ConfigError(f"no study state in {self.folder}: run `rtnf study init STUDY.toml` first")
        body = json.loads(path.read_text(encoding="utf-8"))
        return StudyRecord(body["name"], dict(body["allocation"]), body["key_sha256"], body["created"])

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event to the journal, durably (``fsync``) before returning it."""
        entry = {"event": event, "t": time.time(), **fields}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line cut short by a crash must not swallow this event
            os.write(fd, line)  # one write with O_APPEND: lines of two processes never interleave
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def events(self) -> list[dict[str, Any]]:
        """Every event of the journal, in order; a line cut short by a crash is skipped."""
        if not self.journal_path.is_file():
            return []
        out = []
        for n, line in enumerate(self.journal_path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("study journal %s: line %d is incomplete (a crash while writing it); skipped",
                            self.journal_path, n)
        return out
