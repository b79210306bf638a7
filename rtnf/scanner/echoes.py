"""Multi-echo volumes: the echoes of one volume become one :class:`~rtnf.scanner.volume.Volume`.

A multi-echo series (``scanner.echoes`` > 1) exports each volume as one file
per echo -- NIfTI files whose names carry the echo (BIDS ``_echo-2``,
dcm2niix ``_e2``, or a template's ``{echo}`` field), DICOM files with a
top-level ``EchoNumbers`` (Siemens mosaics; their volume is ``AcquisitionNumber``)
-- or as the echo frames of one 4D NIfTI file. :class:`EchoGrouper` collects the files of each volume and
releases the volume when all its echoes are complete; a volume still short of
an echo when a later volume completes is given up: it reaches the run as a
volume that cannot be read, with one message naming the missing echoes (the
run records it as missing and goes on), like slice files that never complete.

The grouped volume's ``echoes`` hold every echo (echo order) and
``echo_times_ms`` their echo times: from the headers (DICOM ``EchoTime``,
NIfTI ``descrip`` ``TE=<ms>``) when every echo gives one, else
``scanner.echo_times_ms``; its ``data`` is the plain mean of the echoes until
:class:`rtnf.analysis.multiecho.EchoCombiner` combines them.

Mismatched echo counts are configuration errors (:class:`rtnf.config.ConfigError`:
the run stops with one message, exit code 2): an echo number beyond
``scanner.echoes``, a file without an echo number in a multi-echo run, a
multi-echo file in a run configured for one echo, echo times the config and the
headers disagree on, or no echo times at all.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtnf.config import ConfigError
from .filenames import AS_IS, FileNames
from .nifti import VolumeReadError, decode_nifti, descrip_echo_time_ms
from .volume import Volume

#: An echo number in a file name: BIDS ``_echo-2`` / ``-echo2``, dcm2niix's ``_e2`` suffix.
ECHO_IN_NAME = re.compile(r"(?:[_-]echo-?(\d+)|_e(\d+))(?=[._-]|$)", re.IGNORECASE)
#: Header and configured echo times may differ by this much (ms): DICOM DS rounding.
ECHO_TIME_TOLERANCE_MS = 0.5


def echo_from_name(name: str) -> int | None:
    """The echo number a file name carries (``_echo-2``, ``_e2``), None when it carries none."""
    matches = list(ECHO_IN_NAME.finditer(name))
    if not matches:
        return None
    m = matches[-1]
    return int(m.group(1) or m.group(2))


def without_echo(name: str) -> str:
    """``name`` without its echo token, so that the last number left is the volume's."""
    return ECHO_IN_NAME.sub("", name)


def mean_of_echoes(echoes: np.ndarray) -> np.ndarray:
    """The plain mean of the echoes (float32): a running sum, several times faster than ``mean(axis=0)``."""
    out = echoes[0].astype(np.float32, copy=True)
    for e in range(1, echoes.shape[0]):
        out += echoes[e]
    out *= np.float32(1.0 / echoes.shape[0])
    return out


def config_raiser(message: str) -> Callable[[], Volume]:
    """A load function that stops the run with ``message`` (a mismatch between the config and the data)."""

    def load() -> Volume:
        raise ConfigError(message)

    return load


def read_echo_frames(path: Path, n_echoes: int, configured_ms: list[float] | None,
                     max_bytes: int | None = None) -> Volume:
    """A multi-echo volume stored as the ``n_echoes`` frames of one 4D NIfTI file.

    Raises
    ------
    ConfigError
        The file holds one 3D volume or another number of frames, or no echo
        times are configured (one ``descrip`` cannot give one per frame).
    VolumeReadError
        The file cannot be read (see :func:`rtnf.scanner.nifti.read_nifti`).
    """
    img, data = decode_nifti(path, max_bytes)
    frames = data.shape[3] if data.ndim == 4 else 1
    if data.ndim not in (3, 4) or frames != n_echoes:
        raise ConfigError(
            f"scanner.echoes = {n_echoes}, but {path.name} holds {frames} volume(s) of shape {data.shape[:3]} and its "
            "name gives no echo number (_echo-<n>, _e<n> or the template's {echo}). Allowed: one file per echo named "
            "with its echo, or one file with one frame per echo; scanner.echoes = 1 for single-echo data.")
    if configured_ms is None:
        raise ConfigError(f"scanner.echoes = {n_echoes} with echo frames in one file ({path.name}): the header cannot "
                          "give each frame's echo time; set scanner.echo_times_ms")
    echoes = np.ascontiguousarray(np.moveaxis(data, 3, 0))
    descrip = bytes(img.header["descrip"])
    match = re.search(rb"acq_time=([0-9]+(?:\.[0-9]*)?)", descrip)
    return Volume(data=mean_of_echoes(echoes), affine=np.asarray(img.affine, dtype=np.float64),
                  t_acquired=float(match.group(1)) if match else None, path=path, echoes=echoes,
                  echo_times_ms=tuple(float(t) for t in configured_ms))


@dataclass
class _Echo:
    path: Path
    load: Callable[[], Volume]
    t_detected: float
    echo_time_ms: float | None  # from the probe (DICOM); NIfTI gives its own when read


@dataclass
class _Pending:
    series: str | None
    echoes: dict[int, _Echo] = field(default_factory=dict)


