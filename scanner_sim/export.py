"""The export engine: files of a run written at TR pace, with optional scanner faults.

Both :class:`scanner_sim.writer.ScannerWriter` (synthetic runs) and
:class:`scanner_sim.replay.Replayer` (real series) describe their run as a
:class:`Producer` (which files each volume has, when each is written, and their
bytes); :func:`export_run` plans every write, injects the faults, and writes.

Timeline (wall clock; ``P = tr_s / speed``; ``o`` a file's write offset in
scanner seconds: ``tr_s`` for one file per volume, ``(s + 1) * tr_s / n_slices``
for slice ``s`` of a per-slice series)::

    t_acquired  = t0 + v * P (+ s * P / n_slices for slice s)
    write start = t0 + v * P + o / speed + recon_delay_s   (+ fault delays)

Files are written one at a time in order of their planned start (a file whose
time has passed is written at once), each with the ``chunked`` / ``reopen`` /
``atomic`` mode of :func:`write_file`.

Faults on disk (all times are scanner seconds, divided by ``speed``)
--------------------------------------------------------------------
``drop``
    no file of the volume is ever written; no ``files.tsv`` row.
``late``
    the volume's files start ``delay_s`` late; later volumes keep their times.
``duplicate``
    every file of the volume is written again ``duplicate_delay_s`` after its
    first write, same name and same bytes (chunked/reopen modes truncate and
    rewrite the existing complete file, so a watcher sees it shrink and grow;
    atomic mode replaces it). ``files.tsv`` has a second row with
    ``fault = duplicate``.
``out_of_order``
    volume ``v``'s files are written right after volume ``v + 1``'s last file.
``jitter``
    each volume's files are delayed by a uniform random ``[0, jitter_s)``.
``second_series``
    files of another series number (``{series}`` in the file name template;
    SeriesNumber and SeriesInstanceUID in DICOM headers) written half a TR
    after each main volume from ``start_volume`` on; their ``files.tsv`` rows
    carry that series number and ``fault = second_series``.
``vanish``
    just before the first file of volume ``v``, the export folder is renamed
    to the sibling ``<name>.vanished``; files due meanwhile are written into that
    renamed folder (the scanner's storage still exists; only the path is gone),
    and after ``duration_s`` it is renamed back, so those files reappear all
    at once with their final content and no new creation event in the export
    path. (A local inotify watch follows the renamed directory's inode, so it may
    still report those writes, under paths that do not exist until the folder
    returns; a polling watcher sees the folder missing, then every file at
    once.) If something re-created the export folder meanwhile, the files are
    moved into it one by one and the renamed folder removed. ``files.tsv``
    lists them under their final path with ``fault = vanish``.

Truth files
-----------
``files.tsv``: one row per file written, flushed as written, columns
:data:`FILES_TSV_COLUMNS` (``volume`` 0-based within its ``series``;
``slice`` 0-based acquisition order or ``n/a``; ``fault`` ``n/a`` or the fault
names joined by ``+``). ``faults.tsv``: one row per injected fault, written when
it takes effect, columns :data:`FAULTS_TSV_COLUMNS`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .spec import Faults

__all__ = [
    "FileSlot",
    "Producer",
    "WriteSummary",
    "WRITE_MODES",
    "FILES_TSV_COLUMNS",
    "FAULTS_TSV_COLUMNS",
    "write_file",
    "export_run",
    "vanished_dir",
]

logger = logging.getLogger(__name__)

WRITE_MODES = ("chunked", "reopen", "atomic")
FILES_TSV_COLUMNS = ("volume", "path", "t_acquired", "t_write_start", "t_finished", "n_bytes", "sha256",
                     "series", "slice", "fault")
FAULTS_TSV_COLUMNS = ("volume", "fault", "detail", "series", "t")
MAIN, SECOND = "main", "second"


@dataclass(frozen=True)
class FileSlot:
    """One file of one volume, as planned.

    Attributes
    ----------
    name : str
        File name in the export folder.
    slice : int or None
        0-based slice (acquisition order) for per-slice series, else None.
    acq_offset_s : float
        Acquisition start of this file's data after the volume's, scanner seconds.
    write_offset_s : float
        When the file is written after the volume's acquisition start, scanner
        seconds (before ``recon_delay_s``).
    """

    name: str
    slice: int | None
    acq_offset_s: float
    write_offset_s: float


class Companion(Protocol):
    """Something that runs beside an export on its clock (the physiological recording)."""

    def start(self, t0_wall: float, t0_mono: float, speed: float, stop: threading.Event) -> None:
        """Begin: scanner time 0 (volume 0's acquisition start) is ``t0_wall`` / ``t0_mono``."""

    def finish(self) -> None:
        """The export is over."""


class Producer(Protocol):
    """What :func:`export_run` needs from a run (synthetic or replayed)."""

    n_volumes: int
    series: int

    def slots(self, volume: int, role: str) -> list[FileSlot]:
        """Files of 0-based ``volume`` of the main (``"main"``) or second (``"second"``) series."""

    def payloads(self, volume: int, role: str, t_acq: Sequence[float]) -> list[bytes]:
        """Bytes of each slot; ``t_acq`` is each file's wall-clock acquisition time."""


@dataclass(frozen=True)
class WriteSummary:
    """What a run's export did.

    Attributes
    ----------
    n_written : int
        Main-series volumes whose files are all complete.
    duration_s : float
        Wall time from the first acquisition start to the last file finished.
    aborted : bool
        True if ``stop_event`` ended the run early.
    t0 : float
        Wall time (UNIX s) of the acquisition start of volume 0.
    n_files : int
        Files written (all series, duplicates included).
    """

    n_written: int
    duration_s: float
    aborted: bool
    t0: float
    n_files: int = 0


def write_file(path: Path, payload: bytes, mode: str, n_chunks: int, chunk_delay_s: float,
               start_mono: float | None = None) -> None:
    """Write ``payload`` to ``path`` in ``n_chunks`` pieces ``chunk_delay_s`` apart.

    ``chunked``: one open, several flushed writes, one close. ``reopen``:
    open-append-close per piece (a close event on a partial file). ``atomic``:
    pieces go to ``.<name>.part`` in the same folder, then ``os.replace``.
    """
    start_mono = time.monotonic() if start_mono is None else start_mono
    bounds = np.linspace(0, len(payload), n_chunks + 1).round().astype(int)
    pieces = [payload[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def pause(k: int) -> None:
        # absolute deadlines inside the file too, so slow writes do not accumulate
        if k > 0:
            _sleep_until(start_mono + k * chunk_delay_s)

    if mode == "reopen":
        for k, piece in enumerate(pieces):
            pause(k)
            with open(path, "wb" if k == 0 else "ab") as fh:
                fh.write(piece)
        return
    target = path.with_name(f".{path.name}.part") if mode == "atomic" else path
    with open(target, "wb") as fh:
        for k, piece in enumerate(pieces):
            pause(k)
            fh.write(piece)
            fh.flush()  # make each piece visible to readers, as a network exporter would
    if mode == "atomic":
        os.replace(target, path)


def vanished_dir(export_dir: Path) -> Path:
    """Where the export folder is while a ``vanish`` fault holds it away."""
    return export_dir.parent / f"{export_dir.name}.vanished"


def _sleep_until(deadline_mono: float) -> None:
    remaining = deadline_mono - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


# --------------------------------------------------------------------------- planning
@dataclass(order=True)
class _Job:
    due: float  # wall seconds after t0
    seq: int
    kind: str = field(compare=False)  # file | note | vanish | return
    role: str = field(compare=False, default=MAIN)
    volume: int = field(compare=False, default=-1)
    slot: int = field(compare=False, default=-1)
    t_acq: float = field(compare=False, default=0.0)  # seconds after t0
    faults: tuple[str, ...] = field(compare=False, default=())
    copy: bool = field(compare=False, default=False)
    notes: list = field(compare=False, default_factory=list)  # (volume, fault, detail, series)
    arg: float = field(compare=False, default=0.0)


def _plan(producer: Producer, faults: Faults, period: float, speed: float, recon: float,
          seed: int) -> list[_Job]:
    n = producer.n_volumes
    seq = iter(range(10**9))
    jobs: list[_Job] = []
    by_volume: dict[int, list[_Job]] = {}
    jitter = np.zeros(n)
    if faults.jitter_s > 0:
        jitter = np.random.default_rng([faults.seed if faults.seed is not None else seed, 3]).uniform(
            0, faults.jitter_s, n)
    late = dict(faults.late)
    series = producer.series
    for v in range(n):
        slots = producer.slots(v, MAIN)
        base = v * period
        if v in faults.drop:
            jobs.append(_Job(base + slots[0].write_offset_s / speed + recon, next(seq), "note", volume=v,
                             notes=[(v, "drop", f"never written ({len(slots)} file(s))", series)]))
            continue
        delay, tags, notes = 0.0, [], []
        if faults.jitter_s > 0:
            delay += jitter[v] / speed
            tags.append("jitter")
            notes.append((v, "jitter", f"delay_s={jitter[v]:.4f}", series))
        if v in late:
            delay += late[v] / speed
            tags.append("late")
            notes.append((v, "late", f"delay_s={late[v]:g}", series))
        vj = []
        for k, slot in enumerate(slots):
            vj.append(_Job(base + slot.write_offset_s / speed + recon + delay, next(seq), "file", MAIN, v, k,
                           base + slot.acq_offset_s / speed, tuple(tags)))
        vj[0].notes.extend(notes)
        by_volume[v] = vj
        jobs.extend(vj)
    for v in faults.out_of_order:
        after = max(j.due for j in by_volume[v + 1])
        for k, j in enumerate(by_volume[v]):
            j.due = after + 1e-6 * (k + 1)
            j.faults = j.faults + ("out_of_order",)
        by_volume[v][0].notes.append((v, "out_of_order", f"written after volume {v + 1}", series))
    for v in faults.duplicate:
        copies = []
        for j in by_volume[v]:
            copies.append(_Job(j.due + faults.duplicate_delay_s / speed, next(seq), "file", MAIN, v, j.slot,
                               j.t_acq, j.faults + ("duplicate",), copy=True))
        copies[0].notes.append((v, "duplicate", f"written again {faults.duplicate_delay_s:g} s after, "
                                               "same name and bytes", series))
        jobs.extend(copies)
    if faults.second_series is not None:
        start, s2, n2 = faults.second_series
        for k in range(n2):
            base = (start + k + 0.5) * period
            kj = [_Job(base + slot.write_offset_s / speed + recon, next(seq), "file", SECOND, k, i,
                       base + slot.acq_offset_s / speed, ("second_series",))
                  for i, slot in enumerate(producer.slots(k, SECOND))]
            if k == 0:
                kj[0].notes.append((start, "second_series",
                                    f"series {s2} starts ({n2} volume(s), first file "
                                    f"{producer.slots(0, SECOND)[0].name})", s2))
            jobs.extend(kj)
    for v, dur in faults.vanish:
        first = min((j.due for j in by_volume.get(v, [])),
                    default=v * period + producer.slots(v, MAIN)[0].write_offset_s / speed + recon)
        jobs.append(_Job(first - 1e-4, next(seq), "vanish", volume=v, arg=dur))
        jobs.append(_Job(first - 1e-4 + dur / speed, next(seq), "return", volume=v, arg=dur))
    jobs.sort()
    return jobs


# --------------------------------------------------------------------------- writing
def export_run(
    producer: Producer,
    export_dir: str | Path,
    truth_dir: str | Path,
    *,
    tr_s: float,
    mode: str = "chunked",
    n_chunks: int = 4,
    chunk_delay_s: float = 0.01,
    speed: float = 1.0,
    recon_delay_s: float = 0.05,
    faults: Faults | None = None,
    seed: int = 0,
    stop_event: threading.Event | None = None,
    start_delay_s: float = 0.0,
    companions: Sequence["Companion"] = (),
) -> WriteSummary:
    """Write every file of ``producer`` at TR pace into ``export_dir``.

    ``files.tsv`` and ``faults.tsv`` go to ``truth_dir`` (created if missing).
    See the module docstring for the timeline and the faults. ``companions``
    (the physiological recording, :class:`scanner_sim.physio_stream.PhysioStream`)
    start with volume 0's clock and finish when the export ends.
    """
    export_dir = Path(export_dir)
    truth_dir = Path(truth_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    export_abs = export_dir.resolve()
    away = vanished_dir(export_abs)
    faults = faults or Faults()
    period = tr_s / speed
    stop = stop_event or threading.Event()
    jobs = _plan(producer, faults, period, speed, recon_delay_s, seed)

    # payloads are made in acquisition order (a synthetic run's noise is a recursion) and
    # kept until the last file (or copy) of their volume is written
    pending: dict[tuple[str, int], int] = {}
    for j in jobs:
        if j.kind == "file":
            pending[(j.role, j.volume)] = pending.get((j.role, j.volume), 0) + 1
    originals_left = {v: sum(1 for j in jobs if j.kind == "file" and j.role == MAIN and j.volume == v and not j.copy)
                      for v in range(producer.n_volumes)}
    cache: dict[tuple[str, int], list[bytes]] = {}
    slots_of: dict[tuple[str, int], list[FileSlot]] = {}
    t_acq_of: dict[tuple[str, int], list[float]] = {}
    for j in jobs:
        if j.kind == "file" and not j.copy:
            t_acq_of.setdefault((j.role, j.volume), {})[j.slot] = j.t_acq  # type: ignore[index]

    t0_wall = time.time() + start_delay_s
    t0_mono = time.monotonic() + start_delay_s
    for companion in companions:
        companion.start(t0_wall, t0_mono, speed, stop)

    def payload(role: str, v: int, k: int) -> bytes:
        key = (role, v)
        if key not in cache:
            todo = [v]
            if role == MAIN:
                todo = [u for u in range(v) if (MAIN, u) in pending and (MAIN, u) not in cache] + [v]
            for u in todo:
                acq = t_acq_of[(role, u)]
                cache[(role, u)] = producer.payloads(u, role, [t0_wall + acq[i] for i in sorted(acq)])
        return cache[key][k]

    def slot(role: str, v: int, k: int) -> FileSlot:
        key = (role, v)
        if key not in slots_of:
            slots_of[key] = producer.slots(v, role)
        return slots_of[key][k]

    n_written = n_files = 0
    aborted = False
    t_last = t0_wall
    away_files: list[str] = []
    is_away = False
    s2 = faults.second_series[1] if faults.second_series else producer.series
    with open(truth_dir / "files.tsv", "w") as ftsv, open(truth_dir / "faults.tsv", "w") as xtsv:
        ftsv.write("\t".join(FILES_TSV_COLUMNS) + "\n")
        xtsv.write("\t".join(FAULTS_TSV_COLUMNS) + "\n")
        ftsv.flush()
        xtsv.flush()

        def note(rows: list, t: float) -> None:
            for v, name, detail, ser in rows:
                xtsv.write(f"{v}\t{name}\t{detail}\t{ser}\t{t:.6f}\n")
            if rows:
                xtsv.flush()

        for job in jobs:
            if stop.is_set():
                aborted = True
                break
            blob = payload(job.role, job.volume, job.slot) if job.kind == "file" else b""
            if stop.wait(max(0.0, t0_mono + job.due - time.monotonic())):
                aborted = True
                break
            if job.kind == "note":
                note(job.notes, time.time())
                continue
            if job.kind == "vanish":
                if export_abs.exists() and not is_away:
                    if away.exists():
                        shutil.rmtree(away)
                    os.rename(export_abs, away)
                    is_away, away_files = True, []
                    logger.debug("export folder renamed away to %s", away)
                continue
            if job.kind == "return":
                if is_away:
                    if export_abs.exists():  # re-created meanwhile: move our files into it
                        for entry in os.listdir(away):
                            os.replace(away / entry, export_abs / entry)
                        os.rmdir(away)
                    else:
                        os.rename(away, export_abs)
                    is_away = False
                    note([(job.volume, "vanish",
                           f"export folder renamed to {away.name} for {job.arg:g} s; files written meanwhile "
                           f"(now back): {','.join(away_files) or 'none'}", producer.series)], time.time())
                continue
            sl = slot(job.role, job.volume, job.slot)
            folder = away if is_away else export_abs
            t_write = time.time()
            write_file(folder / sl.name, blob, mode, n_chunks, chunk_delay_s, time.monotonic())
            t_fin = time.time()
            n_files += 1
            tags = job.faults + (("vanish",) if is_away else ())
            if is_away:
                away_files.append(sl.name)
            row = (job.volume, str(export_abs / sl.name), f"{t0_wall + job.t_acq:.6f}", f"{t_write:.6f}",
                   f"{t_fin:.6f}", len(blob), hashlib.sha256(blob).hexdigest(),
                   producer.series if job.role == MAIN else s2,
                   "n/a" if sl.slice is None else sl.slice, "+".join(tags) or "n/a")
            ftsv.write("\t".join(map(str, row)) + "\n")
            ftsv.flush()
            note(job.notes, t_fin)
            t_last = t_fin
            key = (job.role, job.volume)
            pending[key] -= 1
            if pending[key] == 0:
                del pending[key]
                cache.pop(key, None)
            if job.role == MAIN and not job.copy:
                originals_left[job.volume] -= 1
                if originals_left[job.volume] == 0:
                    n_written += 1
            logger.debug("%s written (%d bytes, %.1f ms after plan)", sl.name, len(blob),
                         1000 * (t_write - (t0_wall + job.due)))
        if is_away:  # aborted while away: bring the folder back, never leave it missing
            if not export_abs.exists():
                os.rename(away, export_abs)
    for companion in companions:
        companion.finish()
    return WriteSummary(n_written=n_written, duration_s=max(0.0, t_last - t0_wall), aborted=aborted, t0=t0_wall,
                        n_files=n_files)
