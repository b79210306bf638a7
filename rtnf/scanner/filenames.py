"""How the scanner's file names appear in outputs, logs and messages (``[output] file_names``).

Some sites name exported files after the patient. With ``file_names = "hash"``
every place that names a file -- the table's ``file`` column, the volume
message's ``file`` field, log messages -- shows :meth:`FileNames.label` instead:
the volume number (when known) and a short hash of the name, salted with a
random value per process that is never written anywhere, so the name cannot be
recovered by hashing guesses. The default ``"as_is"`` shows names unchanged.

A run builds one :class:`FileNames` from its config and hands it to the parts
that name files; nothing about it is global.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MODES = ("as_is", "hash")
_SALT = os.urandom(16)  # drawn once per process, never written: labels cannot be reversed by hashing guesses


@dataclass(frozen=True)
class FileNames:
    """How a run shows the scanner's file names: ``"as_is"`` or ``"hash"``.

    Built once per run from ``output.file_names`` and handed to every part
    that names a file (the export reader, the watcher, the processor, the
    run loop); immutable, so threads share it freely.
    """

    mode: str = "as_is"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"file_names must be one of {MODES}, got {self.mode!r}")

    @property
    def hashing(self) -> bool:
        """True when file names are replaced by labels."""
        return self.mode == "hash"

    def label(self, name: str | Path, number: int | None = None) -> str:
        """The name of an exported file as outputs, logs and messages show it.

        Parameters
        ----------
        name : str or Path
            The file's name (a path: its name only, the folder is never shown in hash mode).
        number : int, optional
            The scanner's volume number, shown in front of the hash when known.
        """
        name = Path(name).name if isinstance(name, Path) else str(name)
        if self.mode == "as_is":
            return name
        digest = hashlib.blake2s(name.encode("utf-8", "surrogateescape"), key=_SALT, digest_size=4).hexdigest()
        return f"vol-{number:06d}_{digest}" if number is not None else f"file_{digest}"

    def redact(self, text: str, *paths: str | Path) -> str:
        """``text`` with every path (and file name) of ``paths`` replaced by its label in hash mode."""
        if self.mode == "as_is":
            return text
        for p in paths:
            p = Path(p)
            text = text.replace(str(p), self.label(p.name)).replace(p.name, self.label(p.name))
        return text


AS_IS = FileNames()
"""Names shown as they are (the default)."""
