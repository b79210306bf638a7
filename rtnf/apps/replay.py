"""``rtnf replay``: the live pipeline on a recorded run.

A replay feeds the files of a recorded export folder (NIfTI volumes, DICOM
files of any supported kind, PAR/REC) or the volumes of one 4D NIfTI into the
same run loop, recorder and publisher as ``rtnf run``, either as fast as the
machine allows or at TR pace, so that its outputs are exactly a live run's
(only the timing columns differ). Several recorded runs are replayed in
parallel by a local process pool, or on a Dask cluster.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtnf.scanner.export import Arrival, ExportReader
from rtnf.scanner.volume import Volume

log = logging.getLogger(__name__)


class ReplayFeeder:
    """Feeds a recorded run into the run loop's queue (the watcher's role in a live run).

    Parameters
    ----------
    source : Path
        A folder of exported files, or a 4D NIfTI file.
    export : ExportReader
        The run's reader (file checks; series and slice handling stay the loop's).
    put : callable
        The run loop's queue ``put``.
    pace_s : float
        Seconds between volumes (0: as fast as possible). Files of a folder
        are paced per volume number when the names or headers give one.
    first_volume_number : int
        Number given to the first volume of a 4D NIfTI.
    """

    def __init__(
        self, source: Path, export: ExportReader, put: Callable[[Any], None], pace_s: float = 0.0,
        first_volume_number: int = 1,
    ) -> None:
        self.source = Path(source)
        self.export = export
        self.put = put
        self.pace_s = pace_s
        self.first_volume_number = first_volume_number
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start feeding from a thread of its own."""
        if not self.source.exists():
            raise FileNotFoundError(f"replay source not found: {self.source}")
        self._thread = threading.Thread(target=self._run, name="rtnf-replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop feeding (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        from rtnf.run.session import END_OF_SOURCE

        try:
            if self.source.is_dir():
                self._feed_folder()
            else:
                self._feed_4d()
        except Exception:  # the loop must still learn that the source ended
            log.exception("replay of %s failed", self.source)
        finally:
            self.put(END_OF_SOURCE)

    def _wait_until(self, t: float) -> bool:
        delay = t - time.time()
        return not (delay > 0 and self._stop.wait(delay)) and not self._stop.is_set()

    def _feed_4d(self) -> None:
        import nibabel as nib

        img = nib.load(self.source)
        if len(img.shape) != 4:
            raise ValueError(f"{self.source}: expected a 4D NIfTI (x, y, z, time), got shape {img.shape}")
        affine = np.asarray(img.affine, dtype=np.float64)
        first = self.first_volume_number + dummies_removed(self.source)
        # A BIDS run's slice times (its sidecar's SliceTiming, along the header's slice dimension)
        from rtnf.scanner.nifti import header_slice_axis
        from rtnf.scanner.sidecar import sidecar_slice_times

        axis = header_slice_axis(img.header)
        slice_times = sidecar_slice_times(self.source, int(img.shape[axis]))
        t0 = time.time()
        for i in range(img.shape[3]):
            if not self._wait_until(t0 + i * self.pace_s):
                return

            def load(i: int = i) -> Volume:
                data = np.asarray(img.dataobj[..., i], dtype=np.float32)
                return Volume(data=data, affine=affine, t_acquired=None, path=self.source,
                              slice_times_s=slice_times, slice_axis=axis)

            self.put(Arrival(i + first, [self.source], time.time(), None, load, names=self.export.names))

    def _feed_folder(self) -> None:
        paths = sorted(p for p in self.source.iterdir() if p.is_file() and self.export.matches(p))
        probes = [(p, self.export.check(p)) for p in paths]
        skipped = [p.name for p, probe in probes if probe is None]
        if skipped:
            log.warning("replay: %d files are incomplete or unreadable and skipped (first: %s)", len(skipped), skipped[0])
        groups: dict[Any, list[Any]] = {}
        for path, probe in probes:
            if probe is not None:
                groups.setdefault(_volume_key(path, probe), []).append(probe)
        # Volumes in acquisition order (header numbers first, then file names).
        order = sorted(groups, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, str(k)))
        t0 = time.time()
        for k, key in enumerate(order):
            if not self._wait_until(t0 + k * self.pace_s):
                return
            for probe in groups[key]:
                self.put((probe, time.time()))


class ReplaySourceError(ValueError):
    """A replay source that cannot be replayed: one message for the command to print (exit 2)."""


def check_source(source: Path) -> Path:
    """Check a replay source before any run starts: an export folder, or a readable 4D NIfTI.

    Raises
    ------
    ReplaySourceError
        When it does not exist, or is a file that is not a 4D NIfTI (a 3D
        volume, another format, a broken header).
    """
    source = Path(source)
    if not source.exists():
        raise ReplaySourceError(f"replay source not found: {source}")
    if source.is_dir():
        return source
    import nibabel as nib

    try:
        shape = nib.load(source).shape
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds for a file that is not NIfTI
        raise ReplaySourceError(f"{source}: not a readable NIfTI file ({type(exc).__name__}: {exc}); a replay "
                                "source is an export folder or a 4D NIfTI") from None
    if len(shape) != 4 or shape[3] < 1:
        raise ReplaySourceError(f"{source}: a NIfTI of shape {tuple(shape)}; a replay needs a 4D NIfTI "
                                "(x, y, z, time) or an export folder")
    return source


