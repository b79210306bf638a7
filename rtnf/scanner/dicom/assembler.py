"""Group slice files into volumes as they arrive."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rtnf._checks import check_positive
from rtnf.scanner.filenames import AS_IS, FileNames
from ._common import DicomInfo
from .probe import with_slice_count

log = logging.getLogger(__name__)

_POS_DECIMALS = 2  # slice positions equal to 0.01 mm are the same slice


@dataclass
class _Pending:
    slices: dict[float, Path] = field(default_factory=dict)
    first_seen: int = 0


class SliceAssembler:
    """Collect one-file-per-slice DICOMs and release each volume once all its slices are there.

    Slices are grouped by ``(series_uid, volume_number)`` (see
    :class:`~rtnf.scanner.dicom.DicomInfo` for how the volume number is found) and
    keyed by slice position, so they may arrive in any order.

    Slices per volume come from, in order: the constructor's ``n_slices``
    (the configured ``scanner.slices_per_volume``, which wins over any
    header; a volume number derived from InstanceNumber is derived again with
    it), then the header (``info.n_slices``: ImagesInAcquisition, GE
    LocationsInAcquisition, Philips NumberOfSlicesMR, see
    :func:`rtnf.scanner.dicom.probe`), else they are learned: when the
    first slice of volume ``v + 1`` of a series arrives, the slice count of
    volume ``v`` becomes the series' count and volume ``v`` is released. The
    cost of learning: the first volume is released late (at the first slice
    of the next volume, about one TR), a series with a single volume is never
    released, and learning assumes volumes arrive in order (slices within a
    volume may be shuffled). Later volumes complete on their last slice. Configure
    ``n_slices`` when the header lacks it and latency matters.

    Parameters
    ----------
    n_slices : int or None
        Slices per volume (wins over the headers).
    report : callable, optional
        ``report(kind, message)`` for files not used (default: a warning
        each); ``kind`` groups repeats so that a caller can aggregate them.

    Attributes
    ----------
    ignored : list of (Path, str)
        Files not used, with the reason (duplicates, late slices of a
        released volume, headers without volume number or position).
    last_released : int or None
        Volume number of the volume :meth:`add` returned last (with a
        learned count, the volume before the slice just added).
    """

    def __init__(
        self, n_slices: int | None = None, report: Callable[[str, str], None] | None = None, names: FileNames = AS_IS
    ) -> None:
        self.names = names
        self.n_slices = None if n_slices is None else int(check_positive(n_slices, "n_slices"))
        self.report = report
        self.ignored: list[tuple[Path, str]] = []
        self._pending: dict[tuple[str | None, int], _Pending] = {}
        self._released: set[tuple[str | None, int]] = set()
        self._learned: dict[str | None, int] = {}
        self._header: dict[str | None, int] = {}  # the last header count seen per series
        self.last_released: int | None = None  # volume number of the last volume returned by add()
        self._count = 0

    def _ignore(self, path: Path, reason: str, kind: str = "ignored") -> None:
        self.ignored.append((path, reason))
        if self.report is not None:
            self.report(kind, f"ignored {self.names.label(path.name)}: {self.names.redact(str(reason), path)}")
        else:
            log.warning("ignored %s: %s", path, reason)

    def _expected(self, series: str | None, info: DicomInfo) -> int | None:
        if self.n_slices:
            return self.n_slices
        if info.n_slices:
            return info.n_slices
        return self._learned.get(series)

    def add(self, path: str | Path, info: DicomInfo) -> list[Path] | None:
        """Add one slice file; return the volume's slice files when this was its last slice.

        Parameters
        ----------
        path : str or Path
            The slice file (complete: the caller checked ``info.complete``).
        info : DicomInfo
            Its probe result.

        Returns
        -------
        list of Path or None
            All slice files of the completed volume (sorted by slice
            position), or None while the volume is incomplete. When the slice
            count is learned, the returned volume may be the previous one.
        """
        path = Path(path)
        if self.n_slices:
            info = with_slice_count(info, self.n_slices, f"scanner.slices_per_volume = {self.n_slices} used")
        if info.volume_number is None or info.slice_position is None:
            self._ignore(path, "no volume number or slice position in the header")
            return None
        series = info.series_uid
        if info.n_slices:
            self._header[series] = info.n_slices
        key = (series, int(info.volume_number))
        if key in self._released:
            self._ignore(path, f"volume {key[1]} of series {series} was already complete")
            return None
        position = round(float(info.slice_position), _POS_DECIMALS)
        pending = self._pending.get(key)
        released: list[Path] | None = None
        if pending is None:
            pending = self._pending[key] = _Pending(first_seen=self._count)
            released = None if info.n_slices else self._learn(series, key)
        self._count += 1
        if position in pending.slices:
            expected = self._expected(series, info)
            if pending.slices[position] == path:
                self._ignore(path, "same file added twice")
            else:
                hint = ""
                if expected is not None and len(pending.slices) < expected:
                    hint = (f"; it came after {len(pending.slices)} of the {expected} slices per volume expected: "
                            "if every volume does this, the slice count is wrong for this series ("
                            f"{'check' if self.n_slices else 'set'} scanner.slices_per_volume)")
                self._ignore(path, f"duplicate slice at {position} mm of volume {key[1]} "
                                   f"(already have {self.names.label(pending.slices[position].name)}){hint}",
                             kind=f"duplicate:{series}")
            return released
        pending.slices[position] = path
        expected = self._expected(series, info)
        if expected is not None and len(pending.slices) >= expected:
            if len(pending.slices) > expected:
                log.warning("volume %s of %s has %d slices, expected %d", key[1], series, len(pending.slices), expected)
            own = self._release(key)
            if released is not None:  # cannot happen with a known count; keep both for safety
                log.warning("two volumes completed by one slice; returning volume %s", key[1])
            return own
        return released

    def _learn(self, series: str | None, key: tuple[str | None, int]) -> list[Path] | None:
        """A new volume started: learn the slice count from the previous one when nothing else gives it."""
        if self.n_slices or series in self._learned:
            return None
        previous = (series, key[1] - 1)
        if previous in self._pending:
            n = len(self._pending[previous].slices)
            self._learned[series] = n
            log.info("series %s: learned %d slices per volume", series, n)
            return self._release(previous)
        return None

    def _release(self, key: tuple[str | None, int]) -> list[Path]:
        pending = self._pending.pop(key)
        self._released.add(key)
        self.last_released = key[1]
        return [pending.slices[p] for p in sorted(pending.slices)]

    def expected(self, series: str | None) -> int | None:
        """Slices per volume of ``series`` as known now (configured, last header seen, or learned)."""
        return self.n_slices or self._header.get(series) or self._learned.get(series)

    def overdue(self, series: str | None, number: int) -> list[tuple[int, list[Path], int | None]]:
        """Give up the volumes of ``series`` before ``number`` that are still incomplete.

        Called when volume ``number`` completed: scanners write volumes in
        order, so the earlier ones will not complete any more. Returns
        ``(volume_number, slice files received, slices expected)`` for each,
        in order; their late slices are ignored.
        """
        out = []
        for key in sorted(k for k in self._pending if k[0] == series and k[1] < number):
            pending = self._pending.pop(key)
            out.append((key[1], [pending.slices[p] for p in sorted(pending.slices)], self.expected(series)))
            self._released.add(key)
        return out

    def pending(self) -> dict[tuple[str | None, int], int]:
        """Volumes started but not complete: ``{(series_uid, volume_number): slices received}``."""
        return {k: len(v.slices) for k, v in self._pending.items()}