class EchoGrouper:
    """Collect the echo files of each volume; release a volume when all its echoes are there.

    Parameters
    ----------
    n_echoes : int
        ``scanner.echoes``.
    configured_ms : list of float or None
        ``scanner.echo_times_ms``.
    names : FileNames
        How file names appear in messages.
    """

    def __init__(self, n_echoes: int, configured_ms: list[float] | None, names: FileNames = AS_IS) -> None:
        self.n_echoes = int(n_echoes)
        self.configured_ms = None if configured_ms is None else [float(t) for t in configured_ms]
        self.names = names
        self._pending: dict[int, _Pending] = {}
        self._released: set[int] = set()
        self._error: str | None = None  # an echo number beyond n_echoes was seen: every later volume stops the run

    def add(self, number: int, series: str | None, echo: int, path: Path, load: Callable[[], Volume],
            t_detected: float, echo_time_ms: float | None, make: Callable[..., Any]) -> list[Any]:
        """Add echo ``echo`` (1-based) of volume ``number``; return the arrivals it completes or gives up.

        ``make(number, paths, t_detected, series, load)`` builds an arrival
        (:class:`rtnf.scanner.export.Arrival`). A duplicate echo is ignored; an
        echo number out of range gives an arrival that stops the run.
        """
        label = self.names.label(path.name, number)
        if echo < 1 and self._error is None:
            self._error = (f"{label} is echo {echo}: echoes are numbered from 1 (DICOM EchoNumbers, _echo-<n>, _e<n>). "
                           f"Allowed: echo numbers 1 to scanner.echoes = {self.n_echoes}.")
        if echo > self.n_echoes and self._error is None:
            self._error = (f"{label} is echo {echo}, but scanner.echoes = {self.n_echoes}: the export holds more "
                           "echoes per volume than configured. Allowed: scanner.echoes (and scanner.echo_times_ms) "
                           "as the sequence acquires them.")
        if number in self._released:
            return []  # a late echo of a volume already released: the sequencer has it (an error stops the next)
        if self._error is not None:
            # Too many echoes seen: this volume, its first file already, stops the run with the message.
            self._pending.pop(number, None)
            self._released.add(number)
            return [make(number, [path], t_detected, series, config_raiser(self._error))]
        entry = self._pending.setdefault(number, _Pending(series))
        if echo in entry.echoes:
            return []  # the same echo again (a rewritten file): the first is kept
        entry.echoes[echo] = _Echo(path, load, t_detected, echo_time_ms)
        if len(entry.echoes) < self.n_echoes:
            return []
        del self._pending[number]
        self._released.add(number)
        out = self._give_up(number, series, t_detected, make)
        ordered = [entry.echoes[e] for e in range(1, self.n_echoes + 1)]
        out.append(make(number, [e.path for e in ordered], t_detected, series, lambda: self._combine(number, ordered)))
        return out

    def _give_up(self, number: int, series: str | None, t_detected: float, make: Callable[..., Any]) -> list[Any]:
        """Earlier volumes still short of an echo now that volume ``number`` is complete: unreadable arrivals."""
        out = []
        for earlier in sorted(n for n in self._pending if n < number):
            entry = self._pending.pop(earlier)
            self._released.add(earlier)
            missing = [e for e in range(1, self.n_echoes + 1) if e not in entry.echoes]
            reason = (f"volume {earlier} of series {entry.series} never completed: {len(entry.echoes)} of "
                      f"{self.n_echoes} echoes arrived (missing echo {', '.join(map(str, missing))}) before volume "
                      f"{number} was complete")
            paths = [entry.echoes[e].path for e in sorted(entry.echoes)]
            out.append(make(earlier, paths, t_detected, entry.series, _read_error(reason)))
        return out

    def _combine(self, number: int, ordered: list[_Echo]) -> Volume:
        """Read every echo and stack them into one multi-echo volume (the run's pipeline thread)."""
        volumes = [e.load() for e in ordered]
        first = volumes[0]
        for k, v in enumerate(volumes[1:], start=2):
            if v.data.shape != first.data.shape or not np.allclose(v.affine, first.affine, atol=1e-3):
                raise VolumeReadError(f"volume {number}: echo {k} ({self.names.label(v.path.name, number)}) has shape "
                                      f"{v.data.shape} or an affine unlike echo 1's {first.data.shape}")
        header = [e.echo_time_ms if e.echo_time_ms is not None else
                  (v.echo_times_ms[0] if v.echo_times_ms else None) for e, v in zip(ordered, volumes)]
        echoes = np.stack([v.data for v in volumes])
        return dataclasses.replace(first, data=mean_of_echoes(echoes), echoes=echoes,
                                   echo_times_ms=self.echo_times(header, number))

    def echo_times(self, header: list[float | None], number: int) -> tuple[float, ...]:
        """The echo times (ms) of volume ``number``: the headers' when every echo gives one, else the config's.

        Raises
        ------
        ConfigError
            Neither gives them, or both do and disagree.
        """
        configured = self.configured_ms
        if all(t is not None for t in header):
            tes = [float(t) for t in header]  # type: ignore[arg-type]
            if configured is not None and any(abs(a - b) > ECHO_TIME_TOLERANCE_MS for a, b in zip(tes, configured)):
                raise ConfigError(f"scanner.echo_times_ms = {configured}, but the headers of volume {number} give "
                                  f"echo times {tes} ms. Allowed: the sequence's echo times, or leave the key out "
                                  "to take the headers'.")
            return tuple(tes)
        if configured is None:
            raise ConfigError(f"scanner.echoes = {self.n_echoes}, but the files of volume {number} do not give every "
                              "echo's echo time (DICOM EchoTime, NIfTI descrip TE=<ms>); set scanner.echo_times_ms")
        return tuple(configured)

    def unfinished(self) -> list[str]:
        """Volumes with some echoes but not all: one line each, for the end of a run."""
        return [f"volume {n} never completed: {len(e.echoes)} of {self.n_echoes} echoes arrived"
                for n, e in sorted(self._pending.items())]


def _read_error(reason: str) -> Callable[[], Volume]:
    def load() -> Volume:
        raise VolumeReadError(reason)

    return load
