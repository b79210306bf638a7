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
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .nifti import is_complete as nifti_complete
from .nifti import read_nifti
from .volume import Volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Probe:
    """What :meth:`ExportReader.check` learned about a complete file."""

    path: Path
    format: str  # "nifti", "dicom" or "parrec"
    info: Any = None  # rtnf.dicom.DicomInfo for DICOM and PAR/REC


@dataclass
class Arrival:
    """A complete volume of the selected series, ready to be read."""

    number: int  # the scanner's volume number (first_volume_number for the first)
    paths: list[Path]
    t_detected: float
    series: str | None = None
    load: Callable[[], Volume] = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def name(self) -> str:
        """A short name for logs and the recorded table."""
        return self.paths[0].name if len(self.paths) == 1 else f"{self.paths[0].name} (+{len(self.paths) - 1} slices)"


def template_to_regex(template: str) -> str:
    """Turn a file-name template such as ``001_{series:06d}_{volume:06d}.dcm`` into a regex.

    ``{series}`` and ``{volume}`` fields (with an optional zero-padded width
    such as ``:06d``) become named groups; everything else matches literally.
    """
    field = re.compile(r"\{(series|volume)(?::0?(\d+)d)?\}")
    leftover = field.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise ValueError(f"unknown field in file-name template {template!r}; allowed fields: {{series}}, {{volume}}")
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
    """

    def __init__(self, scanner: Any, t_start: float, accept_old: bool = False) -> None:
        self.scanner = scanner
        self.t_start = t_start
        self.accept_old = accept_old
        regex = scanner.filename_regex
        if scanner.filename_template is not None:
            regex = template_to_regex(scanner.filename_template)
        self.pattern = re.compile(regex) if regex else None
        self.series: str | None = None  # the series the run locked on
        self._reported: set[str] = set()
        self._assembler = None
        self._series_reader = None
        self._decoded: dict[Path, Any] = {}  # slice files decoded on arrival, until their volume is complete

    # -------------------------------------------------------------- watcher thread

    def matches(self, path: Path) -> bool:
        """Whether a file name can belong to the run (hidden and temporary files never do)."""
        name = path.name
        if name.startswith(".") or name.endswith((".part", ".tmp", ".partial")):
            return False
        return self.pattern is None or self.pattern.search(name) is not None

    def check(self, path: Path) -> Probe | None:
        """A :class:`Probe` if ``path`` is complete, else None. Never raises."""
        fmt = file_format(path, self.scanner.format)
        try:
            if fmt == "nifti":
                return Probe(path, fmt) if nifti_complete(path) else None
            if fmt == "rec":
                return None
            if fmt == "parrec" and not self._rec_beside(path):
                return None
            from .dicom import probe

            info = probe(path)
        except Exception as exc:  # a reader bug must cost a file, never the watcher
            log.debug("check of %s failed: %s", path, exc)
            return None
        return Probe(path, fmt if fmt == "parrec" else "dicom", info) if info.complete else None

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
                    self._report_once(f"rec-outside:{rec}", f"{rec.name} resolves outside the folder of {par.name}; "
                                      "refused (never read)")
                return beside
        return True

    # -------------------------------------------------------------- pipeline thread

    def accept(self, probe: Probe, t_detected: float) -> list[Arrival]:
        """The volumes that ``probe`` completes (none, or one)."""
        path = probe.path
        if probe.format == "nifti":
            number = self._number_from_name(path)
            if number is None:
                self._report_once(f"name:{path.name}", f"{path.name}: no volume number in the file name; skipped")
                return []
            series = self._series_from_name(path)
            if not self._selected(series, None, path):
                return []
            return [Arrival(number, [path], t_detected, series, lambda: read_nifti(path))]
        info = probe.info
        if info.problem is not None:
            self._report_once(f"problem:{path}", f"{path.name}: {info.problem}; skipped")
            return []
        series = str(info.series_number) if info.series_number is not None else info.series_uid
        shape = info.shape
        if not self._selected(series, shape, path, info.series_description):
            return []
        name_number = self._number_from_name(path)
        if info.kind == "slice":
            return self._accept_slice(probe, t_detected, series)
        number = name_number if name_number is not None else info.volume_number
        if number is None:
            self._report_once(f"number:{path}", f"{path.name}: no volume number in the name or header; skipped")
            return []
        if info.kind == "parrec":
            from .dicom import read_volume

            return [Arrival(number, [path], t_detected, series, lambda: read_volume([path]))]
        reader = self._fast_reader()
        return [Arrival(number, [path], t_detected, series, lambda: reader.read(path))]

    def _accept_slice(self, probe: Probe, t_detected: float, series: str | None) -> list[Arrival]:
        from .dicom import SliceAssembler, read_volume
        from .dicom.slices import decode_slice, read_slices
        from .nifti import VolumeReadError

        if self._assembler is None:
            self._assembler = SliceAssembler(self.scanner.slices_per_volume)
        # Decode each slice as it comes (the pipeline is idle between volumes), so that
        # a complete volume only needs stacking.
        try:
            self._decoded[probe.path] = decode_slice(probe.path)
        except VolumeReadError:
            pass  # read_volume below reports it when the volume is read
        paths = self._assembler.add(probe.path, probe.info)
        if not paths:
            return []
        number = probe.info.volume_number
        if number is None:
            self._report_once(f"number:{probe.path}", f"{probe.path.name}: slice without a volume number; skipped")
            return []
        paths = list(paths)
        decoded = [self._decoded.pop(p, None) for p in paths]
        if all(d is not None for d in decoded):
            datasets, arrays = [d[0] for d in decoded], [d[1] for d in decoded]
            return [Arrival(number, paths, t_detected, series, lambda: read_slices(paths, datasets, arrays))]
        return [Arrival(number, paths, t_detected, series, lambda: read_volume(paths))]

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
            numbers = re.findall(r"\d+", re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.I))
            return int(numbers[-1]) if numbers else None
        return None

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
            self._report_once(f"series:{series}", f"{label} is not the configured series {wanted}; its files are skipped")
            return False
        if self.series is not None:
            if series == self.series:
                return True
            self._report_once(f"series:{series}", f"{label} appeared while the run follows series {self.series}; skipped")
            return False
        try:
            old = not self.accept_old and path.stat().st_mtime < self.t_start - 1.0
        except OSError:
            old = False
        if old:
            self._report_once(f"old:{series}", f"{label}: files from before the run started; skipped")
            return False
        expected = self.scanner.expected_matrix
        if expected is not None and shape is not None and list(shape[: len(expected)]) != list(expected)[: len(shape)]:
            self._report_once(f"matrix:{series}", f"{label} has matrix {list(shape)}, expected {expected}; skipped")
            return False
        self.series = series
        if series is not None:
            log.info("following %s", label)
        return True

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.warning(message)
