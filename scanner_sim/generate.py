"""Generate a whole run into a folder at once, with its truth: the entry point for fidelity tests.

Example::

    from scanner_sim.generate import generate_run

    g = generate_run("scanner_sim/examples/realistic_acc.toml", tmp_path, seed=3)
    g.files                 # the volume files, in order (tmp_path / "export" / ...)
    g.truth["activation_acc"], g.nuisance["cardiac"], g.truth_dir / "physio.tsv.gz"

    g = generate_run(
        {"noise_from": "/data/rest_dicom_folder", "format": "siemens-mosaic",
         "blocks": [{"condition": "up", "onset_s": 10, "duration_s": 15}],
         "regions": [{"name": "roi", "center_mm": [0, 30, -20], "radius_mm": 10,
                      "amplitude_pct": 2.0, "condition": "up"}]},
        tmp_path)

No TR pacing: the files are written as fast as they are generated, through
the same writer and truth code as ``scanner-sim synth`` (spec faults apply).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .phantom import Phantom
from .spec import REAL_NOISE_REPLACES, RunSpec, load_spec
from .synth import SyntheticRun, read_truth_tsv

__all__ = ["GeneratedRun", "generate_run", "as_spec"]


@dataclass(frozen=True)
class GeneratedRun:
    """A run written to disk, with the in-memory run that made it.

    Attributes
    ----------
    spec : RunSpec
        The validated spec (``spec.json`` in the truth folder).
    run : SyntheticRun
        The run: ``run.volume(i)`` is the float32 volume before integer storage.
    export_dir : Path
        The volume files (what a scanner would have exported).
    truth_dir : Path
        ``truth.tsv``, ``spec.json``, ``reference.nii.gz``, region masks,
        ``files.tsv`` and, for realistic / real noise, ``nuisance.tsv``,
        ``physio.tsv.gz``, weight maps, ``noise_source.json``.
    files : tuple of Path
        Files of each main-series volume, in volume order (several per volume for ``dicom-slices``).
    """

    spec: RunSpec
    run: SyntheticRun
    export_dir: Path
    truth_dir: Path
    files: tuple[Path, ...]

    @property
    def truth(self) -> dict[str, np.ndarray]:
        """``truth.tsv`` as columns: ``activation_<region>`` (percent), motion, ``drift_pct``, ``spike``, ...
        (with ``[[couplings]]``: ``coupling_<a>_<b>``, ``fluctuation_<region>``)."""
        return read_truth_tsv(self.truth_dir / "truth.tsv")

    @property
    def nuisance(self) -> dict[str, np.ndarray]:
        """``nuisance.tsv`` as columns (empty for runs without realistic or real noise)."""
        path = self.truth_dir / "nuisance.tsv"
        return read_truth_tsv(path) if path.exists() else {}


def as_spec(spec: RunSpec | Mapping[str, Any] | str | Path, **changes: Any) -> RunSpec:
    """A :class:`RunSpec` from a spec, a dict or a TOML path, with top-level ``changes`` applied before validation.

    A change of value None removes the key. Like ``scanner-sim synth
    --noise-from``, a ``noise_from`` change removes the spec's synthetic noise
    and grid (:data:`scanner_sim.spec.REAL_NOISE_REPLACES`) unless ``changes``
    sets them; a spec already resolved (a :class:`RunSpec`) also lets a new
    ``noise_preset`` or ``format`` derive its values and file names again.
    """
    derived: set[str] = set()
    if "noise_from" in changes:
        derived |= set(REAL_NOISE_REPLACES)
    if isinstance(spec, RunSpec):
        for key, keys in _DERIVED.items():
            if key in changes:
                derived |= set(keys)
    overrides = {**{k: None for k in derived - set(changes)}, **changes}
    if isinstance(spec, (str, Path)):
        return load_spec(spec, overrides=overrides)
    d = dict(spec.to_dict() if isinstance(spec, RunSpec) else spec)
    for k, v in overrides.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return RunSpec.from_dict(d)


#: Keys of a resolved spec that a new ``noise_preset`` / ``noise_from`` / ``format`` must be free to set again.
_DERIVED = {
    "noise_preset": ("noise_pct", "ar1", "drift_pct", "drift_poly_pct", "drift_walk_pct", "physio",
                     "motion_signal", "motion"),
    "noise_from": ("noise_from_series", "tr_s"),
    "format": ("filename_template",),
    "multiecho": ("filename_template",),
}


def generate_run(
    spec: RunSpec | Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    phantom: Phantom | None = None,
    mode: str = "atomic",
    **changes: Any,
) -> GeneratedRun:
    """Write every volume of a run into ``out_dir / "export"`` and its truth into ``out_dir / "truth"``.

    Parameters
    ----------
    spec : RunSpec, dict or path
        The run: a spec, a dict :meth:`RunSpec.from_dict` accepts, or a TOML file.
    out_dir : str or Path
        Parent folder (created); ``export/`` and ``truth/`` go inside.
    phantom : Phantom, optional
        Shared phantom (saves ~2 s per run in tests); not with ``noise_from``.
    mode : {"atomic", "chunked", "reopen"}
        File write mode (default atomic: no partial files to step over).
    **changes
        Top-level spec keys to set first, e.g. ``noise_preset="realistic"``,
        ``seed=3``, ``format="siemens-mosaic"``, ``noise_from="/path/run"``.

    Returns
    -------
    GeneratedRun
    """
    from .writer import ScannerWriter

    spec = as_spec(spec, **changes)
    out = Path(out_dir)
    export_dir, truth_dir = out / "export", out / "truth"
    run = SyntheticRun(spec, phantom=phantom)
    # speed so high that every planned time has already passed: files are written back to back
    writer = ScannerWriter(export_dir, spec, mode=mode, n_chunks=1, chunk_delay_s=0.0,
                           speed=spec.tr_s * 1e5, recon_delay_s=0.0)
    writer.write_run(run, truth_dir)
    rows = _files_rows(truth_dir)
    # first copies of the main series only (a duplicate or a second series is a fault, not a volume)
    files = tuple(Path(r["path"]) for r in rows
                  if int(r["series"]) == spec.series and not {"duplicate", "second_series"} & set(r["fault"].split("+")))
    return GeneratedRun(spec, run, export_dir, truth_dir, files)


def _files_rows(truth_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(truth_dir / "files.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return sorted(rows, key=lambda r: (int(r["volume"]), -1 if r["slice"] == "n/a" else int(r["slice"])))
