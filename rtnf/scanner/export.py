"""What the scanner's export folder holds: files -> volumes of the run's series.

:class:`ExportReader` is the format-aware layer between the watcher and the
pipeline. It tells the watcher when a file is complete (:meth:`check`, run in
the watcher's thread; it never raises), and in the pipeline's thread turns
complete files into :class:`Arrival` s — one per volume of the selected
series, with the scanner's volume number — assembling slice files into
volumes. Every other series, foreign file and unreadable file is logged once
and skipped.

Formats: NIfTI (``.nii``, ``.nii.gz``), DICOM (Siemens mosaic, enhanced
multi-frame, one file per slice) and Philips PAR/REC, by extension and header
(``scanner.format = "auto"``) or as configured.

Floods: warnings that repeat (thousands of files of another series, of
foreign files) are aggregated by :class:`RepeatedWarnings`: the first few
individually, then one line per ``every`` more or per ``interval_s``
seconds, and the remainder when the reader is closed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .echoes import EchoGrouper, config_raiser, echo_from_name, read_echo_frames, without_echo
from .filenames import AS_IS, FileNames
from .nifti import MAX_VOLUME_BYTES, VolumeReadError, read_nifti
from .nifti import judge as nifti_judge
from .volume import Volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Probe:
    """What :meth:`ExportReader.check` learned about a complete file."""

    path: Path
    format: str  # "nifti", "dicom" or "parrec"
    info: Any = None  # rtnf.scanner.dicom.DicomInfo for DICOM and PAR/REC


@dataclass(frozen=True)
class Refused:
    """What :meth:`ExportReader.check` returns for a file never to be read as it is (a gzip bomb, a header
    promising more than the bound, too slow to judge): falsy, with the reason. The watcher sets it aside
    with one warning; the run loop skips it."""

    path: Path
    reason: str
    state: str = "refused"

    def __bool__(self) -> bool:
        return False


class RepeatedWarnings:
    """Log repeated warnings of one kind without flooding the log (and the wire and console, which take it).

    The first ``first`` warnings of a kind are logged as they are; the
    following ones are counted and summarised ("1000 more files of series 7
    skipped: ...") each ``every`` of them or ``interval_s`` seconds after
    the last line of that kind, whichever comes first, and by :meth:`flush`.
    Thread-safe.

    Parameters
    ----------
    logger : logging.Logger
        Where the lines go (level WARNING).
    first : int
        Warnings of a kind logged individually.
    every : int
        Suppressed warnings summarised in one line.
    interval_s : float
        Seconds after which suppressed warnings are summarised at the next
        warning of the kind (or at :meth:`flush`).
    """

    def __init__(self, logger: logging.Logger, first: int = 3, every: int = 1000, interval_s: float = 10.0) -> None:
        self.log = logger
        self.first, self.every, self.interval_s = int(first), int(every), float(interval_s)
        self._lock = threading.Lock()
        self._kinds: dict[str, list[Any]] = {}  # kind -> [total, suppressed, t_last_line, summary]

    def warn(self, kind: str, message: str, summary: str, first: int | None = None) -> None:
        """One warning of ``kind``; ``summary`` describes the suppressed ones ("files of series 7 skipped");
        ``first`` overrides how many of this kind are logged individually."""
        now = time.monotonic()
        with self._lock:
            entry = self._kinds.setdefault(kind, [0, 0, now, summary])
            entry[0] += 1
            entry[3] = summary
            if entry[0] <= (self.first if first is None else first):
                entry[2] = now
                line = message
            else:
                entry[1] += 1
                if entry[1] < self.every and now - entry[2] < self.interval_s:
                    return
                line = self._summary(entry, now)
        self.log.warning("%s", line)

    def _summary(self, entry: list[Any], now: float) -> str:
        n, entry[1], entry[2] = entry[1], 0, now
        return f"{n} more {entry[3]} ({entry[0]} in all so far)"

    def flush(self, due_only: bool = False) -> None:
        """Log the summaries still owed (with ``due_only``, those whose ``interval_s`` has passed)."""
        now = time.monotonic()
        with self._lock:
            lines = [self._summary(e, now) for e in self._kinds.values()
                     if e[1] and (not due_only or now - e[2] >= self.interval_s)]
        for line in lines:
            self.log.warning("%s", line)


@dataclass
class Arrival:
    """A complete volume of the selected series, ready to be read."""

    number: int  # the scanner's volume number (first_volume_number for the first)
    paths: list[Path]
    t_detected: float
    series: str | None = None
    load: Callable[[], Volume] = field(repr=False, default=None)  # type: ignore[assignment]
    names: FileNames = field(repr=False, default=AS_IS)  # how the run shows file names
    parts: str = "slices"  # what the files beyond the first are: "slices" or "echoes"

    @property
    def name(self) -> str:
        """A short name for logs and the recorded table."""
        first = self.names.label(self.paths[0].name, self.number)
        return first if len(self.paths) == 1 else f"{first} (+{len(self.paths) - 1} {self.parts})"


BIDS_ECHO = re.compile(r"[_-]echo-?\d+(?=[._-]|$)", re.IGNORECASE)
"""The explicit echo token of a file name (BIDS ``_echo-<n>``), the only one a single-echo run heeds."""


def template_to_regex(template: str) -> str:
    """Turn a file-name template such as ``001_{series:06d}_{volume:06d}.dcm`` into a regex.

    ``{series}``, ``{volume}`` and ``{echo}`` fields (with an optional zero-padded width
    such as ``:06d``) become named groups; everything else matches literally.
    """
    field = re.compile(r"\{(series|volume|echo)(?::0?(\d+)d)?\}")
    leftover = field.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise ValueError(f"unknown field in file-name template {template!r}; allowed fields: {{series}}, {{volume}}, "
                         "{echo}")
    out, pos = "", 0
    for m in field.finditer(template):
        out += re.escape(template[pos : m.start()])
        width = m.group(2)
        out += f"(?P<{m.group(1)}>\\d{{{width}}})" if width else f"(?P<{m.group(1)}>\\d+)"
        pos = m.end()
    out += re.escape(template[pos:])
    return "^" + out + "$"


def file_format(path: Path, configured: str) -> str:
    """The format of ``path``: the configured one, or guessed from the name."""
    if configured != "auto":
        return configured
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".par"):
        return "parrec"
    if name.endswith(".rec"):
        return "rec"  # the data half of a PAR/REC pair: handled through its .PAR
    return "dicom"


class ExportReader:
    """Turns complete export files into volumes of one series.

    Parameters
    ----------
    scanner : rtnf.config.ScannerConfig
        Format, file-name pattern, series selection, slices per volume.
    t_start : float
        When the run started (UNIX s); files older than this belong to
        earlier runs and are ignored unless a series number is configured.
    accept_old : bool
        Take files from before the start too (replays, resumed runs).
    names : FileNames
        How file names appear in warnings and on the volumes it returns.
    """

    def __init__(self, scanner: Any, t_start: float, accept_old: bool = False, names: FileNames = AS_IS) -> None:
        self.scanner = scanner
        self.names = names
        self.t_start = t_start
        self.accept_old = accept_old
        regex = scanner.filename_regex
        if scanner.filename_template is not None:
            regex = template_to_regex(scanner.filename_template)
        self.pattern = re.compile(regex) if regex else None
        self.series: str | None = None  # the series the run locked on
        self._reported: set[str] = set()
        self.warnings = RepeatedWarnings(log)
        self._volume_bytes: int | None = None  # uncompressed size of the run's NIfTI volumes, once known
        self._assembler = None
        self._series_reader = None
        self._decoded: dict[Path, Any] = {}  # slice files decoded on arrival, until their volume is complete
        self._echo_error: str | None = None  # single-echo run: a file of echo > 1 seen; every later volume stops it
        self._echoes = EchoGrouper(scanner.echoes, scanner.echo_times_ms, names) if scanner.echoes > 1 else None

    # -------------------------------------------------------------- watcher thread

    def matches(self, path: Path) -> bool:
        """Whether a file name can belong to the run (hidden and temporary files never do)."""
        name = path.name
        if name.startswith(".") or name.endswith((".part", ".tmp", ".partial")):
            return False
        return self.pattern is None or self.pattern.search(name) is not None

    def check(self, path: Path) -> Probe | Refused | None:
        """A :class:`Probe` if ``path`` is complete, a :class:`Refused` if it is never to be read, else None.

        Never raises, never blocks on a non-regular file, and never
        decompresses a ``.nii.gz`` past the size its header promises (bounded
        by :meth:`max_volume_bytes`). For slice files, the configured
        ``scanner.slices_per_volume`` replaces the header's count (and the
        volume number derived from it).
        """
        fmt = file_format(path, self.scanner.format)
        try:
            if fmt == "nifti":
                judgement = nifti_judge(path, self.max_volume_bytes())
                if judgement.state == "refused":
                    return Refused(path, judgement.reason)
                return Probe(path, fmt, judgement.expected_bytes) if judgement else None
            if fmt == "rec":
                return None
            if fmt == "parrec" and not self._rec_beside(path):
                return None
            from .dicom import probe

            fast = self._fast_reader()
            info = fast.probe(path)  # a later file of a series already seen: its header walk (0.1 ms)
            if info is None:
                info = probe(path)
                fast.remember_probe(info)
            configured = self.scanner.slices_per_volume
            if info.kind == "slice" and configured and info.n_slices != configured:
                from rtnf.scanner.dicom.probe import with_slice_count

                if not info.n_slices:
                    why = "the header does not give slices per volume"
                elif info.n_slices % configured == 0:
                    why = (f"the header's {info.n_slices} slices per volume are {info.n_slices // configured} x "
                           "the configured count (it counts more than one volume)")
                else:
                    why = (f"the header says {info.n_slices} slices per volume (if volumes never complete, "
                           "check the config)")
                info = with_slice_count(info, configured, f"{why}; scanner.slices_per_volume = {configured} used")
        except Exception as exc:  # a reader bug must cost a file, never the watcher
            log.debug("check of %s failed: %s", path, exc)
            return None
        return Probe(path, fmt if fmt == "parrec" else "dicom", info) if info.complete else None

    def max_volume_bytes(self) -> int:
        """Largest uncompressed size a ``.nii.gz`` may promise: from ``scanner.expected_matrix`` (8 bytes a
        voxel), else 4 x the run's first volume, else :data:`rtnf.scanner.nifti.MAX_VOLUME_BYTES`; plus 1 MiB."""
        matrix = getattr(self.scanner, "expected_matrix", None)
        if matrix is not None and len(matrix) >= 3:
            n = 1
            for m in list(matrix)[:3]:
                n *= int(m)
            return n * 8 + (1 << 20)
        if self._volume_bytes:
            return min(4 * self._volume_bytes, MAX_VOLUME_BYTES) + (1 << 20)
        return MAX_VOLUME_BYTES

    def _rec_beside(self, par: Path) -> bool:
        """Whether the .REC of a .PAR (if any) resolves into the folder the .PAR resolves into.

        The watcher refuses files that resolve outside the export folder, but a
        PAR's data half is opened by the reader, not handed over: a symlinked
        .REC must not make rtnf read a file elsewhere.
        """
        for suffix in (".rec", ".REC", ".Rec"):
            rec = par.with_suffix(suffix)
            if rec.is_symlink() or rec.exists():
                try:
                    beside = rec.resolve().parent == par.resolve().parent
                except (OSError, RuntimeError):  # a symlink loop
                    beside = False
                if not beside:
                    self._report_once(f"rec-outside:{rec}", f"{self.names.label(rec.name)} resolves outside the folder of {self.names.label(par.name)}; "
                                      "refused (never read)")
                return beside
        return True

    # -------------------------------------------------------------- pipeline thread

    def accept(self, probe: Probe, t_detected: float) -> list[Arrival]:
        """The volumes that ``probe`` completes (none, one, or earlier ones given up as incomplete)."""
        self.warnings.flush(due_only=True)  # summaries of floods that have gone quiet
        path = probe.path
        if isinstance(probe, Refused):
            self._report_once(f"refused:{path}", f"{self.names.label(path.name)} set aside: {self.names.redact(str(probe.reason), path)}",
                              kind="refused", summary="files set aside (not read)")
            return []
        if probe.format == "nifti":
            number = self._number_from_name(path)
            if number is None:
                self._report_once(f"name:{path.name}", f"{self.names.label(path.name)}: no volume number in the file name; skipped",
                                  kind="no-number", summary="files without a volume number in the name skipped")
                return []
            series = self._series_from_name(path)
            if not self._selected(series, None, path):
                return []
            if isinstance(probe.info, int) and self._volume_bytes is None:
                self._volume_bytes = probe.info
            bound = self.max_volume_bytes()
            echo = self._echo_from_name(path)
            if self._echoes is not None and echo is None:  # the echoes as the frames of this one file
                n, tes = self.scanner.echoes, self.scanner.echo_times_ms
                return [Arrival(number, [path], t_detected, series, lambda: read_echo_frames(path, n, tes, bound),
                                names=self.names)]
            return self._one_echo(number, series, echo, None, path, t_detected, lambda: read_nifti(path, bound))
        info = probe.info
        if info.problem is not None:
            self._report_once(f"problem:{path}", f"{self.names.label(path.name)}: {self.names.redact(str(info.problem), path)}; skipped",
                              kind="problem", summary="unreadable or unsupported files skipped")
            return []
        series = str(info.series_number) if info.series_number is not None else info.series_uid
        shape = info.shape
        if not self._selected(series, shape, path, info.series_description):
            return []
        name_number = self._number_from_name(path)
        if info.kind == "slice":
            if self._echoes is not None:  # slice files are not grouped by echo (see _check_echoes in rtnf.config)
                number = info.volume_number if info.volume_number is not None else self.scanner.first_volume_number
                return [Arrival(number, [path], t_detected, series, config_raiser(
                    f"scanner.echoes = {self.scanner.echoes}, but {self.names.label(path.name)} is a slice file: "
                    "multi-echo volumes are read from one file per echo (NIfTI, Siemens mosaic, enhanced DICOM). "
                    "Allowed: scanner.echoes = 1 for slice files."), names=self.names)]
            return self._accept_slice(probe, t_detected, series)
        number = name_number if name_number is not None else info.volume_number
        if self._echoes is not None and name_number is None and info.acquisition_number is not None:
            number = info.acquisition_number  # the echoes of a volume share it; InstanceNumber may count echoes
        if number is None:
            self._report_once(f"number:{path}", f"{self.names.label(path.name)}: no volume number in the name or header; skipped",
                              kind="no-number", summary="files without a volume number skipped")
            return []
        if info.kind == "parrec":
            from .dicom import read_volume

            return [Arrival(number, [path], t_detected, series, lambda: read_volume([path]), names=self.names)]
        reader = self._fast_reader()
        return self._one_echo(number, series, info.echo_number, info.echo_time_ms, path, t_detected,
                              lambda: reader.read(path))

    def _one_echo(self, number: int, series: str | None, echo: int | None, echo_time_ms: float | None, path: Path,
                  t_detected: float, load: Callable[[], Volume]) -> list[Arrival]:
        """The arrivals of a file holding one volume, or one echo of a multi-echo volume (see :mod:`.echoes`)."""
        if self._echoes is None:
            if echo is not None and echo > 1 and self._echo_error is None:
                self._echo_error = (
                    f"{self.names.label(path.name, number)} is echo {echo} of a multi-echo series, but scanner.echoes "
                    "= 1. Allowed: scanner.echoes set to the echoes per volume (scanner.echo_times_ms when the "
                    "headers do not give them).")
            if self._echo_error is None:
                return [Arrival(number, [path], t_detected, series, load, names=self.names)]
            if echo is not None and echo > 1:
                return []  # a later echo of a volume handed over with its first echo: the next volume stops the run
            return [Arrival(number, [path], t_detected, series, config_raiser(self._echo_error), names=self.names)]
        if echo is None:
            return [Arrival(number, [path], t_detected, series, config_raiser(
                f"scanner.echoes = {self.scanner.echoes}, but {self.names.label(path.name, number)} gives no echo "
                "number (DICOM EchoNumbers; in a NIfTI name _echo-<n>, _e<n> or the template's {echo}). Allowed: "
                "scanner.echoes = 1 for single-echo data."), names=self.names)]

        def make(n: int, paths: list[Path], t: float, ser: str | None, loader: Callable[[], Volume]) -> Arrival:
            return Arrival(n, paths, t, ser, loader, names=self.names, parts="echoes")

        return self._echoes.add(number, series, echo, path, load, t_detected, echo_time_ms, make)

    def _accept_slice(self, probe: Probe, t_detected: float, series: str | None) -> list[Arrival]:
        from .dicom import SliceAssembler, read_volume
        from rtnf.scanner.dicom.slices import decode_slice, read_slices

        if self._assembler is None:
            self._assembler = SliceAssembler(self.scanner.slices_per_volume, report=self._assembler_report,
                                              names=self.names)
        if probe.info.note:
            self._report_once(f"note:{probe.info.series_uid}", f"series {series}: {probe.info.note}")
        # Decode each slice as it comes (the pipeline is idle between volumes), so that
        # a complete volume only needs stacking.
        try:
            self._decoded[probe.path] = decode_slice(probe.path)
        except VolumeReadError:
            pass  # read_volume below reports it when the volume is read
        paths = self._assembler.add(probe.path, probe.info)
        if not paths:
            return []
        number = self._assembler.last_released  # with a learned count, the volume before this slice's
        if number is None:
            self._report_once(f"number:{probe.path}", f"{self.names.label(probe.path.name)}: slice without a volume number; skipped",
                              kind="no-number", summary="slices without a volume number skipped")
            return []
        paths = list(paths)
        decoded = [self._decoded.pop(p, None) for p in paths]
        out = self._give_up(probe.info.series_uid, int(number), series, t_detected)
        if all(d is not None for d in decoded):
            datasets, arrays = [d[0] for d in decoded], [d[1] for d in decoded]
            out.append(Arrival(number, paths, t_detected, series, lambda: read_slices(paths, datasets, arrays),
                               names=self.names))
        else:
            out.append(Arrival(number, paths, t_detected, series, lambda: read_volume(paths), names=self.names))
        return out

    def _give_up(self, series_uid: str | None, number: int, series: str | None, t_detected: float) -> list[Arrival]:
        """Earlier volumes still incomplete when volume ``number`` completed: arrivals that read as missing,
        with the reason (the run records them as missing, unreadable, and goes on)."""
        out = []
        for volume, paths, expected in self._assembler.overdue(series_uid, number):
            have = len(paths)
            reason = (f"volume {volume} of series {series} never completed: {have} of "
                      f"{expected if expected else '?'} slice files arrived before volume {number} was complete")
            for p in paths:
                self._decoded.pop(p, None)
            out.append(Arrival(volume, paths or [Path(f"series-{series}-volume-{volume}")], t_detected, series,
                               _raiser(reason), names=self.names))
        return out

    def _assembler_report(self, kind: str, message: str) -> None:
        what = "duplicate slice files ignored" if kind.startswith("duplicate") else "slice files ignored"
        series = self.series if ":" in kind else None  # the assembler sees the run's series only
        self.warnings.warn(f"slices-{kind}", message, what + (f" (series {series})" if series else ""))

    def unfinished(self) -> list[str]:
        """Volumes started but never complete (slice files, echoes): one line each, for the end of a run."""
        if self._echoes is not None:
            return self._echoes.unfinished()
        if self._assembler is None:
            return []
        out = []
        for (series_uid, volume), have in sorted(self._assembler.pending().items(), key=lambda kv: kv[0][1]):
            expected = self._assembler.expected(series_uid)
            out.append(f"volume {volume} never completed: {have} of {expected if expected else '?'} slice files "
                       "arrived")
        return out

    def close(self) -> None:
        """End of the run: log the volumes that never completed and the warnings still owed."""
        lines = self.unfinished()
        for line in lines[:3]:
            log.warning("%s; treated as missing", line)
        if len(lines) > 3:
            log.warning("%d more volumes never completed (first: %s)", len(lines) - 3, lines[3])
        self.warnings.flush()

    def _fast_reader(self):
        if self._series_reader is None:
            from .dicom import SeriesReader

            self._series_reader = SeriesReader()
        return self._series_reader

    def _number_from_name(self, path: Path) -> int | None:
        """The volume number given by the file name: the pattern's 'volume' group, else for
        NIfTI the last number in the name; None when the name says nothing (DICOM: use the header)."""
        if self.pattern is not None:
            m = self.pattern.search(path.name)
            if m and m.groupdict().get("volume") is not None:
                return int(m.group("volume"))
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.I)
            # The echo token is no volume number; a single-echo run only knows BIDS's explicit 'echo-<n>' (an '_e2'
            # there is part of the study's own naming).
            stem = without_echo(stem) if self._echoes is not None else BIDS_ECHO.sub("", stem)
            numbers = re.findall(r"\d+", stem)
            return int(numbers[-1]) if numbers else None
        return None

    def _echo_from_name(self, path: Path) -> int | None:
        """The echo number a NIfTI file's name gives: the template's ``{echo}`` field, else ``_echo-<n>`` / ``_e<n>``."""
        if self.pattern is not None:
            m = self.pattern.search(path.name)
            if m and m.groupdict().get("echo") is not None:
                return int(m.group("echo"))
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.I)
        if self._echoes is None:
            # A single-echo run only notices BIDS's explicit 'echo-<n>': a short '_e2' in a single-echo name
            # (a study's own naming) must not stop the run as "multi-echo data".
            return echo_from_name(stem) if BIDS_ECHO.search(stem) else None
        return echo_from_name(stem)

    def _series_from_name(self, path: Path) -> str | None:
        if self.pattern is None:
            return None
        m = self.pattern.search(path.name)
        if m and "series" in m.groupdict() and m.group("series") is not None:
            return str(int(m.group("series")))
        return None

    def _selected(self, series: str | None, shape: Any, path: Path, description: str | None = None) -> bool:
        """Series selection: the configured number, else the first new series with the expected matrix."""
        wanted = self.scanner.series_number
        label = f"series {series}" + (f" ({description})" if description else "")
        if wanted is not None:
            if series == str(wanted):
                return True
            self._report_once(f"series:{series}", f"{label} is not the configured series {wanted}; its files are skipped",
                              kind=f"series:{series}", summary=f"files of series {series} skipped")
            return False
        if self.series is not None:
            if series == self.series:
                return True
            self._report_once(f"series:{series}", f"{label} appeared while the run follows series {self.series}; skipped",
                              kind=f"series:{series}", summary=f"files of series {series} skipped")
            return False
        try:
            old = not self.accept_old and path.stat().st_mtime < self.t_start - 1.0
        except OSError:
            old = False
        if old:
            self._report_once(f"old:{series}", f"{label}: files from before the run started; skipped",
                              kind=f"old:{series}", summary=f"files of series {series} from before the run skipped")
            return False
        expected = self.scanner.expected_matrix
        if expected is not None and shape is not None and list(shape[: len(expected)]) != list(expected)[: len(shape)]:
            self._report_once(f"matrix:{series}", f"{label} has matrix {list(shape)}, expected {expected}; skipped",
                              kind=f"matrix:{series}", summary=f"files of series {series} with another matrix skipped")
            return False
        self.series = series
        if series is not None:
            log.info("following %s", label)
        return True

    def _report_once(self, key: str, message: str, kind: str | None = None, summary: str = "") -> None:
        """Warn once per ``key``; with a ``kind``, every file counts and repeats are aggregated
        (the first warning of a key says what, the summaries say how many more)."""
        if kind is None:
            if key not in self._reported:
                self._reported.add(key)
                log.warning(message)
            return
        self.warnings.warn(kind, message, summary, first=1 if kind.split(":")[0] in _PER_SERIES else None)


_PER_SERIES = ("series", "old", "matrix")  # one message per series says it all; later files are only counted


def _raiser(reason: str) -> Callable[[], Volume]:
    def load() -> Volume:
        raise VolumeReadError(reason)

    return load
