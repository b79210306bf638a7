"""``rtnf bench read``: decoding one volume per scanner format, rtnf against nibabel and pydicom.

Formats (real files from ``../shared/data``): Siemens mosaic 64x64x18 (pyneal
E11 series) and 64x64x36 (Prisma VD13 ep2d, a real mosaic rather than a
synthetic one), the studyforrest Philips 35-slice volume, Siemens XA30
enhanced fMRI. Methods: rtnf's ``probe`` (the completeness check the watcher
runs on the last file), rtnf's generic ``read_volume``, rtnf's per-series
``SeriesReader`` (cache warmed on the series' first file, then a later file),
nibabel's ``wrapper_from_file`` + ``get_data`` + ``affine``, pydicom's
``dcmread`` + ``pixel_array``. Files are in the page cache after warm-up.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any, Callable

from . import SHARED_DATA
from ._stats import summarize_ms, table, time_calls

NAME = "read"
HELP = "decode one volume per DICOM format: rtnf (generic and per-series cache) vs nibabel and pydicom"

_DEFAULT_DATA = SHARED_DATA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=_DEFAULT_DATA, help="shared real-data folder (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per method (default: %(default)s)")


def _formats(data: Path) -> dict[str, dict[str, Any]]:
    from rtnf.scanner.dicom import probe

    forrest = data / "studyforrest-localizer" / "dicom"
    forrest_files = [p for p in sorted(forrest.iterdir()) if probe(p).volume_number == 1] if forrest.exists() else []
    mosaic18 = sorted((data / "pyneal-series" / "siemens-prisma-e11-mosaic").glob("*.dcm"))
    mosaic36 = sorted((data / "dicom-zoo" / "siemens_mosaic_prisma_VD13_ep2d").glob("*.dcm"))
    xa30 = sorted((data / "dicom-zoo" / "siemens_enhanced_XA30_fmri_noCSA").glob("*.dcm"))
    return {
        "siemens mosaic 64x64x18": {"files": mosaic18[1:2], "warm": mosaic18[:1]},
        "siemens mosaic 64x64x36": {"files": mosaic36[1:2], "warm": mosaic36[:1]},
        "philips 35 slices 80x80": {"files": forrest_files, "warm": []},
        "siemens XA30 enhanced 64x64x33": {"files": xa30[1:2], "warm": xa30[:1]},
    }


def _methods(files: list[Path], warm: list[Path]) -> dict[str, Callable[[], Any]]:
    import pydicom

    from rtnf.scanner.dicom import SeriesReader, read_volume
    from rtnf.scanner.dicom import probe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom.dicomwrappers import wrapper_from_file

    def nibabel_read() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in files:
                w = wrapper_from_file(f)
                w.get_data()
                w.affine  # noqa: B018 (computed property)

    def pydicom_read() -> None:
        for f in files:
            pydicom.dcmread(f).pixel_array  # noqa: B018

    methods: dict[str, Callable[[], Any]] = {
        "rtnf probe (last file)": lambda: probe(files[-1]),
        "rtnf read_volume": lambda: read_volume(files),
    }
    if warm:
        reader = SeriesReader()
        reader.read(warm[0])
        methods["rtnf SeriesReader (cached)"] = lambda: reader.read(files[0])
    methods["nibabel wrapper+data+affine"] = nibabel_read
    methods["pydicom dcmread+pixel_array"] = pydicom_read
    return methods


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    if not data.exists():
        return {"error": f"no real data at {data}", "text": f"read: skipped, no real data at {data}"}
    rows = []
    for fmt, spec in _formats(data).items():
        if not spec["files"]:
            rows.append({"format": fmt, "method": "(files missing)"})
            continue
        results = {name: summarize_ms(time_calls(fn, args.repeat)) for name, fn in _methods(spec["files"], spec["warm"]).items()}
        ref = results["nibabel wrapper+data+affine"]["median_ms"]
        for name, stats in results.items():
            rows.append({"format": fmt, "method": name, "median_ms": stats["median_ms"], "p99_ms": stats["p99_ms"],
                         "vs_nibabel": stats["median_ms"] / ref if ref else None, "n": stats["n"]})
    text = table(rows, ["format", "method", "median_ms", "p99_ms", "vs_nibabel", "n"])
    return {"rows": rows, "text": text}
