"""Export a synthetic run at TR pace, the way a scanner's real-time export does.

The spec's ``format`` chooses the files: one NIfTI-1 file per volume (below),
one Siemens mosaic DICOM per volume, or one DICOM per slice with the slices
of a volume written spread over its TR (:mod:`scanner_sim.dicom_writer`). The
spec's ``faults`` (or the ``faults`` argument) are injected by
:mod:`scanner_sim.export`, which documents the timeline, the faults on disk and
``files.tsv`` / ``faults.tsv``.

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
``reference.nii.gz``, ``region-<name>_mask.nii.gz``, and for runs with
realistic or real noise ``nuisance.tsv``/``.json``, ``physio.tsv.gz``/``.json``,
the weight maps and ``noise_source.json``
(:meth:`scanner_sim.synth.SyntheticRun.write_noise_truth`) (before the first volume)
``files.tsv`` (one flushed row per file) and ``faults.tsv`` (one row per injected
fault).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .export import (FAULTS_TSV_COLUMNS, FILES_TSV_COLUMNS, MAIN, WRITE_MODES, FileSlot, WriteSummary,
                     export_run, write_file)
from .spec import Faults, RunSpec
from .synth import SyntheticRun

__all__ = ["ScannerWriter", "WriteSummary", "WRITE_MODES", "FILES_TSV_COLUMNS", "FAULTS_TSV_COLUMNS",
           "to_nifti_bytes", "SECOND_SERIES_SCALE"]

if TYPE_CHECKING:
    from .physio_stream import PhysioStreamOptions

logger = logging.getLogger(__name__)

_INT16 = np.iinfo(np.int16)
#: A second series (fault) shows the run's noise-free reference scaled by this factor.
SECOND_SERIES_SCALE = 0.8


def to_nifti_bytes(data: np.ndarray, affine: np.ndarray, tr_s: float, acq_time: float,
                   echo_time_ms: float | None = None) -> bytes:
    """Single-file NIfTI-1 bytes: int16 (rounded, clipped), pixdim[4] = TR, mm/s units.

    The header ``descrip`` is ``acq_time=<unix seconds, 3 decimals>``, the
    nominal acquisition start of the volume, and for one echo of a
    multi-echo run ``;TE=<ms>`` (as dcm2niix writes it).
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
    te = "" if echo_time_ms is None else f";TE={echo_time_ms:g}"
    hdr["descrip"] = f"acq_time={acq_time:.3f}{te}".encode()
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
        files = spec.n_slices if spec.format == "dicom-slices" else 1
        busy = files * (n_chunks - 1) * self.chunk_delay_s
        if busy >= self.period_s:
            # one file would still be in progress when the next is due: pacing would slip
            logger.warning(
                "files per volume * (n_chunks - 1) * chunk_delay_s = %.3f s >= tr_s / speed = %.3f s; "
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
        # nuisance and physiological traces, weights, the real series used: only for runs that have them
        run.write_noise_truth(truth_dir)
        run.write_multiecho_truth(truth_dir)
        return truth_dir

    # ----------------------------------------------------------------- file writing
    def _write_file(self, path: Path, payload: bytes, start_mono: float) -> None:
        """Write ``payload`` to ``path`` in chunks, the first at ``start_mono`` (monotonic clock)."""
        write_file(path, payload, self.mode, self.n_chunks, self.chunk_delay_s, start_mono)

    def write_run(
        self,
        run: SyntheticRun,
        truth_dir: str | Path,
        stop_event: threading.Event | None = None,
        start_delay_s: float = 0.0,
        faults: Faults | None = None,
        physio: "PhysioStreamOptions | None" = None,
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
        faults : Faults, optional
            Faults to inject; default the spec's ``faults`` (none if unset).
        physio : PhysioStreamOptions, optional
            Write the physiological recording as it happens (a log beside the
            images, an LSL outlet; :mod:`scanner_sim.physio_stream`); needs ``[physio]``.

        Returns
        -------
        WriteSummary
        """
        _check("start_delay_s", start_delay_s,
               isinstance(start_delay_s, (int, float)) and start_delay_s >= 0, "a number >= 0 (seconds)")
        if run.spec != self.spec:
            raise ValueError("Invalid value for 'run': its spec differs from the writer's. Allowed: the same RunSpec.")
        faults = faults if faults is not None else self.spec.faults
        if faults is not None:  # volume indices against this run
            faults = Faults.from_dict(faults.to_dict(), self.spec.n_volumes)
        producer = SyntheticProducer(run)
        if faults is not None and faults.second_series is not None:
            producer.set_second_series(faults.second_series[1], faults.second_series[2])
        self.export_dir.mkdir(parents=True, exist_ok=True)
        companions = []
        if physio is not None and (physio.log is not None or physio.lsl_name is not None):
            from .physio_stream import PhysioStream

            if run.physio_traces is None:
                raise ValueError("Invalid value for 'physio': a physiological recording needs [physio] in the spec "
                                 "(cardiac_pct or resp_pct > 0).")
            companions.append(PhysioStream(run.physio_traces, self.export_dir, physio))
        truth_dir = self.write_truth(run, truth_dir)
        return export_run(
            producer, self.export_dir, truth_dir, tr_s=self.spec.tr_s, mode=self.mode, n_chunks=self.n_chunks,
            chunk_delay_s=self.chunk_delay_s, speed=self.speed, recon_delay_s=self.recon_delay_s, faults=faults,
            seed=self.spec.seed, stop_event=stop_event, start_delay_s=start_delay_s, companions=companions,
        )


class SyntheticProducer:
    """A :class:`SyntheticRun` as files of the spec's ``format`` (see :mod:`scanner_sim.export`).

    The second series (fault) shows the noise-free reference scaled by
    :data:`SECOND_SERIES_SCALE`, with the fault's series number in file names
    and DICOM headers (its own SeriesInstanceUID).
    """

    def __init__(self, run: SyntheticRun) -> None:
        self.run = run
        self.spec = run.spec
        self.n_volumes = run.spec.n_volumes
        self.series = run.spec.series
        faults = run.spec.faults
        self.series2 = faults.second_series[1] if faults and faults.second_series else self.series + 1
        self._geo = None
        self._info: dict[str, object] = {}
        if self.spec.format != "nifti":
            from .dicom_writer import DicomSeriesInfo, geometry_from_affine

            self._geo = geometry_from_affine(run.affine, self.spec.shape)
            n2 = faults.second_series[2] if faults and faults.second_series else 1
            self._info = {
                MAIN: DicomSeriesInfo(self.series, self.spec.tr_s, self.n_volumes, self.spec.seed),
                "second": DicomSeriesInfo(self.series2, self.spec.tr_s, n2, self.spec.seed, "scanner_sim_other"),
            }

    def set_second_series(self, series: int, n_volumes: int) -> None:
        """Series number and length of the second series (fault)."""
        self.series2 = series
        if self._info:
            from .dicom_writer import DicomSeriesInfo

            self._info["second"] = DicomSeriesInfo(series, self.spec.tr_s, n_volumes, self.spec.seed,
                                                   "scanner_sim_other")

    def slots(self, volume: int, role: str) -> list[FileSlot]:
        spec = self.spec
        ser = self.series if role == MAIN else self.series2
        if spec.multiecho is not None and role == MAIN:  # one file per echo, in echo order
            return [FileSlot(spec.filename(volume, series=ser, echo=e), None, 0.0, spec.tr_s)
                    for e in range(spec.multiecho.n_echoes)]
        if spec.format != "dicom-slices":
            return [FileSlot(spec.filename(volume, series=ser), None, 0.0, spec.tr_s)]
        ns = spec.n_slices
        return [FileSlot(spec.filename(volume, s, ser), s, s * spec.tr_s / ns, (s + 1) * spec.tr_s / ns)
                for s in range(ns)]

    def payloads(self, volume: int, role: str, t_acq: Sequence[float]) -> list[bytes]:
        from . import dicom_writer as dw

        run, spec = self.run, self.spec
        if spec.multiecho is not None and role == MAIN:
            return self._echo_payloads(volume, t_acq[0])
        data = run.volume(volume) if role == MAIN else run.reference * np.float32(SECOND_SERIES_SCALE)
        if spec.format == "nifti":
            return [to_nifti_bytes(data, run.affine, spec.tr_s, t_acq[0])]
        info = self._info[role]
        if spec.format == "siemens-mosaic":
            return [dw.mosaic_bytes(data, run.affine, info, volume, t_acq[0], self._geo)]  # type: ignore[arg-type]
        stored = dw.stored_volume(data, "dicom-slices")
        return [dw.slice_bytes(stored, run.affine, info, volume, s, t_acq[s], self._geo)  # type: ignore[arg-type]
                for s in range(spec.n_slices)]

    def _echo_payloads(self, volume: int, t_acq: float) -> list[bytes]:
        """One file per echo of a multi-echo run: NIfTI with ``TE=`` in ``descrip``, or a mosaic with
        EchoNumbers and EchoTime."""
        from . import dicom_writer as dw

        run, spec = self.run, self.spec
        tes = spec.multiecho.echo_times_ms  # type: ignore[union-attr]
        echoes = run.echo_volumes(volume)
        if spec.format == "nifti":
            return [to_nifti_bytes(data, run.affine, spec.tr_s, t_acq, te) for data, te in zip(echoes, tes)]
        return [dw.mosaic_bytes(data, run.affine, self._info[MAIN], volume, t_acq, self._geo,  # type: ignore[arg-type]
                                echo=(e + 1, te)) for e, (data, te) in enumerate(zip(echoes, tes))]