def sidecar_of(nifti: Path) -> Path:
    """The JSON sidecar beside a NIfTI file (``run_bold.nii.gz`` -> ``run_bold.json``)."""
    name = nifti.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return nifti.with_name(name[: -len(ext)] + ".json")
    return nifti.with_suffix(".json")


def dummies_removed(nifti: Path) -> int:
    """Dummy volumes already taken out of a 4D NIfTI, as its sidecar says (rtnf's own ``desc-rtnf_bold.nii``).

    A scanner's run file holds its dummies (0 here); rtnf's 4D file holds the
    kept volumes only, and its sidecar says ``"dummies_removed": true`` with
    ``"n_dummy_volumes"``: its first volume is then acquisition
    ``n_dummy_volumes`` and the replay numbers it so.
    """
    import json

    path = sidecar_of(Path(nifti))
    if not path.is_file():
        return 0
    try:
        side = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("replay: cannot read %s (%s); the volumes are taken to include the dummies", path, exc)
        return 0
    if not side.get("dummies_removed"):
        return 0
    n = side.get("n_dummy_volumes", 0)
    if isinstance(n, int) and n > 0:
        log.info("replay: %s holds kept volumes only (%d dummy volumes removed, per %s)", nifti.name, n, path.name)
        return n
    return 0


def replay_label(sets: dict[str, Any]) -> str:
    """The replay's derivatives folder name: ``replay``, or ``replay-<key>-<value>+...`` for its ``--set`` overrides."""
    import hashlib
    import re

    if not sets:
        return "replay"
    parts = [re.sub(r"[^A-Za-z0-9._-]", "", f"{key}-{value}") for key, value in sorted(sets.items())]
    label = "replay-" + "+".join(parts)
    if len(label) > 120:  # keep the folder name usable; the copied config lists them all
        digest = hashlib.sha1(label.encode()).hexdigest()[:8]
        label = label[:111] + "-" + digest
    return label


def _overrides_comment(overrides: dict[str, Any]) -> str:
    """TOML comment lines naming the overrides a replay used, for the copied config."""
    if not overrides:
        return ""
    lines = ["", "# rtnf replay: applied on top of this file (--set, --run, --output-dir, --export-dir):"]
    lines += [f"# {key} = {value!r}" for key, value in sorted(overrides.items())]
    return "\n".join(lines) + "\n"


def _volume_key(path: Path, probe: Any) -> Any:
    info = getattr(probe, "info", None)
    number = getattr(info, "volume_number", None)
    return number if number is not None else path.name


@dataclass
class ReplayJob:
    """One recorded run to replay with one config."""

    config: Path
    source: Path
    overrides: dict[str, Any]
    pace: str = "fast"  # "fast" or "tr"
    speed: float = 1.0
    overwrite: bool = False
    # Derivatives folder under output.dir that the replay writes into, never the live run's record
    # (see replay_label); empty: output.dir itself.
    label: str = "replay"


def replay_one(job: ReplayJob, on_volume: Callable[[dict, dict], None] | None = None) -> dict[str, Any]:
    """Replay one run in this process; returns a summary (picklable, for process pools and Dask)."""
    from rtnf.config import load_config
    from rtnf.run.session import run_session

    overrides = dict(job.overrides)
    overrides.setdefault("publish.address", f"inproc://rtnf-replay-{uuid.uuid4().hex}")
    cfg = load_config(job.config, overrides)
    if job.label:  # a folder of its own: a replay never writes into a live run's record
        overrides["output.dir"] = str(Path(cfg.output.dir) / job.label)
        cfg = load_config(job.config, overrides)
    pace_s = cfg.scanner.tr_s / job.speed if job.pace == "tr" else 0.0
    source = Path(job.source)

    def feeder(export: ExportReader, put: Callable[[Any], None]) -> ReplayFeeder:
        return ReplayFeeder(source, export, put, pace_s, cfg.scanner.first_volume_number)

    t0 = time.perf_counter()
    result = run_session(
        cfg, Path(job.config).read_text(encoding="utf-8") + _overrides_comment(job.overrides), overwrite=job.overwrite,
        feeder_factory=feeder, on_volume=on_volume,
    )
    return {
        "source": str(source),
        "status": result.status,
        "processed": result.n_processed,
        "missing": result.n_missing,
        "timeseries": str(result.timeseries),
        "seconds": time.perf_counter() - t0,
        "reason": result.reason,
    }


def replay_many(jobs: list[ReplayJob], n_jobs: int = 1, dask_address: str | None = None) -> list[dict[str, Any]]:
    """Replay several runs: in a local process pool, or on a Dask cluster given by its scheduler address."""
    if dask_address is not None:
        try:
            from distributed import Client
        except ImportError:
            raise RuntimeError("--dask needs dask's distributed package: pip install 'rtnf[cluster]'") from None
        with Client(dask_address) as client:
            futures = client.map(replay_one, jobs, pure=False)
            return client.gather(futures)
    if n_jobs <= 1 or len(jobs) == 1:
        return [replay_one(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # "spawn": each replay gets a clean interpreter (no inherited threads or sockets).
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(replay_one, jobs))
