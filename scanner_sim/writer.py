"""Export volumes as NIfTI-1 files at TR pace, the way a scanner's real-time export does.

Timeline (wall clock, ``time.time()``; ``T = tr_s / speed``)::

    t_acquired(i)    = t0 + i * T                        nominal acquisition start
    t_write_start(i) = t0 + (i + 1) * T + recon_delay_s  acquired, then reconstructed
    t_finished(i)    = time.time() just after the last close / rename

The file is serialised in memory, then written in ``n_chunks`` pieces with
``chunk_delay_s`` between them. Modes:

``"chunked"``
    one open, several writes, one close (a watcher may see a growing file);
``"reopen"``
    open-append-close per chunk: every close raises an inotify close event on a
    still-partial file, the hardest case for watchers;
``"atomic"``
    chunks go to a hidden ``.<name>.part`` in the same folder, then ``os.replace``.

Ground truth goes to a separate ``truth_dir`` (never the export folder, so a
watcher sees only what a scanner would write): ``truth.tsv``, ``spec.json``,
``reference.nii.gz``, ``region-<name>_mask.nii.gz`` (before the first volume)
and ``files.tsv`` (one flushed row per volume).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import RunSpec
from .synth import SyntheticRun

__all__ = ["ScannerWriter", "WriteSummary", "WRITE_MODES", "FILES_TSV_COLUMNS", "to_nifti_bytes"]

logger = logging.getLogger(__name__)

WRITE_MODES = ("chunked", "reopen", "atomic")
FILES_TSV_COLUMNS = ("volume", "path", "t_acquired", "t_write_start", "t_finished", "n_bytes", "sha256")
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class WriteSummary:
    """What :meth:`ScannerWriter.write_run` did.

    Attributes
    ----------
    n_written : int
        Volumes whose files are complete.
    duration_s : float
        Wall time from the first acquisition start to the last file finished.
    aborted : bool
        True if ``stop_event`` ended the run early.
    t0 : float
        Wall time (UNIX s) of the acquisition start of volume 0.
    """

    n_written: int
    duration_s: float
    aborted: bool
    t0: float


def to_nifti_bytes(data: np.ndarray, affine: np.ndarray, tr_s: float, acq_time: float) -> bytes:
    """Single-file NIfTI-1 bytes: int16 (rounded, clipped), pixdim[4] = TR, mm/s units.

    The header ``descrip`` is ``acq_time=<unix seconds, 3 decimals>``, the
    nominal acquisition start of the volume.
    """
    import nibabel as nib

    arr = np.clip(np.round(data), _INT16.min, _INT16.max).astype(np.int16)
    img = nib.Nifti1Image(arr, affine)
    hdr = img.header
    hdr.set_data_dtype(np.int16)
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][4] = tr_s
    # no scaling: readers get the int16 values as they are
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    img.set_qform(affine, code="scanner")
    img.set_sform(affine, code="scanner")
    hdr["descrip"] = f"acq_time={acq_time:.3f}".encode()
    return img.to_bytes()


def _check(name: str, value: object, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"Invalid value for '{name}': {value!r}. Allowed: {allowed}.")


class ScannerWriter:
    """Write a run's volumes into an export folder at TR pace.

    Parameters
    ----------
    export_dir : str or Path
        Folder the scanner exports into (created if missing).
    spec : RunSpec
        The run (TR, file names).
    mode : {"chunked", "reopen", "atomic"}
        How each file is written (see module docstring).
    n_chunks : int
        Pieces each file is written in (>= 1).
    chunk_delay_s : float
        Pause between pieces, in seconds (>= 0).
    speed : float
        Time compression (> 0): 2.0 runs twice as fast as real time.
    recon_delay_s : float
        Delay between the end of a volume's acquisition and its first byte, in seconds (>= 0).
    """

    def __init__(
        self,
        export_dir: str | Path,
        spec: RunSpec,
        mode: str = "chunked",
        n_chunks: int = 4,
        chunk_delay_s: float = 0.01,
        speed: float = 1.0,
        recon_delay_s: float = 0.05,
    ) -> None:
        _check("mode", mode, mode in WRITE_MODES, " or ".join(repr(m) for m in WRITE_MODES))
        _check("n_chunks", n_chunks, isinstance(n_chunks, int) and not isinstance(n_chunks, bool) and n_chunks >= 1,
               "an integer >= 1")
        for name, v, strict in (("chunk_delay_s", chunk_delay_s, False), ("speed", speed, True),
                                ("recon_delay_s", recon_delay_s, False)):
            num = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            _check(name, v, num and (v > 0 if strict else v >= 0),
                   f"a number {'>' if strict else '>='} 0" + ("" if name == "speed" else " (seconds)"))
        self.export_dir = Path(export_dir)
        self.spec = spec
        self.mode = mode
        self.n_chunks = n_chunks
        self.chunk_delay_s = float(chunk_delay_s)
        self.speed = float(speed)
        self.recon_delay_s = float(recon_delay_s)
        self.period_s = spec.tr_s / self.speed
        busy = (n_chunks - 1) * self.chunk_delay_s
        if busy >= self.period_s:
            # one file would still be in progress when the next is due: pacing would slip
            logger.warning(
                "(n_chunks - 1) * chunk_delay_s = %.3f s >= tr_s / speed = %.3f s; "
                "writes will lag behind the TR pace.", busy, self.period_s,
            )

    # ----------------------------------------------------------------- truth files
    def write_truth(self, run: SyntheticRun, truth_dir: str | Path) -> Path:
        """Write the static truth files (spec, truth table, reference, region masks)."""
        import nibabel as nib

        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        (truth_dir / "spec.json").write_text(json.dumps(run.spec.to_dict(), indent=2) + "\n")
        run.truth.to_tsv(truth_dir / "truth.tsv")
        nib.save(nib.Nifti1Image(run.reference.astype(np.float32), run.affine), truth_dir / "reference.nii.gz")
        for name, m in run.region_masks.items():
            nib.save(nib.Nifti1Image(m.astype(np.uint8), run.affine), truth_dir / f"region-{name}_mask.nii.gz")
        return truth_dir

    # ----------------------------------------------------------------- file writing
    def _write_file(self, path: Path, payload: bytes, start_mono: float) -> None:
        """Write ``payload`` to ``path`` in chunks, the first at ``start_mono`` (monotonic clock)."""
        bounds = np.linspace(0, len(payload), self.n_chunks + 1).round().astype(int)
        pieces = [payload[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

        def pause(k: int) -> None:
            # absolute deadlines inside the file too, so slow writes do not accumulate
            if k > 0:
                _sleep_until(start_mono + k * self.chunk_delay_s)

        if self.mode == "reopen":
            for k, piece in enumerate(pieces):
                pause(k)
                with open(path, "wb" if k == 0 else "ab") as fh:
                    fh.write(piece)
            return
        target = path.with_name(f".{path.name}.part") if self.mode == "atomic" else path
        with open(target, "wb") as fh:
            for k, piece in enumerate(pieces):
                pause(k)
                fh.write(piece)
                fh.flush()  # make each piece visible to readers, as a network exporter would
        if self.mode == "atomic":
            os.replace(target, path)

    def write_run(
        self,
        run: SyntheticRun,
        truth_dir: str | Path,
        stop_event: threading.Event | None = None,
        start_delay_s: float = 0.0,
    ) -> WriteSummary:
        """Write every volume of ``run`` at TR pace, with ground truth in ``truth_dir``.

        Parameters
        ----------
        run : SyntheticRun
            The run to export.
        truth_dir : str or Path
            Folder for the truth files (not the export folder).
        stop_event : threading.Event, optional
            When set, the run stops before the next file is started (a file in
            progress is always completed, so no file is left partial).
        start_delay_s : float
            Seconds between this call's setup and the acquisition start of volume 0.

        Returns
        -------
        WriteSummary
        """
        _check("start_delay_s", start_delay_s,
               isinstance(start_delay_s, (int, float)) and start_delay_s >= 0, "a number >= 0 (seconds)")
        if run.spec != self.spec:
            raise ValueError("Invalid value for 'run': its spec differs from the writer's. Allowed: the same RunSpec.")
        self.export_dir.mkdir(parents=True, exist_ok=True)
        truth_dir = self.write_truth(run, truth_dir)
        files_tsv = truth_dir / "files.tsv"
        stop = stop_event or threading.Event()

        # Pair the wall clock (reported) with the monotonic clock (slept on),
        # so a wall-clock adjustment mid-run cannot break the pacing.
        t0_wall = time.time() + start_delay_s
        t0_mono = time.monotonic() + start_delay_s
        n_written, aborted, t_last = 0, False, t0_wall
        with open(files_tsv, "w") as ftsv:
            ftsv.write("\t".join(FILES_TSV_COLUMNS) + "\n")
            ftsv.flush()
            for i in range(self.spec.n_volumes):
                if stop.is_set():
                    aborted = True
                    break
                offset = (i + 1) * self.period_s + self.recon_delay_s
                t_acq = t0_wall + i * self.period_s
                # synthesise while the volume is being "acquired"
                payload = to_nifti_bytes(run.volume(i), run.affine, self.spec.tr_s, t_acq)
                if stop.wait(max(0.0, t0_mono + offset - time.monotonic())):
                    aborted = True
                    break
                path = (self.export_dir / self.spec.filename(i)).resolve()
                t_write = time.time()
                self._write_file(path, payload, time.monotonic())
                t_fin = time.time()
                row = (i, str(path), f"{t_acq:.6f}", f"{t_write:.6f}", f"{t_fin:.6f}",
                       len(payload), hashlib.sha256(payload).hexdigest())
                ftsv.write("\t".join(map(str, row)) + "\n")
                ftsv.flush()
                n_written, t_last = i + 1, t_fin
                logger.debug("volume %d written: %s (%d bytes, %.1f ms after nominal)",
                             i, path.name, len(payload), 1000 * (t_write - (t0_wall + offset)))
        return WriteSummary(n_written=n_written, duration_s=max(0.0, t_last - t0_wall), aborted=aborted, t0=t0_wall)


def _sleep_until(deadline_mono: float) -> None:
    remaining = deadline_mono - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
