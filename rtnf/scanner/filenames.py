"""How the scanner's file names appear in outputs, logs and messages (``[output] file_names``).

Some sites name exported files after the patient. With ``file_names = "hash"``
every place that names a file -- the table's ``file`` column, the volume
message's ``file`` field, log messages -- shows :func:`file_label` instead:
the volume number (when known) and a short hash of the name, salted with a
random value per process that is never written anywhere, so the name cannot be
recovered by hashing guesses. The default ``"as_is"`` shows names unchanged.

The policy is set once, when a run starts (:func:`set_file_names`), before any
thread that logs file names runs; afterwards it is only read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MODES = ("as_is", "hash")
_mode = "as_is"
_salt = os.urandom(16)


def set_file_names(mode: str) -> None:
    """Choose how file names are shown from now on: ``"as_is"`` or ``"hash"``."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"file_names must be one of {MODES}, got {mode!r}")
    _mode = mode


def hashing() -> bool:
    """True when file names are replaced by labels."""
    return _mode == "hash"


def file_label(name: str | Path, number: int | None = None) -> str:
    """The name of an exported file as outputs, logs and messages show it.

    Parameters
    ----------
    name : str or Path
        The file's name (a path: its name only, the folder is never shown in hash mode).
    number : int, optional
        The scanner's volume number, shown in front of the hash when known.
    """
    name = Path(name).name if isinstance(name, Path) else str(name)
    if _mode == "as_is":
        return name
    digest = hashlib.blake2s(name.encode("utf-8", "surrogateescape"), key=_salt, digest_size=4).hexdigest()
    return f"vol-{number:06d}_{digest}" if number is not None else f"file_{digest}"


def redact(text: str, *paths: str | Path) -> str:
    """``text`` with every path (and file name) of ``paths`` replaced by its label in hash mode."""
    if _mode == "as_is":
        return text
    for p in paths:
        p = Path(p)
        text = text.replace(str(p), file_label(p.name)).replace(p.name, file_label(p.name))
    return text
