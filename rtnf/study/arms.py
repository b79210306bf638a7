"""Concealed allocation: arm codes, the allocation of participants to codes, and the blinding key.

At ``rtnf study init`` each arm gets a code ("A", "B", ...) in a random order,
and the participants are allocated to codes in permuted blocks. The study's
state (read by the operator, printed by ``rtnf study status``) holds only the
codes. What each code means is in the blinding key, a separate file written
once with mode 0600 (owner only) outside the outputs and the state; ``rtnf
study next`` reads it to run a participant's arm and never prints it; ``rtnf
study unblind --key KEY`` reveals it. The state keeps the key's SHA-256, so a
key that is not the study's own (or was edited) is refused. The key carries a
random nonce: its hash cannot be matched by trying the few possible mappings.

What this protects against is incidental unblinding (the console, the
screen, the outputs, the logs, the state). It is not encryption: whoever can
read the key file under the study's account can read the arms. Keep the key
on an account or medium the operator does not use when the protocol asks for
that; ``rtnf study next`` then needs it only for feedback runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import string
import time
from dataclasses import dataclass
from pathlib import Path

from rtnf.config import ConfigError

KEY_FORMAT = "rtnf-study-blinding-key/1"


@dataclass(frozen=True)
class BlindingKey:
    """What each arm code means.

    Attributes
    ----------
    codes : dict of str to str
        Arm code -> arm kind (``"real"``, ``"sham"``, ``"control"``, ``"none"``).
    sha256 : str
        Hash of the key file's bytes, kept in the study's state.
    """

    codes: dict[str, str]
    sha256: str

    def arm(self, code: str) -> str:
        """The arm behind ``code``."""
        return self.codes[code]

    def codes_of(self, arm: str) -> list[str]:
        """The codes whose arm is ``arm`` (one per arm)."""
        return [c for c, a in self.codes.items() if a == arm]


def make_codes(arms: list[str], rng: secrets.SystemRandom | None = None) -> dict[str, str]:
    """A random mapping of arm codes ("A", "B", ...) to ``arms``."""
    rng = rng or secrets.SystemRandom()
    shuffled = list(arms)
    rng.shuffle(shuffled)
    return dict(zip(string.ascii_uppercase, shuffled))


def allocate(participants: list[str], codes: list[str], block_size: int | None = None,
             rng: secrets.SystemRandom | None = None, lead: str | None = None) -> dict[str, str]:
    """Participants -> arm codes in permuted blocks, in the participants' order.

    Each block of ``block_size`` participants (default twice the number of
    codes) holds every code equally often, in a random order: the arms stay
    balanced along recruitment. With ``lead``, the first participant gets that
    code (swapped within the first block, which stays balanced): the study's
    leader under ``arms.conceal_order``.
    """
    rng = rng or secrets.SystemRandom()
    size = block_size or 2 * len(codes)
    sequence: list[str] = []
    while len(sequence) < len(participants):
        block = [codes[i % len(codes)] for i in range(size)]
        rng.shuffle(block)
        sequence += block
    if lead is not None and sequence and sequence[0] != lead:
        i = sequence.index(lead)  # in the first block: every block holds every code
        sequence[0], sequence[i] = sequence[i], sequence[0]
    return dict(zip(participants, sequence))


def write_key(path: Path, study_name: str, codes: dict[str, str]) -> str:
    """Write the blinding key (mode 0600, never over an existing file); return its SHA-256.

    Raises
    ------
    ConfigError
        When the file exists already (a study has one key) or cannot be written.
    """
    body = {
        "format": KEY_FORMAT,
        "study": study_name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "codes": codes,
        "nonce": secrets.token_hex(16),  # the hash in the state cannot be matched by trying mappings
    }
    data = (json.dumps(body, indent=2) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"the blinding key {path} exists already: a study has one key, made once by "
                          "`rtnf study init`") from None
    except OSError as exc:
        raise ConfigError(f"cannot write the blinding key {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def read_key(path: Path, expected_sha256: str) -> BlindingKey:
    """Read the study's blinding key, checking it is the one ``rtnf study init`` made.

    Raises
    ------
    ConfigError
        When it is missing, unreadable, or not this study's key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the blinding key {path}: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise ConfigError(f"{path} is not this study's blinding key (its SHA-256 differs from the one recorded at "
                          "`rtnf study init`)")
    body = json.loads(data)
    return BlindingKey(dict(body["codes"]), digest)


def key_is_private(path: Path) -> bool:
    """Whether only the owner may read the key file (mode 0600 or stricter)."""
    return not (Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
